from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from masterkey.discover.autoencoder import (
    AutoencoderConfig,
    KeyAutoencoder,
    sign_invariant_loss,
    uniform_latent_penalty,
)
from masterkey.discover.training import train_autoencoder
from masterkey.errors import MasterkeyError
from masterkey.normalize import center_norm

SMALL = AutoencoderConfig(hidden=16, steps=60, batch_size=32, checkpoint_every=20)


def _filters(n: int = 200, k: int = 3, seed: int = 0) -> torch.Tensor:
    return center_norm(torch.randn(n, k, k, generator=torch.Generator().manual_seed(seed)))


def test_encoder_is_exactly_sign_invariant() -> None:
    model = KeyAutoencoder(5, hidden=16)
    model.reset_parameters(torch.Generator().manual_seed(0))
    x = _filters(50, 5)
    z = model.encode(x)
    assert torch.equal(z, model.encode(-x))
    assert bool(((z >= 0) & (z <= 1)).all())
    assert model.decode(z).shape == (50, 5, 5)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(["cosine", "mse"]))
def test_loss_ignores_the_sign_of_the_reconstruction(seed: int, loss: str) -> None:
    g = torch.Generator().manual_seed(seed)
    x = center_norm(torch.randn(8, 3, 3, generator=g)).reshape(8, -1)
    recon = torch.randn(8, 9, generator=g)
    assert torch.allclose(sign_invariant_loss(x, recon, loss), sign_invariant_loss(x, -recon, loss), atol=1e-6)
    assert torch.allclose(sign_invariant_loss(x, -x, loss), torch.zeros(8), atol=1e-6)
    assert bool((sign_invariant_loss(x, recon, loss) >= -1e-6).all())


def test_uniform_penalty_is_zero_for_evenly_spread_latents() -> None:
    z = (torch.arange(10) + 0.5) / 10
    assert float(uniform_latent_penalty(z[torch.randperm(10)])) == pytest.approx(0.0, abs=1e-12)
    assert float(uniform_latent_penalty(torch.zeros(10))) > 0.3


def test_same_seed_gives_bitwise_identical_weights() -> None:
    x = _filters()
    a = train_autoencoder(x, config=SMALL, progress=False)
    b = train_autoencoder(x, config=SMALL, progress=False)
    c = train_autoencoder(x, config=AutoencoderConfig(**{**SMALL.__dict__, "seed": 1}), progress=False)
    for (name, pa), pb in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.model.decoder[-1].weight, c.model.decoder[-1].weight)


def test_interrupted_training_resumes_to_the_same_weights(tmp_path: Path) -> None:
    x = _filters()
    ckpt = tmp_path / "ae.pt"
    full = train_autoencoder(x, config=SMALL, progress=False)

    class Stop(Exception):
        pass

    def stop_at_40(step: int) -> None:
        if step == 40:
            raise Stop

    with pytest.raises(Stop):
        train_autoencoder(x, config=SMALL, checkpoint=ckpt, progress=False, on_checkpoint=stop_at_40)
    assert ckpt.is_file()
    resumed = train_autoencoder(x, config=SMALL, checkpoint=ckpt, progress=False)
    assert resumed.resumed_from == 40
    for pa, pb in zip(full.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(pa, pb)
    # A checkpoint of other data is not used.
    other = train_autoencoder(_filters(seed=5), config=SMALL, checkpoint=ckpt, progress=False)
    assert other.resumed_from == 0


def test_training_lowers_the_loss_on_clustered_filters(make_filters, make_keys) -> None:
    filters, _ = make_filters(make_keys(4, 3, seed=0), 400, seed=0)
    trained = train_autoencoder(
        center_norm(filters), config=AutoencoderConfig(hidden=32, steps=300, batch_size=64), progress=False
    )
    first, last = trained.losses[0][1], trained.losses[-1][1]
    assert last < 0.5 * first


def test_bad_input_is_refused() -> None:
    with pytest.raises(MasterkeyError, match="NaN or Inf"):
        train_autoencoder(torch.full((4, 3, 3), float("nan")), config=SMALL, progress=False)
    with pytest.raises(MasterkeyError, match="at least 2"):
        train_autoencoder(_filters(1), config=SMALL, progress=False)
    with pytest.raises(MasterkeyError, match="loss"):
        AutoencoderConfig(loss="l1")
    with pytest.raises(MasterkeyError, match="steps"):
        AutoencoderConfig(steps=0)
    with pytest.raises(MasterkeyError, match="weights"):
        train_autoencoder(_filters(10), torch.full((10,), -1.0), config=SMALL, progress=False)


@pytest.mark.parametrize("n", [1, 7, 2000, 100_003])
def test_batches_are_drawn_as_multinomial_draws_them(n: int) -> None:
    """Inverse-CDF sampling from the cumulative weights (built once, not at every step) gives exactly the draws
    of torch.multinomial, and leaves the generator where multinomial leaves it: training is unchanged."""
    from masterkey.discover.autoencoder import cumulative_weights, draw_indices

    weights = torch.rand(n, dtype=torch.float64, generator=torch.Generator().manual_seed(n)) + 0.01
    weights[::5] = 0.0 if n > 1 else 1.0  # filters that must never be drawn
    cumulative = cumulative_weights(weights)
    ours, theirs = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for _ in range(5):
        drawn = draw_indices(cumulative, 256, ours)
        assert torch.equal(drawn, torch.multinomial(weights / weights.sum(), 256, replacement=True, generator=theirs))
        assert n == 1 or not bool((drawn % 5 == 0).any())
    assert torch.equal(ours.get_state(), theirs.get_state())
