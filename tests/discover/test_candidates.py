from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from masterkey.discover.candidates import dedupe, latent_grid, make_candidates, normalise_candidates, resample_around
from masterkey.discover.settings import AutoencoderConfig
from masterkey.discover.training import train_autoencoder
from masterkey.errors import MasterkeyError
from masterkey.normalize import center_norm


def test_dedupe_drops_near_duplicates_of_either_sign() -> None:
    base = center_norm(torch.randn(3, 3, 3, generator=torch.Generator().manual_seed(0)))
    keys = torch.cat([base, -base[:1], base[1:2] * 1.0])
    keep = dedupe(center_norm(keys), threshold=0.99)
    assert keep.tolist() == [0, 1, 2]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=12, unique=True), st.integers(12, 60))
def test_resample_covers_every_centre(centres: list[float], n: int) -> None:
    out = resample_around(torch.tensor(centres, dtype=torch.float64), n)
    assert len(out) == n
    assert bool(((out >= 0) & (out <= 1)).all())
    for c in centres:
        assert float((out - c).abs().min()) == 0.0  # each centre itself is resampled


def test_latent_grid_spacings() -> None:
    z = torch.tensor([0.2, 0.3, 0.5, 0.8])
    assert torch.allclose(latent_grid(z, 4, "range"), torch.tensor([0.2, 0.4, 0.6, 0.8], dtype=torch.float64))
    assert torch.allclose(latent_grid(z, 3, "unit"), torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64))
    assert latent_grid(z, 4, "quantile")[0] == pytest.approx(0.2)
    with pytest.raises(MasterkeyError, match="spacing"):
        latent_grid(z, 4, "log")
    with pytest.raises(MasterkeyError, match="at least 1"):
        latent_grid(z, 0)


def test_normalise_flags_constant_outputs() -> None:
    filters = torch.stack([torch.ones(3, 3), torch.arange(9.0).reshape(3, 3)])
    keys, usable = normalise_candidates(filters)
    assert usable.tolist() == [False, True]
    assert float(keys[1].sum()) == pytest.approx(0.0, abs=1e-6)
    assert float(keys[1].norm()) == pytest.approx(1.0, abs=1e-6)


def test_candidates_are_centred_unit_and_distinct() -> None:
    x = center_norm(torch.randn(300, 3, 3, generator=torch.Generator().manual_seed(1)))
    ae = train_autoencoder(x, config=AutoencoderConfig(hidden=16, steps=50, batch_size=64), progress=False)
    cands = make_candidates(ae, latent_grid(ae.encode(x), 20), dedupe_threshold=0.99)
    flat = cands.keys.reshape(len(cands), -1).double()
    assert 1 <= len(cands) <= 20
    assert torch.allclose(flat.mean(dim=1), torch.zeros(len(cands), dtype=torch.float64), atol=1e-6)
    assert torch.allclose(flat.norm(dim=1), torch.ones(len(cands), dtype=torch.float64), atol=1e-5)
    cos = (flat @ flat.T).abs() - torch.eye(len(cands), dtype=torch.float64)
    assert float(cos.max()) < 0.99
    assert cands.keyset().key_labels()[0].startswith("z=")
