"""Scale-space keys with learnable σ (and γ): the kernel of the ``scalespace`` mode."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from masterkey.errors import MasterkeyError
from masterkey.keys import load_keys
from masterkey.nn import SIGMA_SCOPES, ScaleSpaceKernel, ScaleSpaceKey, convert_to_keys, key_layers, stored_models
from masterkey.scalespace import scalespace_models

from .conftest import tiny_convnext


def _random_projection(model: nn.Module) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return sum((k.kernel() * torch.randn(k.kernel().shape, generator=gen)).sum() for _, k in key_layers(model))


def test_scalespace_model_starts_at_the_scalespace8_keys_and_learns_only_sigma_gamma_and_offsets() -> None:
    for scope in SIGMA_SCOPES:
        learned, frozen = tiny_convnext(), tiny_convnext()
        convert_to_keys(learned, "scalespace8", "scalespace", "convnextv2-b", seed=2, sigma_scope=scope)
        convert_to_keys(frozen, "scalespace8", "frozen", "convnextv2-b", seed=2)
        for (_, s), (_, f) in zip(key_layers(learned), key_layers(frozen), strict=True):
            assert isinstance(s, ScaleSpaceKernel) and torch.equal(s.key_index, f.key_index)
            # the torch quadrature reproduces scipy's Bessel kernels to float32 rounding
            torch.testing.assert_close(s.kernel(), f.kernel(), atol=1e-6, rtol=0)
        _random_projection(learned).backward()
        for _, layer in key_layers(learned):
            names = {n for n, _ in layer.named_parameters()}
            assert names <= {"log_sigma_x", "log_sigma_y", "gamma", "offset"}
            assert {"log_sigma_x", "log_sigma_y", "offset"} <= names
            used = torch.unique(layer.group)
            for p in (layer.log_sigma_x, layer.log_sigma_y):
                assert bool((p.grad[used] != 0).all()), "a σ in use got no gradient"
            if layer.gamma is not None:
                assert float(layer.gamma.grad.abs().sum()) > 0
            rows = layer.channels if scope == "channel" else 8
            assert layer.log_sigma_x.shape == (rows,)


def test_learned_sigma_recovers_the_scales_that_made_the_target_filters() -> None:
    """A small synthetic fit: kernels generated from known σ (and γ) are regressed from the scalespace8 start."""
    from masterkey.kernels import PAPER8_SCALESPACE

    torch.manual_seed(0)
    models = stored_models(load_keys("scalespace8"))
    index = torch.arange(8)
    truth = [
        ScaleSpaceKey(m.family, m.sigma_x * fx, m.sigma_y * fy, m.gamma * 1.3 if m.gamma else 0.0, m.sign)
        for m, fx, fy in zip(
            models, (1.3, 0.8, 1.25, 0.85, 0.8, 1.2, 1.2, 1.35), (0.8, 1.3, 0.85, 1.3, 1.2, 0.8, 0.9, 1.4), strict=True
        )
    ]
    target = ScaleSpaceKernel(truth, index, 7).kernel().detach()
    layer = ScaleSpaceKernel(models, index, 7)
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.03)
    for _ in range(250):
        optimizer.zero_grad()
        loss = (layer.kernel() - target).square().sum()
        loss.backward()
        optimizer.step()
    assert float(loss.detach()) < 1e-8
    sigma = layer.sigma.detach()
    for j, (key, row) in enumerate(zip(truth, PAPER8_SCALESPACE, strict=True)):
        assert float(sigma[j, 0]) == pytest.approx(key.sigma_x, rel=1e-3), row[0]
        assert float(sigma[j, 1]) == pytest.approx(key.sigma_y, rel=1e-3), row[0]
    assert float(layer.gamma.detach()[0]) == pytest.approx(truth[6].gamma, rel=1e-3)
    torch.testing.assert_close(layer.offset.detach(), torch.zeros(8), atol=1e-5, rtol=0)


def test_models_of_other_key_sets_come_from_the_explain_stage_fit() -> None:
    fitted = scalespace_models(load_keys("paper8"))
    stored = stored_models(load_keys("scalespace8"))
    assert stored_models(load_keys("paper8")) is None
    assert [m.family for m in fitted] == [m.family for m in stored]
    for a, b in zip(fitted, stored, strict=True):
        assert a.sign == b.sign and a.sigma_x == pytest.approx(b.sigma_x, abs=2e-3)
    with pytest.raises(MasterkeyError, match="carries no scale-space models: pass scalespace="):
        convert_to_keys(tiny_convnext(), "paper8", "scalespace")
    model = tiny_convnext(kernel_sizes=3)  # models are generated at every size: no resize needed
    convert_to_keys(model, "paper8", "scalespace", "uniform", scalespace=scalespace_models)
    assert all(layer.kernel().shape[-1] == 3 for _, layer in key_layers(model))
    with pytest.raises(MasterkeyError, match="3 scale-space models for 8 keys"):
        convert_to_keys(tiny_convnext(), "paper8", "scalespace", scalespace=fitted[:3])
    with pytest.raises(MasterkeyError, match="sigma scope 'layer'"):
        convert_to_keys(tiny_convnext(), "scalespace8", "scalespace", sigma_scope="layer")
