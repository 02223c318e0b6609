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
    KeyConv2d,
    assign_by_proportions,
    assign_from_fit_table,
    assign_from_model,
    assign_uniform,
    convert_to_keys,
    counts_from_proportions,
    export_state_dict,
    key_counts,
    key_layers,
    make_assigner,
    materialize,
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
    with pytest.raises(MasterkeyError, match=r"stages\.0\.blocks\.0\.conv_dw.*7x7.*3x3.*--resize-keys"):
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
