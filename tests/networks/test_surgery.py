"""Model surgery: depthwise filters swapped for their best affine fits."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from masterkey.errors import MasterkeyError
from masterkey.fit import fit_affine
from masterkey.keys import KeySet, load_keys
from masterkey.networks.models import create_model
from masterkey.networks.surgery import (
    depthwise_layers,
    filters_as_keys,
    keys_for_kernel,
    select_layers,
    swap_depthwise,
)


@pytest.fixture(scope="module")
def convnext(cifar_convnexts) -> nn.Module:
    return create_model(weights=next(p for p in cifar_convnexts if "convnext_atto_s2" in p.name))


@pytest.fixture(scope="module")
def mobilenet(models_dir) -> nn.Module:
    return create_model("torchvision:mobilenet_v2", weights=models_dir / "mobilenet_v2_imagenet.pth")


def _dw_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {pos.name: pos.conv.weight.detach().clone() for pos in depthwise_layers(model)}


@torch.no_grad()
@pytest.mark.parametrize("which", ["convnext", "mobilenet"])
def test_identity_keys_leave_outputs_unchanged(which: str, request: pytest.FixtureRequest) -> None:
    """A key set holding every filter exactly (the model's own normalised filters) changes nothing."""
    model = copy.deepcopy(request.getfixturevalue(which)).eval()
    size = 32 if which == "convnext" else 96
    x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0))
    before = model(x)
    keys = filters_as_keys(model)
    report = swap_depthwise(model, keys)
    after = model(x)
    assert report.n_filters == sum(pos.conv.weight.shape[0] for pos in depthwise_layers(model))
    assert report.mean_cos2 == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4 * float(before.abs().max()))


def test_swapped_filters_are_affine_keys_with_the_reported_fit(convnext: nn.Module) -> None:
    model = copy.deepcopy(convnext)
    original = _dw_weights(model)
    keys = load_keys("paper8")
    report = swap_depthwise(model, keys)
    assert len(report.layers) == 12 and report.n_keys == 8
    for layer, pos in zip(report.layers, depthwise_layers(model), strict=True):
        old = original[pos.name].reshape(-1, 7, 7)
        new = pos.conv.weight.detach().reshape(-1, 7, 7)
        fit = fit_affine(old, keys)
        assert layer.mean_cos2 == pytest.approx(float(fit.cos2.mean()), rel=1e-5)
        expected = fit.a[:, None, None] * keys.keys[fit.key] + fit.b[:, None, None]
        torch.testing.assert_close(new, expected)
        # A swapped filter is exactly a key (up to a and b): refitting it explains everything.
        assert float(fit_affine(new, keys).cos2.min()) > 1 - 1e-4
        torch.testing.assert_close(new.mean(dim=(1, 2)), old.mean(dim=(1, 2)), atol=1e-6, rtol=1e-4)


def test_layer_selection_by_glob_stage_list_and_predicate(convnext: nn.Module) -> None:
    layers = depthwise_layers(convnext)
    assert [p.stage for p in layers] == [0, 0, 1, 1, 2, 2, 2, 2, 2, 2, 3, 3]
    assert [p.name for p in select_layers(layers, "stages.0.*")] == [
        "stages.0.blocks.0.conv_dw",
        "stages.0.blocks.1.conv_dw",
    ]
    assert len(select_layers(layers, "stage:1-2")) == 8
    assert len(select_layers(layers, "stage:3,stages.0.blocks.0.conv_dw")) == 3
    assert len(select_layers(layers, ["stages.1.blocks.1.conv_dw"])) == 1
    assert len(select_layers(layers, lambda n: n.startswith("stages.2"))) == 6
    with pytest.raises(MasterkeyError, match="matches no depthwise layer"):
        select_layers(layers, "stages.9.*")

    model = copy.deepcopy(convnext)
    original = _dw_weights(model)
    report = swap_depthwise(model, "paper8", layers="stage:1")
    assert {layer.layer for layer in report.layers} == {"stages.1.blocks.0.conv_dw", "stages.1.blocks.1.conv_dw"}
    after = _dw_weights(model)
    for name, weight in original.items():
        assert torch.equal(after[name], weight) == (not name.startswith("stages.1."))
    per_stage = report.per_stage()
    assert per_stage["stage"].tolist() == [1] and int(per_stage["n_filters"].iloc[0]) == 160


def test_resolution_stages_for_names_without_stage(mobilenet: nn.Module) -> None:
    """torchvision features.N: a stride-2 depthwise conv starts a new stage."""
    layers = depthwise_layers(mobilenet)
    assert len(layers) == 17
    counts = [sum(p.stage == s for p in layers) for s in range(5)]
    assert counts == [1, 2, 3, 7, 4]
    for pos in layers[1:]:
        assert (pos.stride == 2) == (pos.block == 0)
    report = swap_depthwise(copy.deepcopy(mobilenet), "paper8", resize=True)
    frame = report.per_stage()
    assert frame["n_layers"].tolist() == counts
    assert int(frame["n_filters"].sum()) == 7136
    assert report.keysets[3].name == "paper8@3x3"


def test_keys_per_kernel_size(models_dir) -> None:
    lite = create_model("tf_efficientnet_lite0", weights=models_dir / "efficientnet_lite0_imagenet.pth")
    with pytest.raises(MasterkeyError, match="resize=True"):
        swap_depthwise(copy.deepcopy(lite), "paper8")
    mapping = {3: "random:4:1", 5: load_keys("random:6:2", kernel_size=5)}
    report = swap_depthwise(copy.deepcopy(lite), mapping)
    assert sorted(report.keysets) == [3, 5]
    assert report.n_keys == "3x3:4 5x5:6"
    assert report.n_filters == 2624 + 6336
    with pytest.raises(MasterkeyError, match=r"keys for the 5x5 filters: no 5x5 keys \(they are "):
        keys_for_kernel({3: "random:4:1"}, 5)
    assert keys_for_kernel({7: "paper8"}, 5, resize=True).name == "paper8@5x5"


def test_torchvision_mobilenet_v3_with_two_kernel_sizes() -> None:
    import torchvision

    model = torchvision.models.mobilenet_v3_small().eval()
    layers = depthwise_layers(model)
    assert {p.kernel_size for p in layers} == {(3, 3), (5, 5)}
    assert [p.stage for p in layers] == sorted(p.stage for p in layers) and layers[-1].stage > 0
    report = swap_depthwise(model, "paper8", resize=True)
    assert sorted(report.keysets) == [3, 5] and report.n_keys == 8
    assert report.n_filters == sum(p.conv.weight.shape[0] for p in layers)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


class _Tiny(nn.Module):
    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        c, k = weight.shape[0], weight.shape[-1]
        self.dw = nn.Conv2d(c, c, k, padding=k // 2, groups=c, bias=False)
        self.rect = nn.Conv2d(c, c, (3, 1), groups=c, bias=False)
        self.dw.weight.data.copy_(weight.reshape(c, 1, k, k))


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 6), st.integers(2, 12))
def test_swap_takes_the_least_squares_best_key(seed: int, n_keys: int, channels: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(channels, 3, 3, generator=gen)
    keys = KeySet("k", torch.randn(n_keys, 3, 3, generator=gen, dtype=torch.float64))
    model = _Tiny(weight)
    report = swap_depthwise(model, keys)
    assert report.skipped == [("rect", "non-square 3x1 kernel")]
    new = model.dw.weight.detach().reshape(channels, 3, 3)
    for y, swapped in zip(weight.double(), new.double(), strict=True):
        target = y.flatten()[:, None]
        residuals = []
        for key in keys.keys.double():
            design = torch.stack([key.flatten(), torch.ones(9, dtype=torch.float64)], 1)
            coef = torch.linalg.lstsq(design, target).solution
            residuals.append(float((design @ coef - target).square().sum()))
        assert float((y - swapped).square().sum()) == pytest.approx(min(residuals), rel=1e-4, abs=1e-6)


def test_nonfinite_filters_are_left_alone() -> None:
    weight = torch.randn(3, 3, 3)
    weight[1, 0, 0] = float("nan")
    model = _Tiny(weight)
    report = swap_depthwise(model, "random:2:0")
    assert report.layers[0].n_kept == 1
    assert torch.isnan(model.dw.weight[1, 0, 0, 0])
    assert not torch.equal(model.dw.weight[0, 0], weight[0])


def test_no_depthwise_layer_is_an_error() -> None:
    with pytest.raises(MasterkeyError, match="no depthwise convolution"):
        swap_depthwise(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()), "paper8")
    with pytest.raises(MasterkeyError, match="non-square"):
        model = nn.Sequential(nn.Conv2d(4, 4, (3, 1), groups=4))
        swap_depthwise(model, "paper8")


def test_filters_as_keys_drops_zero_filters() -> None:
    weight = torch.randn(4, 3, 3)
    weight[2] = 0
    keys = filters_as_keys(_Tiny(weight))
    assert list(keys) == [3] and len(keys[3]) == 3
