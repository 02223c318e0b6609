"""Training several autoencoders as one batched model: each member as if alone, Adam as torch's, stopping, resume."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from masterkey.discover.autoencoder import KeyAutoencoder, reconstruction_loss
from masterkey.discover.settings import AutoencoderConfig
from masterkey.discover.training import (
    AutoencoderStack,
    _Adam,
    _Member,
    candidate_scores,
    train_autoencoder,
    train_autoencoders,
)
from masterkey.errors import MasterkeyError
from masterkey.normalize import center_norm

SMALL = AutoencoderConfig(hidden=16, steps=60, batch_size=32, checkpoint_every=20, check_every=20, patience=None)


def _filters(n: int, k: int, seed: int) -> torch.Tensor:
    return center_norm(torch.randn(n, k, k, generator=torch.Generator().manual_seed(seed)))


def _assert_same_model(a: KeyAutoencoder, b: KeyAutoencoder, exact: bool) -> None:
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        if exact:
            assert torch.equal(pa, pb), name
        else:
            torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-5, msg=name)


def test_each_member_of_a_stack_trains_as_if_alone() -> None:
    """Three kernel sizes in one batched model: every member ends where it ends when trained alone (the padding
    of the smaller kernels contributes exact zeros; float sums may round differently, so to 1e-5)."""
    data = [(_filters(120, k, seed=k), None) for k in (3, 5, 7)]
    together = train_autoencoders(data, SMALL)
    for (filters, _), trained in zip(data, together, strict=True):
        alone = train_autoencoder(filters, config=SMALL)
        _assert_same_model(trained.model, alone.model, exact=False)
        assert [s for s, _ in trained.losses] == [20, 40, 60]
        assert trained.steps == 60 and not trained.stopped_early


def test_stacks_of_one_width_train_each_member_to_the_same_bits_however_grouped() -> None:
    """discover trains its largest kernel size alone in a second thread beside the others' stack: padded to one
    width, every member (a lone one too) gets exactly the weights of one stack of all (the main job's keys do not
    depend on the split)."""
    config = replace(SMALL, hidden=64, batch_size=512, steps=4)
    data = [(_filters(600, k, seed=k), None) for k in (3, 5, 7)]
    together = train_autoencoders(data, config)
    split = [*train_autoencoders(data[:2], config, width=49), *train_autoencoders(data[2:], config, width=49)]
    for a, b in zip(together, split, strict=True):
        _assert_same_model(a.model, b.model, exact=True)
    with pytest.raises(MasterkeyError, match="width 25 is below"):
        train_autoencoders(data, config, width=25)


def test_padding_stays_zero_and_members_match_their_stack() -> None:
    models = [KeyAutoencoder(k, 8) for k in (3, 7)]
    for i, m in enumerate(models):
        m.reset_parameters(torch.Generator().manual_seed(i))
    stack = AutoencoderStack(models)
    x = torch.zeros(2, 10, 49)
    x[0, :, :9] = _filters(10, 3, 0).reshape(10, 9)
    x[1] = _filters(10, 7, 1).reshape(10, 49)
    z = stack.encode(x)
    for g, m in enumerate(models):
        d = m.kernel_size**2
        torch.testing.assert_close(z[g], m.encode(x[g, :, :d]))
        torch.testing.assert_close(stack.decode(z)[g, :, :d], m.decode(z[g]).reshape(10, d))
    for mask, padded_grad in ((stack.mask, False), (None, True)):
        for p in stack.parameters():
            p.grad = None
        z = stack.encode(x)
        reconstruction_loss(x, stack.decode(z), "cosine", mask).sum().backward()
        assert float(stack.weight[0].grad[0, 9:].abs().max()) == 0.0  # padded inputs: never a gradient
        # Padded outputs: a gradient only when the loss ignores the mask (the training loss never does).
        assert (float(stack.weight[7].grad[0, :, 9:].abs().max()) > 0.0) == padded_grad
    _assert_same_model(stack.member(1, 7, 8), models[1], exact=True)


def test_adam_is_torchs_adam() -> None:
    g = torch.Generator().manual_seed(0)
    ours = [torch.randn(3, 4, 5, generator=g).requires_grad_(), torch.randn(3, 1, 5, generator=g).requires_grad_()]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    adam, reference = _Adam(ours), torch.optim.Adam(theirs, lr=0.01, weight_decay=0.1)
    for step in range(5):
        grads = [torch.randn(p.shape, generator=g) for p in ours]
        for p, q, grad in zip(ours, theirs, grads, strict=True):
            p.grad, q.grad = grad.clone(), grad.clone()
        adam.step(0.01, 0.1)
        reference.step()
        for p, q in zip(ours, theirs, strict=True):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=f"step {step}")


def test_stops_when_the_candidates_stop_improving(make_filters, make_keys) -> None:
    """Four clusters are learned fast; with patience the member stops early, keeps its weights of that step,
    and says so; without patience it runs to the step limit."""
    filters, _ = make_filters(make_keys(4, 3, seed=3), 600, seed=3)
    x = center_norm(filters)
    config = AutoencoderConfig(hidden=32, steps=2000, batch_size=64, check_every=25, patience=2, stop_tol=1e-3)
    found = train_autoencoder(x, config=config)
    assert found.stopped_early and found.steps < 2000
    values = [s for _, s in found.scores]
    assert max(values[-2:]) < max(values[:-2]) + 1e-3  # the rule that stopped it
    assert max(values[:-1][-2:]) >= max(values[:-3]) + 1e-3 or len(values) == 3  # ... which did not hold before
    assert found.losses[-1][0] == found.steps
    # The weights kept are those of the stopping step: they score what was recorded then.
    member = _Member(x, torch.ones(len(x), dtype=torch.float64), config, torch.device("cpu"))
    score = candidate_scores(AutoencoderStack([found.model]), [member])[0]
    assert score == pytest.approx(values[-1], abs=1e-6)
    never = train_autoencoder(x, config=replace(config, patience=None, steps=100))
    assert never.steps == 100 and not never.stopped_early and never.scores == []


def test_a_stopped_member_keeps_its_weights_while_the_others_train(make_filters, make_keys) -> None:
    easy, _ = make_filters(make_keys(2, 3, seed=5), 400, seed=5, noise=0.0)
    hard = _filters(400, 5, seed=6)
    config = AutoencoderConfig(hidden=16, steps=600, batch_size=64, check_every=25, patience=2, stop_tol=1e-3)
    first, second = train_autoencoders([(center_norm(easy), None), (hard, None)], config)
    assert first.stopped_early and first.steps < second.steps
    alone = train_autoencoder(center_norm(easy), config=config)
    assert alone.steps == first.steps
    _assert_same_model(first.model, alone.model, exact=False)


def test_resume_and_a_damaged_checkpoint(tmp_path: Path, caplog) -> None:
    data = [(_filters(100, 3, seed=1), None), (_filters(100, 5, seed=2), None)]
    ckpt = tmp_path / "ae.pt"
    full = train_autoencoders(data, SMALL)

    class Stop(Exception):
        pass

    def stop_at_40(step: int) -> None:
        if step == 40:
            raise Stop

    with pytest.raises(Stop):
        train_autoencoders(data, SMALL, checkpoint=ckpt, on_checkpoint=stop_at_40)
    resumed = train_autoencoders(data, SMALL, checkpoint=ckpt)
    for a, b in zip(full, resumed, strict=True):
        assert b.resumed_from == 40
        _assert_same_model(a.model, b.model, exact=True)
    ckpt.write_bytes(b"not a checkpoint")
    with caplog.at_level(logging.WARNING, logger="masterkey"):
        again = train_autoencoders(data, SMALL, checkpoint=ckpt)
    assert str(ckpt) in caplog.text and "damaged autoencoder checkpoint" in caplog.text
    assert again[0].resumed_from == 0
    _assert_same_model(again[0].model, full[0].model, exact=True)
