"""Recipes: every value of ``imagenet`` is the published one, checked against tables transcribed here from the
sources (not from recipes.py); options override a recipe one by one; the CLI prints and saves what it used."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from masterkey.cli import main
from masterkey.errors import MasterkeyError
from masterkey.train import TrainConfig
from masterkey.train.recipes import describe, recipe_for

# tonylindeberg/masterfiltmodel experiments/README.md, "1) Fine-tune with frozen depthwise filters", lines 17-39:
#   17 torchrun --nproc_per_node=8 main_finetune.py   18 --model convnextv2_tiny   19 --batch_size 256
#   20 --update_freq 4   22 --blr 8e-4   23 --epochs 300   24 --warmup_epochs 40   25 --layer_decay_type single
#   26 --layer_decay 0.9   27 --weight_decay 0.05   28 --drop_path 0.2   29 --reprob 0.25   30 --mixup 0.8
#   31 --cutmix 1.0   32 --smoothing 0.1   33 --model_ema True   34 --model_ema_eval True   35 --use_amp True
#   36 --freeze_dwconv True   37 --finetune ~/pretrained/convnextv2_tiny_1k_224_fcmae_B.pt
AUTHORS_TINY = {
    "model": "convnextv2_tiny",
    "batch_size": 256 * 4 * 8,  # per-GPU batch x update_freq x 8 GPUs
    "update_freq": 4,
    "base_lr": 8e-4,
    "lr": 8e-4 * 256 * 4 * 8 / 256,  # main_finetune.py: lr = blr x effective batch / 256
    "epochs": 300,
    "warmup_epochs": 40,
    "layer_decay_type": "single",
    "layer_decay": 0.9,
    "weight_decay": 0.05,
    "drop_path": 0.2,
    "re_prob": 0.25,
    "mixup": 0.8,
    "cutmix": 1.0,
    "label_smoothing": 0.1,
    "ema_eval": True,
}
# tonylindeberg/masterfiltmodel experiments/train_models/main_finetune.py, get_args_parser() defaults the commands
# keep: 46 --input_size 224; 56 --model_ema_decay 0.9999; 61 --clip_grad None; 70 --min_lr 1e-6;
# 92 --aa rand-m9-mstd0.5-inc1; 97 --train_interpolation bicubic; 129 --head_init_scale 0.001;
# 152 --imagenet_default_mean_and_std True; 173 --crop_pct None (facebookresearch/ConvNeXt-V2 datasets.py
# build_transform: crop_pct = 224 / 256, training transform timm create_transform = RandomResizedCrop + flip).
SCRIPT_DEFAULTS = {
    "image_size": 224,
    "ema_decay": 0.9999,
    "grad_clip": None,
    "min_lr": 1e-6,
    "auto_augment": "rand-m9-mstd0.5-inc1",
    "interpolation": "bicubic",
    "head_init_scale": 0.001,
    "normalize": "imagenet",
    "crop_pct": 224 / 256,
    "train_crop": "rrc",
    "hflip": True,
}
# facebookresearch/ConvNeXt-V2 TRAINING.md, ConvNeXt V2-Atto single-machine command, lines 120-138:
#   120 --nproc_per_node=8   121 --model convnextv2_atto   122 --batch_size 32 --update_freq 4   123 --blr 2e-4
#   124 --epochs 600   125 --warmup_epochs 0   126 --layer_decay_type 'single'   127 --layer_decay 0.9
#   128 --weight_decay 0.3   129 --drop_path 0.1   130 --reprob 0.25   131 --mixup 0.   132 --cutmix 0.
#   133 --smoothing 0.2   134 --model_ema True --model_ema_eval True
CONVNEXT_V2_ATTO = {
    "batch_size": 32 * 4 * 8, "update_freq": 4, "base_lr": 2e-4, "epochs": 600, "warmup_epochs": 0,
    "layer_decay_type": "single", "layer_decay": 0.9, "weight_decay": 0.3, "drop_path": 0.1, "re_prob": 0.25,
    "mixup": 0.0, "cutmix": 0.0, "label_smoothing": 0.2, "ema_eval": True,
}  # fmt: skip
# facebookresearch/ConvNeXt-V2 TRAINING.md, ConvNeXt V2-Base single-machine fine-tuning command, lines 69-87:
#   69 --nproc_per_node=8   70 --model convnextv2_base   71 --batch_size 32 --update_freq 4   72 --blr 6.25e-4
#   73 --epochs 100   74 --warmup_epochs 20   75 --layer_decay_type 'group'   76 --layer_decay 0.6
#   77 --weight_decay 0.05   78 --drop_path 0.1   79 --reprob 0.25   80 --mixup 0.8   81 --cutmix 1.0
#   82 --smoothing 0.1   83 --model_ema True --model_ema_eval True
CONVNEXT_V2_BASE = {
    "batch_size": 32 * 4 * 8, "update_freq": 4, "base_lr": 6.25e-4, "epochs": 100, "warmup_epochs": 20,
    "layer_decay_type": "group", "layer_decay": 0.6, "weight_decay": 0.05, "drop_path": 0.1, "re_prob": 0.25,
    "mixup": 0.8, "cutmix": 1.0, "label_smoothing": 0.1, "ema_eval": True,
}  # fmt: skip


def resolved(**values: object) -> dict[str, object]:
    return TrainConfig.from_dict({"recipe": "imagenet", "data": "d", **values}).to_dict()


def test_the_cifar_recipe_is_the_defaults() -> None:
    assert (
        TrainConfig.from_dict({"recipe": "cifar", "data": "d"}).to_dict()
        == TrainConfig(recipe="cifar", data="d").validated().to_dict()
    )


def test_the_imagenet_recipe_is_the_authors_command_with_their_script_defaults() -> None:
    config = resolved()
    for name, value in {**AUTHORS_TINY, **SCRIPT_DEFAULTS}.items():
        assert config[name] == pytest.approx(value), name
    assert config["init_from"] == "timm:fcmae"  # README line 37: --finetune an FCMAE checkpoint
    assert config["mode"] == "trainable"  # --freeze_dwconv is the run's mode (frozen with keys), not the recipe's
    recipe = recipe_for("imagenet")
    assert recipe.command == "tonylindeberg/masterfiltmodel experiments/README.md:17-39" and not recipe.borrowed_from
    assert set(recipe.sources) == set(recipe.values) and all("/" in s for s in recipe.sources.values())


@pytest.mark.parametrize(
    ("model", "table", "borrowed"),
    [
        ("convnextv2_atto", CONVNEXT_V2_ATTO, None),
        ("convnextv2_base", CONVNEXT_V2_BASE, None),
        ("timm:convnextv2_femto", CONVNEXT_V2_ATTO, "atto"),  # TRAINING.md has no femto command
        ("convnextv2_large", CONVNEXT_V2_BASE, "base"),
        ("convnext_atto", AUTHORS_TINY, "tiny"),  # not a ConvNeXt-V2: the authors' values, said so
    ],
)
def test_other_sizes_take_their_own_published_values_or_say_whose_they_borrow(
    model: str, table: dict[str, object], borrowed: str | None
) -> None:
    config = resolved(model=model)
    for name, value in {**table, **SCRIPT_DEFAULTS}.items():
        if name != "model":
            assert config[name] == pytest.approx(value), name
    recipe = recipe_for("imagenet", model)
    assert recipe.borrowed_from == borrowed
    assert bool(recipe.notes) == bool(borrowed) and (not borrowed or "borrows the values" in recipe.notes[0])
    line = describe("imagenet", {"model": model})
    assert ("borrowed" in line) == bool(borrowed) and recipe.command in line


def test_options_override_the_recipe_one_by_one_and_lr_conflicts_are_refused() -> None:
    config = TrainConfig.from_dict({"recipe": "imagenet", "data": "d", "batch_size": 256, "epochs": 10})
    assert config.epochs == 10 and config.lr == pytest.approx(8e-4)  # base lr x 256 / 256
    assert config.mixup == 0.8 and config.layer_decay == 0.9  # the rest stays the recipe's
    fixed = TrainConfig.from_dict({"recipe": "imagenet", "data": "d", "lr": 1e-3})
    assert fixed.base_lr is None and fixed.lr == 1e-3  # an explicit lr turns the scaling off
    own = TrainConfig.from_dict({"recipe": "imagenet", "data": "d", "model_kwargs": {"drop_path_rate": 0.3}})
    assert own.drop_path is None and own.model_kwargs == {"drop_path_rate": 0.3}
    started = TrainConfig.from_dict({"recipe": "imagenet", "data": "d", "weights": "w.safetensors"})
    assert started.init_from is None and started.head_init_scale is None  # weights replace the FCMAE start
    with pytest.raises(MasterkeyError, match=r"lr=0.001 and base_lr=0.0008 conflict .* = 0.0256\): give one"):
        TrainConfig.from_dict({"recipe": "imagenet", "data": "d", "lr": 1e-3, "base_lr": 8e-4})
    with pytest.raises(MasterkeyError, match="lr=0.001 and base_lr=0.001 conflict"):
        TrainConfig(data="d", lr=1e-3, base_lr=1e-3).validated()  # 1e-3 x 512 / 256 = 2e-3
    scaled = TrainConfig(data="d", base_lr=1e-3).validated()
    assert scaled.lr == 2e-3 and scaled.replace(batch_size=256).lr == 1e-3  # a new batch rescales
    assert TrainConfig(data="d").validated().lr == 3e-3
    with pytest.raises(MasterkeyError, match="recipe 'fast': expected one of cifar, imagenet"):
        TrainConfig.from_dict({"recipe": "fast", "data": "d"})
    with pytest.raises(MasterkeyError, match="drop_path=0.2: expected unset when model_kwargs gives drop_path_rate"):
        TrainConfig(data="d", drop_path=0.2, model_kwargs={"drop_path_rate": 0.1}).validated()
    with pytest.raises(MasterkeyError, match="image_size=None: expected a size for RandomResizedCrop"):
        TrainConfig(data="d", train_crop="rrc").validated()


def test_the_cli_refuses_lr_with_base_lr(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = main(["train", "--data", "d", "--lr", "0.001", "--base-lr", "0.001", "-o", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "--lr 0.001 and --base-lr 0.001 conflict" in err and "Traceback" not in err


def test_the_cli_prints_the_recipe_and_saves_it_resolved(
    tiny: TrainConfig, models_dir: Path, tmp_path: Path, capsys
) -> None:
    """The recipe for ConvNeXt-V2-Atto fine-tuned from real pre-trained weights (here a CIFAR-10 encoder standing in
    for the FCMAE one), on 60 CIFAR images; one epoch of an all-warm-up schedule is flagged everywhere."""
    weights = models_dir / "cifar10-convnext" / "convnextv2_atto_s0_e20.safetensors"
    args = [
        "train", "--recipe", "imagenet", "--model", "convnextv2_atto", "--model-kwargs", "num_classes=10,patch_size=1",
        "--init-from", str(weights), "--data", tiny.data, "--max-train-images", "60", "--max-test-images", "40",
        "--batch-size", "20", "--update-freq", "2", "--epochs", "1", "--warmup-epochs", "1", "--image-size", "32",
        "--no-progress", "--workers", "0", "-o", str(tmp_path / "run"),
    ]  # fmt: skip
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "recipe imagenet, atto values of facebookresearch/ConvNeXt-V2 TRAINING.md:120-138" in err
    assert "base_lr=0.0002" in err and "update_freq=2 (given)" in err
    assert err.count("warning: all 3 steps are warm-up (1 epoch, warmup_epochs 1)") == 2  # at the start, at the end
    assert "EMA test top-1" in out
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    saved = info["config"]
    assert saved["recipe"] == "imagenet" and saved["auto_augment"] == "rand-m9-mstd0.5-inc1"
    assert saved["lr"] == pytest.approx(2e-4 * 20 / 256) and saved["layer_decay"] == 0.9 and saved["drop_path"] == 0.1
    assert info["recipe"]["command"].endswith("TRAINING.md:120-138") and info["recipe"]["size"] == "atto"
    assert info["warnings"] and info["warnings"][0].startswith("all 3 steps are warm-up")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["recipe"] == "imagenet" and summary["warnings"] == info["warnings"]
    assert {"ema_test_top1", "best_ema_test_top1"} <= set(summary)
    assert main(["report", str(tmp_path / "run"), "-o", str(tmp_path / "report")]) == 0
    assert "warning: all 3 steps are warm-up" in (tmp_path / "report" / "report.md").read_text()
