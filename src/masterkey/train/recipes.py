"""Training recipes: named presets that set every training option at once (``--recipe NAME``).

Options given explicitly (command line, experiment file, Python) win over the recipe, one by one; the resolved
values and the recipe's name are saved in ``run.json`` and every checkpoint.

- ``cifar``: the defaults of :class:`~masterkey.train.config.TrainConfig` (the recipe of the CIFAR-10 ConvNeXts in
  ``shared/models``): AdamW lr 3e-3, weight decay 0.05, batch 512, 20 epochs, 1 warm-up epoch + cosine, label
  smoothing 0.1, random crop with 4-pixel reflect padding + flip on the device.
- ``imagenet``: the paper's Table 2 setup, which is the ConvNeXt-V2 ImageNet-1K recipe (``../shared/SPEC.md`` §2.8;
  facebookresearch/ConvNeXt-V2 ``TRAINING.md``, ConvNeXt V2-Tiny, and the defaults of its ``main_finetune.py`` /
  ``datasets.py``). Where each number comes from is in ``IMAGENET_SOURCES`` and docs/train.md.
"""

from __future__ import annotations

from typing import Any

from masterkey.errors import MasterkeyError

#: Stochastic depth (drop-path) rate by model size, for the ``imagenet`` recipe. ConvNeXt-V2 TRAINING.md gives
#: atto 0.1, tiny 0.2 and base 0.1; SPEC §2.8 says 0.2 (the tiny value). Femto, pico and nano are not listed
#: there: they take atto's 0.1. Any other model takes the SPEC's 0.2.
DROP_PATH_BY_SIZE = {"atto": 0.1, "femto": 0.1, "pico": 0.1, "nano": 0.1, "tiny": 0.2, "base": 0.1}
DEFAULT_DROP_PATH = 0.2

IMAGENET: dict[str, Any] = {
    "model": "convnextv2_atto",
    "image_size": 224,
    "crop_pct": 0.875,
    "interpolation": "bicubic",
    "normalize": "imagenet",
    "train_crop": "rrc",
    "hflip": True,
    "auto_augment": "rand-m9-mstd0.5-inc1",
    "re_prob": 0.25,
    "mixup": 0.8,
    "cutmix": 1.0,
    "label_smoothing": 0.1,
    "epochs": 300,
    "batch_size": 1024,
    "base_lr": 8e-4,
    "weight_decay": 0.05,
    "warmup_epochs": 40.0,
    "min_lr": 1e-6,
    "ema_decay": 0.9999,
    "grad_clip": None,
}

#: Where each value of the ``imagenet`` recipe comes from (also in docs/train.md).
IMAGENET_SOURCES: dict[str, str] = {
    "model": "the smallest ConvNeXt-V2 (the paper trains four sizes; pick one with --model)",
    "image_size": "ConvNeXt-V2 main_finetune.py --input_size 224",
    "crop_pct": "ConvNeXt-V2 datasets.py: evaluation resize 224 / 0.875 = 256, centre crop 224",
    "interpolation": "ConvNeXt-V2 main_finetune.py --train_interpolation bicubic; datasets.py evaluation BICUBIC",
    "normalize": "ConvNeXt-V2 main_finetune.py --imagenet_default_mean_and_std True",
    "train_crop": "timm create_transform(is_training=True): RandomResizedCrop scale (0.08, 1), ratio (3/4, 4/3)",
    "hflip": "timm create_transform default hflip 0.5",
    "auto_augment": "ConvNeXt-V2 main_finetune.py --aa rand-m9-mstd0.5-inc1 (RandAugment; disables colour jitter)",
    "re_prob": "TRAINING.md --reprob 0.25 (--remode pixel, --recount 1)",
    "mixup": "TRAINING.md --mixup 0.8 (switch prob 0.5, mode batch: main_finetune.py defaults)",
    "cutmix": "TRAINING.md --cutmix 1.0",
    "label_smoothing": "TRAINING.md --smoothing 0.1",
    "epochs": "TRAINING.md (ConvNeXt V2-T) --epochs 300; SPEC §2.8: 300 epochs",
    "batch_size": "TRAINING.md: 32 per GPU x 8 GPUs x --update_freq 4 (or 4 nodes) = 1024",
    "base_lr": "TRAINING.md --blr 8e-4; lr = blr x batch / 256 (main_finetune.py), 3.2e-3 at 1024; SPEC §2.8",
    "weight_decay": "TRAINING.md --weight_decay 0.05; SPEC §2.8",
    "warmup_epochs": "TRAINING.md (ConvNeXt V2-T) --warmup_epochs 40",
    "min_lr": "ConvNeXt-V2 main_finetune.py --min_lr 1e-6",
    "ema_decay": "TRAINING.md --model_ema True; main_finetune.py --model_ema_decay 0.9999; SPEC §2.8: EMA",
    "grad_clip": "main_finetune.py --clip_grad None",
    "drop_path": "TRAINING.md: atto 0.1, tiny 0.2, base 0.1; SPEC §2.8 0.2; see DROP_PATH_BY_SIZE",
}

RECIPES: dict[str, dict[str, Any]] = {"cifar": {}, "imagenet": IMAGENET}


def drop_path_for(model: str) -> float:
    """The ``imagenet`` recipe's drop-path rate for a model name (by the size word in it: atto ... base)."""
    name = model.rpartition(":")[2].lower()
    for size, rate in DROP_PATH_BY_SIZE.items():
        if size in name.split("_") or name.endswith(size):
            return rate
    return DEFAULT_DROP_PATH


def recipe_values(name: str, model: str | None = None) -> dict[str, Any]:
    """The fields recipe ``name`` sets (for ``imagenet`` the drop-path rate follows ``model``)."""
    if name not in RECIPES:
        raise MasterkeyError(f"recipe {name!r}: expected one of {', '.join(RECIPES)}")
    values = dict(RECIPES[name])
    if name == "imagenet":
        values["drop_path"] = drop_path_for(model or values["model"])
    return values


def apply_recipe(name: str, values: dict[str, Any], source: str = "options") -> dict[str, Any]:
    """``values`` with every field they do not give taken from recipe ``name``. An explicit ``lr`` without
    ``base_lr`` turns the recipe's batch scaling off; explicit ``model_kwargs`` giving ``drop_path_rate`` replace
    the recipe's ``drop_path``."""
    if not isinstance(name, str) or name not in RECIPES:
        raise MasterkeyError(f"{source}: recipe {name!r}: expected one of {', '.join(RECIPES)}")
    preset = recipe_values(name, values.get("model"))
    if "lr" in values and "base_lr" not in values:
        preset.pop("base_lr", None)
    if "drop_path_rate" in (values.get("model_kwargs") or {}):
        preset.pop("drop_path", None)
    return {**preset, **values, "recipe": name}


def describe(name: str, values: dict[str, Any]) -> str:
    """One line: the recipe's values as resolved, the explicitly given ones marked ``(given)``."""
    preset = recipe_values(name, values.get("model"))
    parts = []
    for key in preset:
        value = values.get(key, preset[key])
        mark = " (given)" if key in values and values[key] != preset[key] else ""
        parts.append(f"{key}={value}{mark}")
    return f"recipe {name}: " + (", ".join(parts) if parts else "the TrainConfig defaults")
