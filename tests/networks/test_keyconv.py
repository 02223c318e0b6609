"""Frozen-key depthwise convs, key assignment, whole-network conversion and the plain-timm export."""

from __future__ import annotations

import pandas as pd
import pytest
import timm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from masterkey.bank import open_bank
from masterkey.depthwise import find_depthwise
from masterkey.errors import MasterkeyError
from masterkey.fit import fit_affine, fit_bank
from masterkey.keys import load_keys
from masterkey.networks.keyconv import (
    PUBLISHED_PROPORTIONS,
    SIGMA_SCOPES,
    KeyConv2d,
    ScaleSpaceConv2d,
    ScaleSpaceKey,
    SpanConv2d,
    assign_by_proportions,
    assign_from_fit_table,
    assign_from_model,
    assign_uniform,
    convert_to_keys,
    counts_from_proportions,
    depthwise_epoch_stats,
    depthwise_summary,
    export_state_dict,
    key_counts,
    key_layers,
    make_assigner,
    materialize,
    parameter_counts,
    scalespace_models,
    transfer_filters,
)
from masterkey.networks.models import read_state_dict

TINY = {"num_classes": 10, "dims": (8, 16, 24, 32), "depths": (1, 1, 1, 1), "patch_size": 2}


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_convnext(**extra: object) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("convnext_atto", **{**TINY, **extra})


def _perturb(model: nn.Module) -> None:
    """Give offsets / scales / biases values away from their init so that export checks mean something."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, layer in key_layers(model):
            layer.offset.add_(0.05 * torch.randn(layer.offset.shape, generator=gen))
            if layer.scale is not None:
                layer.scale.mul_(1 + 0.3 * torch.randn(layer.scale.shape, generator=gen))


# ---------------------------------------------------------------------- the module
@pytest.mark.parametrize("padding_mode", ["zeros", "reflect"])
@pytest.mark.parametrize("learn_scale", [False, True])
def test_keyconv_equals_a_conv_with_the_materialised_kernel(padding_mode: str, learn_scale: bool) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 12, 5, stride=2, padding=2, groups=6, padding_mode=padding_mode)  # channel multiplier 2
    keys = torch.randn(12, 5, 5)
    layer = KeyConv2d(conv, keys, learn_scale=learn_scale, scale=torch.rand(12) + 0.5, offset=torch.randn(12))
    x = torch.randn(2, 6, 11, 11)
    expected_kernel = (
        keys[:, None] * (layer.scale[:, None, None, None] if learn_scale else 1) + layer.offset[:, None, None, None]
    )
    torch.testing.assert_close(layer.weight, expected_kernel)
    with torch.no_grad():
        conv.weight.copy_(expected_kernel)
        conv.bias.copy_(layer.bias)
    torch.testing.assert_close(layer(x), conv(x))
    torch.testing.assert_close(layer.to_conv()(x), conv(x))
    names = {n for n, _ in layer.named_parameters()}
    assert names == ({"offset", "bias", "scale"} if learn_scale else {"offset", "bias"})
    assert {n for n, _ in layer.named_buffers()} == {"key", "key_index"}


def test_keyconv_handles_timm_same_padding() -> None:
    from timm.layers import Conv2dSame

    torch.manual_seed(0)
    conv = Conv2dSame(4, 4, 3, stride=2, groups=4)
    layer = KeyConv2d(conv, conv.weight.detach()[:, 0].clone())
    x = torch.randn(1, 4, 9, 10)
    torch.testing.assert_close(layer(x), conv(x))
    assert type(layer.to_conv()).__name__ == "Conv2dSame"


def test_keyconv_refuses_other_conv_types() -> None:
    class Odd(nn.Conv2d):
        pass

    with pytest.raises(MasterkeyError, match="Odd"):
        KeyConv2d(Odd(4, 4, 3, groups=4), torch.randn(4, 3, 3))


# ---------------------------------------------------------------------- assignment
@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 500),
    p=st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=12).filter(lambda v: sum(v) > 1e-6),
)
def test_counts_from_proportions_sum_and_round(n: int, p: list[float]) -> None:
    counts = counts_from_proportions(n, p)
    assert int(counts.sum()) == n
    exact = torch.tensor(p, dtype=torch.float64) * n / sum(p)
    assert bool(((counts.double() - exact).abs() < 1 + 1e-9).all())
    assert bool((counts >= 0).all())


def test_assign_by_published_proportions_is_exact_and_seeded() -> None:
    p = PUBLISHED_PROPORTIONS["convnextv2-b"]
    assert sum(p) == pytest.approx(100)
    a = assign_by_proportions(1000, p, torch.Generator().manual_seed(3))
    b = assign_by_proportions(1000, p, torch.Generator().manual_seed(3))
    c = assign_by_proportions(1000, p, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    counts = torch.bincount(a, minlength=8)
    assert counts.tolist() == [28, 37, 33, 36, 31, 63, 242, 530]  # 10 x the percentages, rounded to sum 1000
    assert torch.bincount(assign_uniform(10, 4), minlength=4).tolist() in ([3, 3, 2, 2],)


def test_bad_assignment_specs() -> None:
    with pytest.raises(MasterkeyError, match="unknown"):
        make_assigner("by-magic")
    with pytest.raises(MasterkeyError, match="numbers"):
        make_assigner("proportions:a,b")
    with pytest.raises(MasterkeyError, match="non-negative"):
        make_assigner("proportions:1,-1")
    model = tiny_convnext()
    with pytest.raises(MasterkeyError, match="8 proportions but key set 'random:3:0' has 3 keys"):
        convert_to_keys(model, "random:3:0", "frozen", "convnextv2-b")


# ---------------------------------------------------------------------- conversion
def test_frozen_conversion_holds_the_assigned_unit_keys() -> None:
    model = tiny_convnext()
    keys = load_keys("paper8")
    layers = convert_to_keys(model, keys, "frozen", "convnextv2-b", seed=5)
    assert len(layers) == 4 and not find_depthwise(model)
    for (name, layer), info in zip(key_layers(model), layers, strict=True):
        assert name == info.name
        assert torch.equal(layer.key[:, 0], keys.keys[layer.key_index])
        assert torch.equal(layer.offset, torch.zeros_like(layer.offset)) and layer.scale is None
        assert sum(info.counts) == layer.out_channels == len(layer.key_index)
        assert (
            info.counts == counts_from_proportions(layer.out_channels, PUBLISHED_PROPORTIONS["convnextv2-b"]).tolist()
        )
    assert sum(key_counts(model, 8)) == 8 + 16 + 24 + 32
    # The keys are buffers: no optimiser ever sees them.
    assert not any(p is layer.key for p in model.parameters() for _, layer in key_layers(model))
    # Same seed, same assignment; another seed, another one.
    again, other = tiny_convnext(), tiny_convnext()
    convert_to_keys(again, keys, "frozen", "convnextv2-b", seed=5)
    convert_to_keys(other, keys, "frozen", "convnextv2-b", seed=6)
    assert all(torch.equal(a.key, b.key) for (_, a), (_, b) in zip(key_layers(model), key_layers(again), strict=True))
    assert not all(
        torch.equal(a.key, b.key) for (_, a), (_, b) in zip(key_layers(model), key_layers(other), strict=True)
    )


def test_key_init_writes_keys_into_plain_trainable_convs() -> None:
    model = tiny_convnext()
    convert_to_keys(model, "paper8", "key-init", "uniform", key_gain=0.5)
    assert not key_layers(model)
    keys = load_keys("paper8").keys
    for dw in find_depthwise(model):
        w = dw.conv.weight.detach()[:, 0]
        assert dw.conv.weight.requires_grad
        # every channel is 0.5 x one of the keys
        dist = (w[:, None] - 0.5 * keys[None]).flatten(2).abs().amax(dim=2).amin(dim=1)
        assert float(dist.max()) < 1e-6
    assert convert_to_keys(model, "paper8", "trainable") == []


@pytest.mark.parametrize("learn_scale", [False, True])
def test_export_round_trip_loads_into_plain_timm(learn_scale: bool) -> None:
    model = tiny_convnext()
    convert_to_keys(model, "paper8", "frozen", "hornet-t", learn_scale=learn_scale)
    _perturb(model)
    state = export_state_dict(model)
    plain = timm.create_model("convnext_atto", **TINY)
    assert list(state) == list(plain.state_dict())  # same names, same order
    plain.load_state_dict(state, strict=True)
    x = torch.randn(3, 3, 32, 32)
    model.eval(), plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(x), model(x))
        materialize(model)
        assert not key_layers(model) and len(find_depthwise(model)) == 4
        torch.testing.assert_close(plain(x), model(x))


def test_kernel_size_mismatch_needs_an_explicit_resize() -> None:
    model = tiny_convnext(kernel_sizes=3)
    with pytest.raises(MasterkeyError, match=r"stages\.0\.blocks\.0\.conv_dw.*7x7.*3x3.*resize=True"):
        convert_to_keys(model, "paper8", "frozen")
    convert_to_keys(model, "paper8", "frozen", resize=True)
    cropped = load_keys("paper8").resized(3).keys
    for _, layer in key_layers(model):
        assert torch.equal(layer.key[:, 0], cropped[layer.key_index])


def test_mixed_kernel_sizes_and_same_padding_of_efficientnet() -> None:
    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    layers = convert_to_keys(model, "paper8", "frozen", "uniform", resize=True)
    assert {info.kernel_size for info in layers} == {3, 5}
    _perturb(model)
    plain = timm.create_model("tf_efficientnet_lite0", num_classes=10).eval()
    plain.load_state_dict(export_state_dict(model), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), model(x), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------- assignment from real fits and models
def test_assignment_from_a_trained_model_reproduces_its_best_fits(cifar_convnexts: list) -> None:
    weights = next(p for p in cifar_convnexts if p.name == "convnext_atto_s0_e20.safetensors")
    state, _ = read_state_dict(weights)
    keys = load_keys("paper8")
    model = timm.create_model("convnext_atto", num_classes=10, patch_size=1)
    convert_to_keys(model, keys, "frozen", f"model:{weights}")
    layers = key_layers(model)
    assert len(layers) == 12
    for name, layer in layers:
        trained = state[f"{name}.weight"].float()
        fit = fit_affine(trained[:, 0], keys)
        assert torch.equal(layer.key_index, fit.key)
        kernel = layer.weight.detach()
        # The frozen kernel is the best affine fit a*key+b: its residual is the fit's.
        residual = (trained - kernel).flatten(1).norm(dim=1)
        torch.testing.assert_close(residual, fit.residual, rtol=1e-4, atol=1e-5)
    direct = assign_from_model(state["stages.0.blocks.0.conv_dw.weight"], keys)
    assert torch.equal(direct.key_index, layers[0][1].key_index)
    # With a learnable scale the fitted a goes into the scale, the unit key into the buffer.
    scaled = timm.create_model("convnext_atto", num_classes=10, patch_size=1)
    convert_to_keys(scaled, keys, "frozen", f"model:{weights}", learn_scale=True)
    a, b = key_layers(scaled)[0][1], layers[0][1]
    torch.testing.assert_close(a.scale, direct.scale)
    torch.testing.assert_close(a.weight, b.weight)
    with pytest.raises(MasterkeyError, match=r"is \(40, 1, 7, 7\) there but \(48, 1, 7, 7\) in the model"):
        convert_to_keys(timm.create_model("convnext_femto", num_classes=10), keys, "frozen", f"model:{weights}")
    deeper = timm.create_model("convnext_atto", num_classes=10, depths=(2, 2, 7, 2))
    with pytest.raises(MasterkeyError, match=r"no weight for layer 'stages\.2\.blocks\.6\.conv_dw'"):
        convert_to_keys(deeper, keys, "frozen", f"model:{weights}")


def test_assignment_from_a_fit_table_of_the_default_bank(tmp_path) -> None:
    bank = open_bank(None).query("source == 'convnext_atto_s1_e20'")
    fit = fit_bank(bank, "paper8")
    fit.table.to_parquet(tmp_path / "fits.parquet")
    load_keys("paper8").save(tmp_path / "keys_k7.safetensors")
    model = timm.create_model("convnext_atto", num_classes=10, patch_size=1)
    layers = convert_to_keys(model, "paper8", "frozen", f"fit:{tmp_path}")
    for info in layers:
        rows = fit.table[fit.table["layer"] == info.name]
        p = torch.bincount(torch.as_tensor(rows["key"].to_numpy().copy()), minlength=8).double() / len(rows)
        assert info.counts == counts_from_proportions(info.channels, p.tolist()).tolist()
        direct = assign_from_fit_table(fit.table, info.name, info.channels, 8, torch.Generator().manual_seed(0))
        assert torch.bincount(direct, minlength=8).tolist() == info.counts
    with pytest.raises(MasterkeyError, match="not with the training keys"):
        convert_to_keys(timm.create_model("convnext_atto", num_classes=10), "random:8:1", "frozen", f"fit:{tmp_path}")
    other = pd.DataFrame({"layer": ["elsewhere"], "key": [0]})
    other.to_parquet(tmp_path / "other.parquet")
    with pytest.raises(MasterkeyError, match="no fits for layer 'stages.0.blocks.0.conv_dw'"):
        convert_to_keys(model_without_keys(), "paper8", "frozen", f"fit:{tmp_path / 'other.parquet'}")


def model_without_keys() -> nn.Module:
    return timm.create_model("convnext_atto", num_classes=10, patch_size=1)


def test_models_without_depthwise_convs_are_refused() -> None:
    with pytest.raises(MasterkeyError, match="no depthwise"):
        convert_to_keys(nn.Sequential(nn.Conv2d(3, 8, 3)), "paper8", "frozen")
    with pytest.raises(MasterkeyError, match="mode 'half'"):
        convert_to_keys(tiny_convnext(), "paper8", "half")


# ---------------------------------------------------------------------- span of keys
def _trainable_names(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def _random_projection(model: nn.Module) -> torch.Tensor:
    """A loss whose gradient reaches every kernel entry of every key layer (not damped by ConvNeXt's layer scale
    of 1e-6, as a loss on the logits of a fresh model is)."""
    gen = torch.Generator().manual_seed(0)
    return sum((layer.weight * torch.randn(layer.weight.shape, generator=gen)).sum() for _, layer in key_layers(model))


def test_a_one_hot_span_model_equals_the_frozen_model_exactly() -> None:
    frozen, span = tiny_convnext(), tiny_convnext()
    convert_to_keys(frozen, "paper8", "frozen", "convnextv2-b", seed=3, key_gain=0.7)
    layers = convert_to_keys(span, "paper8", "span", "convnextv2-b", seed=3, key_gain=0.7)
    assert [info.counts for info in layers] == [
        info.counts for info in convert_to_keys(tiny_convnext(), "paper8", "frozen", "convnextv2-b", seed=3)
    ]
    for (_, f), (_, s) in zip(key_layers(frozen), key_layers(span), strict=True):
        assert isinstance(s, SpanConv2d) and torch.equal(f.key_index, s.key_index)
        assert torch.equal(s.alpha.count_nonzero(dim=1), torch.ones(s.out_channels, dtype=torch.long))
        assert torch.equal(f.weight, s.weight)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(frozen.eval()(x), span.eval()(x))


def test_span_gradients_reach_alpha_and_never_the_keys() -> None:
    model = tiny_convnext()
    convert_to_keys(model, "paper8", "span", "uniform")
    _random_projection(model).backward()
    for name, layer in key_layers(model):
        assert {n for n, _ in layer.named_parameters()} == {"alpha", "offset", "bias"}
        assert {n for n, _ in layer.named_buffers()} == {"basis", "key_index"}
        assert layer.alpha.grad is not None and float(layer.alpha.grad.abs().sum()) > 0, name
        # every key's mixing weight gets a gradient, not only the assigned one
        assert bool((layer.alpha.grad.abs().sum(dim=0) > 0).all()), name
        assert not layer.basis.requires_grad and layer.basis.grad is None
    assert not any(p is layer.basis for p in model.parameters() for _, layer in key_layers(model))


def test_span_from_a_trained_model_is_its_least_squares_mix(cifar_convnexts: list) -> None:
    weights = next(p for p in cifar_convnexts if p.name == "convnext_atto_s0_e20.safetensors")
    state, _ = read_state_dict(weights)
    keys = load_keys("paper8")
    model = timm.create_model("convnext_atto", num_classes=10, patch_size=1)
    convert_to_keys(model, keys, "span", f"model:{weights}")
    basis = torch.cat([keys.keys.double().reshape(8, -1), torch.ones(1, 49, dtype=torch.float64)])
    for name, layer in key_layers(model):
        trained = state[f"{name}.weight"].double().reshape(layer.out_channels, -1)
        solution = torch.linalg.lstsq(basis.T, trained.T).solution.T  # [C, 9]: 8 keys and the constant
        torch.testing.assert_close(layer.alpha.double(), solution[:, :8], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(layer.offset.double(), solution[:, 8], atol=1e-5, rtol=1e-4)
        # the span fits at least as well as the best single key (what the frozen model: variant holds)
        span_residual = (trained - layer.weight.detach().double().reshape(len(trained), -1)).norm(dim=1)
        single = fit_affine(trained.float(), keys).residual.double()
        assert bool((span_residual <= single + 1e-4).all())
        assert float(span_residual.mean()) < 0.95 * float(single.mean())  # 0.417 vs 0.463 on this model


# ---------------------------------------------------------------------- learnable scale-space keys
def test_scalespace_model_starts_at_the_scalespace8_keys_and_learns_only_sigma_gamma_and_offsets() -> None:
    for scope in SIGMA_SCOPES:
        learned, frozen = tiny_convnext(), tiny_convnext()
        convert_to_keys(learned, "scalespace8", "scalespace", "convnextv2-b", seed=2, sigma_scope=scope)
        convert_to_keys(frozen, "scalespace8", "frozen", "convnextv2-b", seed=2)
        for (_, s), (_, f) in zip(key_layers(learned), key_layers(frozen), strict=True):
            assert isinstance(s, ScaleSpaceConv2d) and torch.equal(s.key_index, f.key_index)
            # the torch quadrature reproduces scipy's Bessel kernels to float32 rounding
            torch.testing.assert_close(s.weight, f.weight, atol=1e-6, rtol=0)
        _random_projection(learned).backward()
        for _, layer in key_layers(learned):
            names = {n for n, _ in layer.named_parameters()}
            assert names <= {"log_sigma_x", "log_sigma_y", "gamma", "offset", "bias"}
            assert {"log_sigma_x", "log_sigma_y", "offset"} <= names
            used = torch.unique(layer.group)
            for p in (layer.log_sigma_x, layer.log_sigma_y):
                assert bool((p.grad[used] != 0).all()), "a σ in use got no gradient"
            if layer.gamma is not None:
                assert float(layer.gamma.grad.abs().sum()) > 0
            rows = layer.out_channels if scope == "channel" else 8
            assert layer.log_sigma_x.shape == (rows,)


def test_learned_sigma_recovers_the_scales_that_made_the_target_filters() -> None:
    """A small synthetic fit: kernels generated from known σ (and γ) are regressed from the scalespace8 start."""
    from masterkey.kernels import PAPER8_SCALESPACE

    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 7, padding=3, groups=8)
    models = scalespace_models(load_keys("scalespace8"))
    index = torch.arange(8)
    truth = [
        ScaleSpaceKey(m.family, m.sigma_x * fx, m.sigma_y * fy, m.gamma * 1.3 if m.gamma else 0.0, m.sign)
        for m, fx, fy in zip(
            models, (1.3, 0.8, 1.25, 0.85, 0.8, 1.2, 1.2, 1.35), (0.8, 1.3, 0.85, 1.3, 1.2, 0.8, 0.9, 1.4), strict=True
        )
    ]
    target = ScaleSpaceConv2d(conv, truth, index).weight.detach()
    layer = ScaleSpaceConv2d(conv, models, index)
    optimizer = torch.optim.Adam([p for n, p in layer.named_parameters() if n != "bias"], lr=0.03)
    for _ in range(250):
        optimizer.zero_grad()
        loss = (layer.weight - target).square().sum()
        loss.backward()
        optimizer.step()
    assert float(loss.detach()) < 1e-8
    sigma = layer.sigma.detach()
    for j, (key, row) in enumerate(zip(truth, PAPER8_SCALESPACE, strict=True)):
        assert float(sigma[j, 0]) == pytest.approx(key.sigma_x, rel=1e-3), row[0]
        assert float(sigma[j, 1]) == pytest.approx(key.sigma_y, rel=1e-3), row[0]
    assert float(layer.gamma.detach()[0]) == pytest.approx(truth[6].gamma, rel=1e-3)
    torch.testing.assert_close(layer.offset.detach(), torch.zeros(8), atol=1e-5, rtol=0)


def test_scalespace_models_of_any_key_set_come_from_a_fit() -> None:
    fitted = scalespace_models(load_keys("paper8"))
    stored = scalespace_models(load_keys("scalespace8"))
    assert [m.family for m in fitted] == [m.family for m in stored]
    for a, b in zip(fitted, stored, strict=True):
        assert a.sign == b.sign and a.sigma_x == pytest.approx(b.sigma_x, abs=2e-3)
    model = tiny_convnext(kernel_sizes=3)  # models are generated at every size: no --resize-keys needed
    convert_to_keys(model, "paper8", "scalespace", "uniform")
    assert all(layer.weight.shape[-1] == 3 for _, layer in key_layers(model))


@pytest.mark.parametrize(
    ("mode", "keys", "extra"),
    [
        ("span", "paper8", {}),
        ("scalespace", "scalespace8", {"sigma_scope": "key"}),
        ("scalespace", "scalespace8", {"sigma_scope": "channel", "learn_scale": True}),
    ],
)
def test_span_and_scalespace_export_into_plain_timm_with_the_same_logits(mode: str, keys: str, extra: dict) -> None:
    model = tiny_convnext()
    convert_to_keys(model, keys, mode, "hornet-t", **extra)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # move every learnable kernel parameter away from its start
        for _, layer in key_layers(model):
            for name, p in layer.named_parameters():
                if name != "bias":
                    p.add_(0.1 * torch.randn(p.shape, generator=gen))
    state = export_state_dict(model)
    plain = timm.create_model("convnext_atto", **TINY)
    assert list(state) == list(plain.state_dict())
    plain.load_state_dict(state, strict=True)
    x = torch.randn(3, 3, 32, 32)
    model.eval(), plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(x), model(x))
        materialize(model)
        torch.testing.assert_close(plain(x), model(x))


def test_parameter_counts_say_what_each_mode_trains_per_channel() -> None:
    per_channel = {}
    for mode, keys, extra in [
        ("trainable", "paper8", {}),
        ("frozen", "paper8", {}),
        ("frozen", "paper8", {"learn_scale": True}),
        ("span", "paper8", {}),
        ("scalespace", "scalespace8", {"sigma_scope": "channel"}),
    ]:
        model = tiny_convnext()
        convert_to_keys(model, keys, mode, "uniform", **extra)
        counts = parameter_counts(model)
        assert counts["depthwise_channels"] == 80
        per_channel[(mode, bool(extra))] = counts["depthwise_trainable_per_channel"]
    assert per_channel[("trainable", False)] == 49 and per_channel[("frozen", False)] == 1
    assert per_channel[("frozen", True)] == 2 and per_channel[("span", False)] == 9
    # channel scope: σx, σy and b per channel, and γ for the centre-surround channels (1 in 8 with uniform)
    assert per_channel[("scalespace", True)] == pytest.approx(3 + (1 + 2 + 3 + 4) / 80)


def test_epoch_stats_and_summary_report_mixing_weights_and_sigmas() -> None:
    span = tiny_convnext()
    convert_to_keys(span, "paper8", "span", "uniform", key_gain=2.0)
    stats = depthwise_epoch_stats(span)
    assert stats["dw_alpha_own"] == 1.0
    assert sum(stats[f"dw_alpha_k{j}"] for j in range(1, 9)) == pytest.approx(2.0)  # one 2.0 per channel, 8 keys
    summary = depthwise_summary(span)
    assert len(summary) == 4 and len(summary[0]["mean_abs_alpha"]) == 8
    scales = tiny_convnext()
    convert_to_keys(scales, "scalespace8", "scalespace", "uniform")
    stats = depthwise_epoch_stats(scales)
    assert stats["dw_sigma_x_k5"] == pytest.approx(1.0972, abs=1e-6) and stats["dw_gamma_k7"] == pytest.approx(0.7572)
    assert "dw_gamma_k8" not in stats
    layer = depthwise_summary(scales)[3]
    assert layer["sigma_y"][3] == pytest.approx(0.3412, abs=1e-6) and layer["gamma"][6] == pytest.approx(0.7572)
    assert depthwise_epoch_stats(tiny_convnext()) == {} and depthwise_summary(tiny_convnext()) == []


# ---------------------------------------------------------------------- transferred filters
def test_transferred_filters_are_the_source_filters_exactly(cifar_convnexts: list) -> None:
    weights = next(p for p in cifar_convnexts if p.name == "convnext_atto_s2_e55.safetensors")
    state, _ = read_state_dict(weights)
    for freeze in (True, False):
        model = timm.create_model("convnext_atto", num_classes=10, patch_size=2)  # the source has patch 1: fine
        layers = transfer_filters(model, weights, freeze=freeze)
        assert len(layers) == 12
        for dw in find_depthwise(model):
            assert torch.equal(dw.conv.weight, state[f"{dw.name}.weight"].float())
            assert dw.conv.weight.requires_grad is not freeze
        counts = parameter_counts(model)
        assert counts["depthwise_trainable"] == (0 if freeze else 1840 * 49)


def test_mismatched_architectures_are_refused_naming_the_first_layer(cifar_convnexts: list) -> None:
    weights = next(p for p in cifar_convnexts if p.name == "convnext_atto_s2_e55.safetensors")
    with pytest.raises(
        MasterkeyError, match=r"layer 'stages\.0\.blocks\.0\.conv_dw' is \(40, 1, 7, 7\) there but \(48"
    ):
        transfer_filters(timm.create_model("convnext_femto", num_classes=10), weights, freeze=True)
    with pytest.raises(MasterkeyError, match=r"no weight for layer 'stages\.2\.blocks\.6\.conv_dw'"):
        transfer_filters(timm.create_model("convnext_atto", depths=(2, 2, 7, 2)), weights, freeze=True)
    with pytest.raises(
        MasterkeyError, match=r"has depthwise layer 'stages\.2\.blocks\.5\.conv_dw' that the model lacks"
    ):
        transfer_filters(timm.create_model("convnext_atto", depths=(2, 2, 5, 2)), weights, freeze=True)
    with pytest.raises(MasterkeyError, match=r"is \(40, 1, 7, 7\) there but \(40, 1, 3, 3\)"):
        transfer_filters(timm.create_model("convnext_atto", kernel_sizes=3), weights, freeze=False)
    with pytest.raises(MasterkeyError, match="use transfer_filters"):
        convert_to_keys(tiny_convnext(), "paper8", "transfer-frozen")
