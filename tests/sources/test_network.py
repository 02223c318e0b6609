import pytest
import torch
from torch import nn

from masterkey.errors import MasterkeyError
from masterkey.normalize import FilterFlag
from masterkey.sources import harvest, harvest_module


def test_timm_models_give_the_same_filters_as_the_raw_state_dict(cifar_convnexts):
    for path in cifar_convnexts:
        raw = harvest(path)
        arch = raw.model
        via_timm = harvest(f"timm:{arch}", weights=path)
        assert via_timm.kind == "timm"
        assert via_timm.counts_by_kernel() == raw.counts_by_kernel()
        assert [layer.name for layer in via_timm.layers] == [layer.name for layer in raw.layers]
        for a, b in zip(via_timm.layers, raw.layers, strict=True):
            assert torch.equal(a.weight, b.weight)


def test_torchvision_mobilenet_v2_matches_raw(models_dir):
    path = models_dir / "mobilenet_v2_imagenet.pth"
    tv = harvest(f"torchvision:mobilenet_v2@{path}")
    raw = harvest(path)
    assert tv.kind == "torchvision" and tv.counts_by_kernel() == {3: 7136} and len(tv.layers) == 17
    assert all(torch.equal(a.weight, b.weight) for a, b in zip(tv.layers, raw.layers, strict=True))
    # MobileNetV2 has strided depthwise convs; the model source records it
    assert sum(layer.stride > 1 for layer in tv.layers) == 4


class Odd(nn.Module):
    """Channel multiplier, strided, dilated, 1x1 and non-square depthwise convs."""

    def __init__(self) -> None:
        super().__init__()
        self.mult = nn.Conv2d(4, 12, 3, groups=4)  # out = 3 * in
        self.strided = nn.Conv2d(12, 12, 5, stride=2, groups=12)
        self.dilated = nn.Conv2d(12, 12, 3, dilation=2, groups=12)
        self.pointwise_dw = nn.Conv2d(12, 12, 1, groups=12)
        self.wide = nn.Conv2d(12, 12, (1, 7), groups=12)
        self.dense = nn.Conv2d(12, 12, 3)


def test_module_variants():
    src = harvest_module(Odd(), "odd")
    assert [layer.name for layer in src.layers] == ["mult", "strided", "dilated"]
    mult, strided, dilated = src.layers
    assert mult.multiplier == 3 and mult.n_filters == 12
    assert strided.stride == 2 and dilated.dilation == 2
    assert {s["layer"] for s in src.skipped} == {"pointwise_dw", "wide"}


def test_bank_flags_for_module_variants(tmp_path):
    from masterkey.bank import write_bank

    bank = write_bank([harvest_module(Odd(), "odd")], tmp_path / "odd")
    meta = bank.metadata
    mult = meta[meta["layer"] == "mult"]
    assert (mult["filter_flags"] & int(FilterFlag.MULTIPLIER)).all() and mult["group"].tolist() == [
        i // 3 for i in range(12)
    ]
    assert (meta[meta["layer"] == "strided"]["filter_flags"] & int(FilterFlag.STRIDED)).all()
    assert (meta[meta["layer"] == "dilated"]["filter_flags"] & int(FilterFlag.DILATED)).all()
    assert bank.counts_by_kernel() == {3: 24, 5: 12}


def test_model_errors(tmp_path, models_dir):
    with pytest.raises(MasterkeyError, match="not a timm or torchvision model name"):
        harvest("no_such_net_xyz")
    with pytest.raises(MasterkeyError, match="has no depthwise convolution"):
        import torchvision

        torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
        harvest("torchvision:resnet18", weights=tmp_path / "r18.pth")
    with pytest.raises(MasterkeyError, match="weights do not fit the model.*missing keys"):
        harvest("timm:convnext_atto", weights=models_dir / "mobilenet_v2_imagenet.pth")
    with pytest.raises(MasterkeyError, match=r"class-count mismatch.*10 classes"):
        harvest(
            "timm:convnext_atto",
            weights=models_dir / "cifar10-convnext" / "convnext_atto_s0_e20.safetensors",
            model_kwargs={"num_classes": 1000, "patch_size": 1},
        )
