"""efficientnet_pytorch checkpoints mapped onto timm EfficientNets, and model recognition from a state_dict."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from masterkey.data.evaluate import evaluate
from masterkey.data.preprocessing import preprocessing_for
from masterkey.data.selection import load_eval_images
from masterkey.errors import MasterkeyError
from masterkey.networks.models import (
    create_model,
    efficientnet_pytorch_to_timm,
    guess_model_name,
    is_efficientnet_pytorch,
    read_state_dict,
)


@pytest.fixture(scope="module")
def lite_state(models_dir: Path) -> dict[str, torch.Tensor]:
    return read_state_dict(models_dir / "efficientnet_lite0_imagenet.pth")[0]


def test_mapping_loads_strictly_and_keeps_every_tensor(lite_state) -> None:
    assert is_efficientnet_pytorch(lite_state)
    model = timm.create_model("tf_efficientnet_lite0")
    mapped = efficientnet_pytorch_to_timm(dict(lite_state), model)
    assert mapped is not None and len(mapped) == len(lite_state) == 296
    model.load_state_dict(mapped, strict=True)
    blocks = [name for name, _ in model.named_modules() if name.count(".") == 2 and name.startswith("blocks.")]
    assert len(blocks) == 16
    for i, block in enumerate(blocks):
        # Block i's depthwise conv, BatchNorm after it and projection are the checkpoint's block i.
        dw = model.get_submodule(f"{block}.conv_dw").weight
        assert torch.equal(dw, lite_state[f"_blocks.{i}._depthwise_conv.weight"])
        project = "conv_pwl" if f"_blocks.{i}._expand_conv.weight" in lite_state else "conv_pw"
        assert torch.equal(
            model.get_submodule(f"{block}.{project}").weight, lite_state[f"_blocks.{i}._project_conv.weight"]
        )
    assert torch.equal(model.classifier.weight, lite_state["_fc.weight"])
    assert torch.equal(model.bn1.running_var, lite_state["_bn0.running_var"])


def test_remapped_lite0_classifies_real_images(models_dir: Path, shared: Path) -> None:
    """create_model finds the mapping on its own; 14 of these 16 ImageNet samples come out right (measured)."""
    model = create_model("tf_efficientnet_lite0", weights=models_dir / "efficientnet_lite0_imagenet.pth")
    prep = preprocessing_for(model)
    assert prep.mean == (0.5, 0.5, 0.5)
    images = load_eval_images(shared / "data" / "imagenet-samples" / "val", prep, max_images=16, seed=0)
    out = evaluate(model, images, prep, progress=False)
    assert out["top1"] >= 12 / 16 and out["top5"] >= 14 / 16


def test_mapping_declines_what_it_does_not_know(lite_state) -> None:
    assert (
        efficientnet_pytorch_to_timm({"features.0.weight": torch.zeros(1)}, timm.create_model("test_efficientnet"))
        is None
    )
    # Block counts differ (16 vs the 17 of MobileNetV2): no silent misalignment.
    assert efficientnet_pytorch_to_timm(dict(lite_state), timm.create_model("mobilenetv2_100")) is None
    bad = dict(lite_state)
    bad["_blocks.3._mystery.weight"] = torch.zeros(1)
    assert efficientnet_pytorch_to_timm(bad, timm.create_model("tf_efficientnet_lite0")) is None


def test_weights_that_do_not_fit_list_missing_and_unexpected_keys(models_dir: Path) -> None:
    with pytest.raises(MasterkeyError, match=r"missing keys \(.*\); \d+ unexpected keys \(_conv_stem"):
        create_model("convnext_atto", weights=models_dir / "efficientnet_lite0_imagenet.pth")


def test_guess_model_name(lite_state, models_dir: Path) -> None:
    assert guess_model_name(lite_state) == "timm:tf_efficientnet_lite0"
    mnv2 = read_state_dict(models_dir / "mobilenet_v2_imagenet.pth")[0]
    assert guess_model_name(mnv2) == "torchvision:mobilenet_v2"
    assert guess_model_name({"weight": torch.zeros(3)}) is None


def test_a_failing_checkpoint_filter_is_named_and_a_broken_one_is_not_hidden(monkeypatch) -> None:
    """A filter that does not apply (a KeyError) is skipped and named in the error when nothing fits; a filter
    with a bug (an error no filter raises for "does not apply") propagates instead of being swallowed."""
    from masterkey.networks import models

    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    state = {"other.weight": torch.zeros(2, 3), "other.bias": torch.zeros(2)}

    def needs_a_key(state, model):
        return {"0.weight": state["absent"]}

    monkeypatch.setattr(models, "_CHECKPOINT_FILTERS", [needs_a_key])
    with pytest.raises(MasterkeyError, match=r"remappings that failed: .*needs_a_key raised KeyError 'absent'"):
        models.load_weights(model, state, source="ckpt.pt")

    def renames(state, model):
        return {k.replace("other", "0"): v for k, v in state.items()}

    monkeypatch.setattr(models, "_CHECKPOINT_FILTERS", [needs_a_key, renames])
    models.load_weights(model, {k: v + 1 for k, v in state.items()}, source="ckpt.pt")
    assert torch.equal(model[0].bias, torch.ones(2))

    def buggy(state, model):
        return 1 / 0

    monkeypatch.setattr(models, "_CHECKPOINT_FILTERS", [buggy])
    with pytest.raises(ZeroDivisionError):
        models.load_weights(model, state, source="ckpt.pt")
