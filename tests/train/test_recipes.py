"""Recipes: presets that set every option, overridable one by one, resolved into run.json; the paper's ImageNet
recipe has the ConvNeXt-V2 numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from masterkey.cli import main
from masterkey.errors import MasterkeyError
from masterkey.train import TrainConfig
from masterkey.train.recipes import IMAGENET_SOURCES, RECIPES, describe, drop_path_for


def test_the_cifar_recipe_is_the_defaults() -> None:
    assert (
        TrainConfig.from_dict({"recipe": "cifar", "data": "d"}).to_dict()
        == TrainConfig(recipe="cifar", data="d").to_dict()
    )


def test_the_imagenet_recipe_has_the_convnext_v2_numbers_and_says_where_they_come_from() -> None:
    config = TrainConfig.from_dict({"recipe": "imagenet", "data": "d"})
    assert (config.model, config.epochs, config.batch_size, config.base_lr) == ("convnextv2_atto", 300, 1024, 8e-4)
    assert config.lr == pytest.approx(8e-4 * 1024 / 256)  # the linear scaling rule: 3.2e-3
    assert (config.weight_decay, config.warmup_epochs, config.min_lr, config.ema_decay) == (0.05, 40, 1e-6, 0.9999)
    assert (config.mixup, config.cutmix, config.label_smoothing, config.re_prob) == (0.8, 1.0, 0.1, 0.25)
    assert (config.auto_augment, config.train_crop, config.interpolation) == ("rand-m9-mstd0.5-inc1", "rrc", "bicubic")
    assert (config.image_size, config.crop_pct, config.normalize) == (224, 0.875, "imagenet")
    assert config.drop_path == 0.1 and config.worker_augment
    assert set(IMAGENET_SOURCES) == {*RECIPES["imagenet"], "drop_path"}


def test_options_override_the_recipe_one_by_one() -> None:
    config = TrainConfig.from_dict(
        {"recipe": "imagenet", "data": "d", "model": "convnextv2_tiny", "batch_size": 256, "epochs": 10}
    )
    assert config.epochs == 10 and config.lr == pytest.approx(8e-4)  # base lr x 256 / 256
    assert config.drop_path == 0.2  # follows the model: tiny
    assert config.mixup == 0.8  # the rest stays the recipe's
    fixed = TrainConfig.from_dict({"recipe": "imagenet", "data": "d", "lr": 1e-3})
    assert fixed.base_lr is None and fixed.lr == 1e-3  # an explicit lr turns the scaling off
    own = TrainConfig.from_dict({"recipe": "imagenet", "data": "d", "model_kwargs": {"drop_path_rate": 0.3}})
    assert own.drop_path is None and own.model_kwargs == {"drop_path_rate": 0.3}
    assert [drop_path_for(m) for m in ("convnextv2_atto", "convnextv2_nano", "timm:convnextv2_base", "hornet")] == [
        0.1, 0.1, 0.1, 0.2,
    ]  # fmt: skip
    line = describe("imagenet", {"epochs": 10, "model": "convnextv2_tiny"})
    assert line.startswith("recipe imagenet: model=convnextv2_tiny (given)") and "epochs=10 (given)" in line
    with pytest.raises(MasterkeyError, match="recipe 'fast': expected one of cifar, imagenet"):
        TrainConfig.from_dict({"recipe": "fast", "data": "d"})
    with pytest.raises(MasterkeyError, match="drop_path=0.2: expected unset when model_kwargs gives drop_path_rate"):
        TrainConfig(data="d", drop_path=0.2, model_kwargs={"drop_path_rate": 0.1}).validated()
    with pytest.raises(MasterkeyError, match="image_size=None: expected a size for RandomResizedCrop"):
        TrainConfig(data="d", train_crop="rrc").validated()


def test_the_cli_prints_the_recipe_and_saves_it_resolved(tiny: TrainConfig, tmp_path: Path, capsys) -> None:
    args = [
        "train", "--recipe", "imagenet", "--model", "convnext_atto", "--model-kwargs", json.dumps(tiny.model_kwargs),
        "--data", tiny.data, "--max-train-images", "60", "--max-test-images", "40", "--batch-size", "20",
        "--epochs", "1", "--image-size", "32", "--no-progress", "--workers", "0", "-o", str(tmp_path / "run"),
    ]  # fmt: skip
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "masterkey: recipe imagenet: model=convnext_atto (given)" in err and "base_lr=0.0008" in err
    assert "masterkey: data: stream: the per-image augmentation (RandomResizedCrop, auto_augment" in err
    saved = json.loads((tmp_path / "run" / "run.json").read_text())["config"]
    assert saved["recipe"] == "imagenet" and saved["auto_augment"] == "rand-m9-mstd0.5-inc1"
    assert saved["lr"] == pytest.approx(8e-4 * 20 / 256) and saved["epochs"] == 1 and saved["drop_path"] == 0.1
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["recipe"] == "imagenet" and summary["data_mode"] == "stream"
