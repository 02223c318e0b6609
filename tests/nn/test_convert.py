"""Whole networks given keys, a key mix or a trained model's filters, as each mode says."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from masterkey.depthwise import find_depthwise
from masterkey.errors import MasterkeyError
from masterkey.fit import fit_affine
from masterkey.keys import load_keys
from masterkey.networks.models import read_state_dict
from masterkey.nn import (
    PUBLISHED_PROPORTIONS,
    KeyKernel,
    SpanKernel,
    apply_mode,
    convert_to_keys,
    counts_from_proportions,
    export_state_dict,
    key_counts,
    key_layers,
    parameter_counts,
    transfer_filters,
)

from .conftest import tiny_convnext


def test_frozen_conversion_holds_the_assigned_unit_keys() -> None:
    model = tiny_convnext()
    keys = load_keys("paper8")
    conversion = convert_to_keys(model, keys, "frozen", "convnextv2-b", seed=5)
    assert (conversion.mode, conversion.keys, conversion.assignment) == ("frozen", "paper8", "convnextv2-b")
    assert len(conversion.layers) == 4 and conversion.channels == 80
    for (name, layer), info in zip(key_layers(model), conversion.layers, strict=True):
        assert name == info.name and isinstance(layer, KeyKernel)
        assert torch.equal(layer.key[:, 0], keys.keys[layer.key_index])
        assert torch.equal(layer.offset, torch.zeros_like(layer.offset)) and layer.scale is None
        assert sum(info.counts) == layer.channels == len(layer.key_index)
        expected = counts_from_proportions(layer.channels, PUBLISHED_PROPORTIONS["convnextv2-b"]).tolist()
        assert info.counts == expected
    assert key_counts(model, 8) == conversion.key_counts and sum(conversion.key_counts) == 80
    # The keys are buffers: no optimiser ever sees them.
    assert not any(p is layer.key for p in model.parameters() for _, layer in key_layers(model))
    # Same seed, same assignment; another seed, another one.
    again, other = tiny_convnext(), tiny_convnext()
    convert_to_keys(again, keys, "frozen", "convnextv2-b", seed=5)
    convert_to_keys(other, keys, "frozen", "convnextv2-b", seed=6)
    pairs = list(zip(key_layers(model), key_layers(again), key_layers(other), strict=True))
    assert all(torch.equal(a.key, b.key) for (_, a), (_, b), _ in pairs)
    assert not all(torch.equal(a.key, c.key) for (_, a), _, (_, c) in pairs)


def test_key_init_writes_keys_into_plain_trainable_convs() -> None:
    model = tiny_convnext()
    conversion = convert_to_keys(model, "paper8", "key-init", "uniform", key_gain=0.5)
    assert not key_layers(model) and sum(conversion.key_counts) == 80
    keys = load_keys("paper8").keys
    for dw in find_depthwise(model):
        w = dw.conv.weight.detach()[:, 0]
        assert type(dw.conv) is nn.Conv2d and dw.conv.weight.requires_grad
        # every channel is 0.5 x one of the keys
        dist = (w[:, None] - 0.5 * keys[None]).flatten(2).abs().amax(dim=2).amin(dim=1)
        assert float(dist.max()) < 1e-6
    trainable = convert_to_keys(tiny_convnext(), "paper8", "trainable")
    assert trainable.layers == [] and trainable.keys is None and trainable.assignment is None


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
    conversion = convert_to_keys(model, "paper8", "frozen", "uniform", resize=True)
    assert {info.kernel_size for info in conversion.layers} == {3, 5}
    assert {type(model.get_submodule(name)).__bases__[0].__name__ for name, _ in key_layers(model)} == {
        "Conv2d",
        "Conv2dSame",
    }  # stride-1 layers are plain convs, strided ones timm's same padding
    with torch.no_grad():
        for _, layer in key_layers(model):
            layer.offset.add_(0.05)
    plain = timm.create_model("tf_efficientnet_lite0", num_classes=10).eval()
    plain.load_state_dict(export_state_dict(model), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), model(x), rtol=1e-4, atol=1e-4)


def test_models_without_depthwise_convs_and_unknown_modes_are_refused() -> None:
    with pytest.raises(MasterkeyError, match="no depthwise"):
        convert_to_keys(nn.Sequential(nn.Conv2d(3, 8, 3)), "paper8", "frozen")
    with pytest.raises(MasterkeyError, match="mode='half': expected one of trainable, frozen"):
        convert_to_keys(tiny_convnext(), "paper8", "half")
    with pytest.raises(MasterkeyError, match="key gain 0"):
        convert_to_keys(tiny_convnext(), "paper8", key_gain=0)


# ---------------------------------------------------------------------- span of keys
def _random_projection(model: nn.Module) -> torch.Tensor:
    """A loss whose gradient reaches every kernel entry of every key layer (not damped by ConvNeXt's layer scale
    of 1e-6, as a loss on the logits of a fresh model is)."""
    gen = torch.Generator().manual_seed(0)
    return sum((k.kernel() * torch.randn(k.kernel().shape, generator=gen)).sum() for _, k in key_layers(model))


def test_a_one_hot_span_model_equals_the_frozen_model_exactly() -> None:
    frozen, span = tiny_convnext(), tiny_convnext()
    a = convert_to_keys(frozen, "paper8", "frozen", "convnextv2-b", seed=3, key_gain=0.7)
    b = convert_to_keys(span, "paper8", "span", "convnextv2-b", seed=3, key_gain=0.7)
    assert [info.counts for info in a.layers] == [info.counts for info in b.layers]
    for (_, f), (_, s) in zip(key_layers(frozen), key_layers(span), strict=True):
        assert isinstance(s, SpanKernel) and torch.equal(f.key_index, s.key_index)
        assert torch.equal(s.alpha.count_nonzero(dim=1), torch.ones(s.channels, dtype=torch.long))
        assert torch.equal(f.kernel(), s.kernel())
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(frozen.eval()(x), span.eval()(x))


def test_span_gradients_reach_alpha_and_never_the_keys() -> None:
    model = tiny_convnext()
    convert_to_keys(model, "paper8", "span", "uniform")
    _random_projection(model).backward()
    for name, layer in key_layers(model):
        assert {n for n, _ in layer.named_parameters()} == {"alpha", "offset"}
        assert {n for n, _ in layer.named_buffers()} == {"basis", "key_index"}
        assert layer.alpha.grad is not None and float(layer.alpha.grad.abs().sum()) > 0, name
        # every key's mixing weight gets a gradient, not only the assigned one
        assert bool((layer.alpha.grad.abs().sum(dim=0) > 0).all()), name
        assert not layer.basis.requires_grad and layer.basis.grad is None


def test_span_from_a_trained_model_is_its_least_squares_mix(cifar_convnexts: list) -> None:
    weights = next(p for p in cifar_convnexts if p.name == "convnext_atto_s0_e20.safetensors")
    state, _ = read_state_dict(weights)
    keys = load_keys("paper8")
    model = timm.create_model("convnext_atto", num_classes=10, patch_size=1)
    convert_to_keys(model, keys, "span", f"model:{weights}")
    basis = torch.cat([keys.keys.double().reshape(8, -1), torch.ones(1, 49, dtype=torch.float64)])
    for name, layer in key_layers(model):
        trained = state[f"{name}.weight"].double().reshape(layer.channels, -1)
        solution = torch.linalg.lstsq(basis.T, trained.T).solution.T  # [C, 9]: 8 keys and the constant
        torch.testing.assert_close(layer.alpha.double(), solution[:, :8], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(layer.offset.double(), solution[:, 8], atol=1e-5, rtol=1e-4)
        # the span fits at least as well as the best single key (what the frozen model: variant holds)
        span_residual = (trained - layer.kernel().detach().double().reshape(len(trained), -1)).norm(dim=1)
        single = fit_affine(trained.float(), keys).residual.double()
        assert bool((span_residual <= single + 1e-4).all())
        assert float(span_residual.mean()) < 0.95 * float(single.mean())  # 0.417 vs 0.463 on this model


# ---------------------------------------------------------------------- transferred filters
def test_transferred_filters_are_the_source_filters_exactly(cifar_convnexts: list) -> None:
    weights = next(p for p in cifar_convnexts if p.name == "convnext_atto_s2_e55.safetensors")
    state, _ = read_state_dict(weights)
    for freeze, mode in ((True, "transfer-frozen"), (False, "transfer-init")):
        model = timm.create_model("convnext_atto", num_classes=10, patch_size=2)  # the source has patch 1: fine
        conversion = apply_mode(model, mode, filters_from=weights)
        assert conversion.mode == mode and conversion.filters_from == str(weights) and len(conversion.layers) == 12
        for dw in find_depthwise(model):
            assert torch.equal(dw.conv.weight, state[f"{dw.name}.weight"].float())
            assert dw.conv.weight.requires_grad is not freeze
        assert parameter_counts(model)["depthwise_trainable"] == (0 if freeze else 1840 * 49)
    with pytest.raises(MasterkeyError, match="give filters_from"):
        apply_mode(tiny_convnext(), "transfer-init")


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
