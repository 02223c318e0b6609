"""Training recipes: named presets that set every training option at once (``--recipe NAME``), each value with its
source (repository, file, line).

Options given explicitly (command line, experiment file, Python) win over the recipe, one by one; the resolved
values are saved in ``run.json`` with the recipe's name, the size whose values were used and their source.

- ``cifar``: the defaults of :class:`~masterkey.train.config.TrainConfig` (the recipe of the CIFAR-10 ConvNeXts in
  ``shared/models``, see ``shared/models/README.md``): AdamW lr 3e-3, weight decay 0.05, batch 512, 20 epochs,
  1 warm-up epoch + cosine, label smoothing 0.1, random crop with 4-pixel reflect padding + flip on the device.
- ``imagenet``: the paper authors' ImageNet-1K command (tonylindeberg/masterfiltmodel ``experiments/README.md``,
  "Fine-tune with frozen depthwise filters"), a fine-tuning of ConvNeXt-V2-Tiny from its FCMAE pre-trained
  encoder with the script defaults of their ``experiments/train_models/main_finetune.py`` (a fork of ConvNeXt-V2's).
  The authors publish that one command; other ConvNeXt-V2 sizes take the values ConvNeXt-V2's own
  ``TRAINING.md`` gives for them (Atto, Base), and sizes with no command of their own borrow the nearest listed
  size's, said in the resolved recipe (:func:`recipe_for`). The depthwise filters are the run's mode: the
  authors' ``--freeze_dwconv True`` after ``modify_models`` is ``mode frozen`` with keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from masterkey.errors import MasterkeyError

AUTHORS = "tonylindeberg/masterfiltmodel"
CONVNEXT_V2 = "facebookresearch/ConvNeXt-V2"
README = f"{AUTHORS} experiments/README.md"
SCRIPT = f"{AUTHORS} experiments/train_models/main_finetune.py"
TRAINING = f"{CONVNEXT_V2} TRAINING.md"
DATASETS = f"{CONVNEXT_V2} datasets.py, build_transform()"


@dataclass(frozen=True)
class Recipe:
    """A recipe resolved for one model: the values it sets, where each comes from, and which published command
    they are (``size``; ``borrowed_from`` when the model's own size has none)."""

    name: str
    values: dict[str, Any]
    sources: dict[str, str]
    size: str | None = None
    command: str | None = None  #: the published command the size-specific values are taken from
    borrowed_from: str | None = None  #: the size whose values a size without a command of its own uses
    notes: list[str] = field(default_factory=list)

    def provenance(self) -> dict[str, Any]:
        """What ``run.json`` records about the recipe (``recipe`` entry)."""
        return {
            "name": self.name,
            "size": self.size,
            "command": self.command,
            "borrowed_from": self.borrowed_from,
            "sources": self.sources,
        }


def _v(value: Any, source: str) -> tuple[Any, str]:
    return value, source


#: Values of every ``imagenet`` size: the defaults of the authors' fine-tuning script (and of ConvNeXt-V2's
#: ``datasets.py`` it imports) that the published commands do not change.
IMAGENET_COMMON: dict[str, tuple[Any, str]] = {
    "image_size": _v(224, f"{SCRIPT}:46 --input_size 224"),
    "crop_pct": _v(0.875, f"{SCRIPT}:173 --crop_pct None; {DATASETS}: crop_pct = 224 / 256 (resize 256, crop 224)"),
    "interpolation": _v("bicubic", f"{SCRIPT}:97 --train_interpolation bicubic; {DATASETS}: evaluation BICUBIC"),
    "normalize": _v("imagenet", f"{SCRIPT}:152 --imagenet_default_mean_and_std True"),
    "train_crop": _v("rrc", f"{DATASETS}: timm create_transform(is_training=True): RandomResizedCrop"),
    "hflip": _v(True, f"{DATASETS}: timm create_transform default hflip 0.5"),
    "auto_augment": _v("rand-m9-mstd0.5-inc1", f"{SCRIPT}:92 --aa rand-m9-mstd0.5-inc1"),
    "min_lr": _v(1e-6, f"{SCRIPT}:70 --min_lr 1e-6"),
    "grad_clip": _v(None, f"{SCRIPT}:61 --clip_grad None"),
    "ema_decay": _v(0.9999, f"{SCRIPT}:56 --model_ema_decay 0.9999 (EMA on: the command's --model_ema True)"),
    "head_init_scale": _v(0.001, f"{SCRIPT}:129 --head_init_scale 0.001"),
    "init_from": _v("timm:fcmae", f"{README}:37 --finetune an FCMAE checkpoint (here timm's .fcmae tag)"),
}

#: The per-size values of the published commands: 8 GPUs each (``--nproc_per_node=8``); batch = per-GPU batch x
#: ``--update_freq`` x 8.
IMAGENET_SIZES: dict[str, tuple[str, dict[str, tuple[Any, str]]]] = {
    "tiny": (
        f"{README}:17-39",
        {
            "model": _v("convnextv2_tiny", f"{README}:18 --model convnextv2_tiny"),
            "batch_size": _v(256 * 4 * 8, f"{README}:17,19,20 --nproc_per_node=8 --batch_size 256 --update_freq 4"),
            "update_freq": _v(4, f"{README}:20 --update_freq 4"),
            "base_lr": _v(8e-4, f"{README}:22 --blr 8e-4"),
            "epochs": _v(300, f"{README}:23 --epochs 300"),
            "warmup_epochs": _v(40.0, f"{README}:24 --warmup_epochs 40"),
            "layer_decay_type": _v("single", f"{README}:25 --layer_decay_type single"),
            "layer_decay": _v(0.9, f"{README}:26 --layer_decay 0.9"),
            "weight_decay": _v(0.05, f"{README}:27 --weight_decay 0.05"),
            "drop_path": _v(0.2, f"{README}:28 --drop_path 0.2"),
            "re_prob": _v(0.25, f"{README}:29 --reprob 0.25"),
            "mixup": _v(0.8, f"{README}:30 --mixup 0.8"),
            "cutmix": _v(1.0, f"{README}:31 --cutmix 1.0"),
            "label_smoothing": _v(0.1, f"{README}:32 --smoothing 0.1"),
            "ema_eval": _v(True, f"{README}:34 --model_ema_eval True"),
        },
    ),
    "atto": (
        f"{TRAINING}:120-138",
        {
            "model": _v("convnextv2_atto", f"{TRAINING}:121 --model convnextv2_atto"),
            "batch_size": _v(32 * 4 * 8, f"{TRAINING}:120,122 --nproc_per_node=8 --batch_size 32 --update_freq 4"),
            "update_freq": _v(4, f"{TRAINING}:122 --update_freq 4"),
            "base_lr": _v(2e-4, f"{TRAINING}:123 --blr 2e-4"),
            "epochs": _v(600, f"{TRAINING}:124 --epochs 600"),
            "warmup_epochs": _v(0.0, f"{TRAINING}:125 --warmup_epochs 0"),
            "layer_decay_type": _v("single", f"{TRAINING}:126 --layer_decay_type 'single'"),
            "layer_decay": _v(0.9, f"{TRAINING}:127 --layer_decay 0.9"),
            "weight_decay": _v(0.3, f"{TRAINING}:128 --weight_decay 0.3"),
            "drop_path": _v(0.1, f"{TRAINING}:129 --drop_path 0.1"),
            "re_prob": _v(0.25, f"{TRAINING}:130 --reprob 0.25"),
            "mixup": _v(0.0, f"{TRAINING}:131 --mixup 0."),
            "cutmix": _v(0.0, f"{TRAINING}:132 --cutmix 0."),
            "label_smoothing": _v(0.2, f"{TRAINING}:133 --smoothing 0.2"),
            "ema_eval": _v(True, f"{TRAINING}:134 --model_ema True --model_ema_eval True"),
        },
    ),
    "base": (
        f"{TRAINING}:69-87",
        {
            "model": _v("convnextv2_base", f"{TRAINING}:70 --model convnextv2_base"),
            "batch_size": _v(32 * 4 * 8, f"{TRAINING}:69,71 --nproc_per_node=8 --batch_size 32 --update_freq 4"),
            "update_freq": _v(4, f"{TRAINING}:71 --update_freq 4"),
            "base_lr": _v(6.25e-4, f"{TRAINING}:72 --blr 6.25e-4"),
            "epochs": _v(100, f"{TRAINING}:73 --epochs 100"),
            "warmup_epochs": _v(20.0, f"{TRAINING}:74 --warmup_epochs 20"),
            "layer_decay_type": _v("group", f"{TRAINING}:75 --layer_decay_type 'group'"),
            "layer_decay": _v(0.6, f"{TRAINING}:76 --layer_decay 0.6"),
            "weight_decay": _v(0.05, f"{TRAINING}:77 --weight_decay 0.05"),
            "drop_path": _v(0.1, f"{TRAINING}:78 --drop_path 0.1"),
            "re_prob": _v(0.25, f"{TRAINING}:79 --reprob 0.25"),
            "mixup": _v(0.8, f"{TRAINING}:80 --mixup 0.8"),
            "cutmix": _v(1.0, f"{TRAINING}:81 --cutmix 1.0"),
            "label_smoothing": _v(0.1, f"{TRAINING}:82 --smoothing 0.1"),
            "ema_eval": _v(True, f"{TRAINING}:83 --model_ema True --model_ema_eval True"),
        },
    ),
}

#: ConvNeXt-V2 sizes without a published fine-tuning command, and the size whose values they borrow (the nearest
#: listed one); any other model borrows the authors' (tiny).
BORROWED = {"femto": "atto", "pico": "atto", "nano": "atto", "large": "base", "huge": "base"}
DEFAULT_SIZE = "tiny"

RECIPES = ("cifar", "imagenet")


def model_size(model: str | None) -> str | None:
    """The ConvNeXt-V2 size word of a model name (``convnextv2_atto`` -> ``atto``), or None."""
    if not model:
        return None
    name = model.rpartition(":")[2].lower().partition(".")[0]
    words = name.split("_")
    if not words[0].startswith("convnextv2"):
        return None
    return next((w for w in words[1:] if w in IMAGENET_SIZES or w in BORROWED), None)


def recipe_for(name: str, model: str | None = None) -> Recipe:
    """Recipe ``name`` resolved for ``model`` (for ``imagenet``: the values of the model's size, or of the size it
    borrows from; with no model, the authors' ConvNeXt-V2-Tiny command)."""
    if not isinstance(name, str) or name not in RECIPES:
        raise MasterkeyError(f"recipe {name!r}: expected one of {', '.join(RECIPES)}")
    if name == "cifar":
        return Recipe(
            "cifar", {}, {"*": "the TrainConfig defaults: the CIFAR-10 ConvNeXts of shared/models (README.md)"}
        )
    size = model_size(model) if model else DEFAULT_SIZE
    borrowed = BORROWED.get(size) if size else DEFAULT_SIZE
    used = borrowed or size
    assert used is not None
    command, table = IMAGENET_SIZES[used]
    entries = {**IMAGENET_COMMON, **table}
    if model:  # the model is the caller's; the rest of the size's values go with it
        entries.pop("model")
    notes = []
    if borrowed:
        whose = f"the {borrowed} command ({command})"
        notes.append(f"{model or 'this model'} has no published fine-tuning command: it borrows the values of {whose}")
    return Recipe(
        "imagenet",
        {k: v for k, (v, _) in entries.items()},
        {k: s for k, (_, s) in entries.items()},
        size=size,
        command=command,
        borrowed_from=borrowed,
        notes=notes,
    )


def apply_recipe(name: str, values: dict[str, Any], source: str = "options") -> dict[str, Any]:
    """``values`` with every field they do not give taken from recipe ``name``. An explicit ``lr`` without
    ``base_lr`` turns the recipe's batch scaling off; explicit ``model_kwargs`` giving ``drop_path_rate`` replace
    the recipe's ``drop_path``; explicit ``weights`` replace the recipe's ``init_from`` (and its fresh head)."""
    if not isinstance(name, str) or name not in RECIPES:
        raise MasterkeyError(f"{source}: recipe {name!r}: expected one of {', '.join(RECIPES)}")
    preset = dict(recipe_for(name, values.get("model")).values)
    if "lr" in values and "base_lr" not in values:
        preset.pop("base_lr", None)
    if "drop_path_rate" in (values.get("model_kwargs") or {}):
        preset.pop("drop_path", None)
    if values.get("weights"):
        preset.pop("init_from", None)
        if not values.get("new_head"):
            preset.pop("head_init_scale", None)
    return {**preset, **values, "recipe": name}


def describe(name: str, values: dict[str, Any]) -> str:
    """One line: which command the recipe follows for this model, its values as resolved (the explicitly given
    ones marked ``(given)``)."""
    recipe = recipe_for(name, values.get("model"))
    parts = []
    for key, preset in recipe.values.items():
        value = values.get(key, preset)
        parts.append(f"{key}={value}{' (given)' if key in values and value != preset else ''}")
    if not parts:
        return f"recipe {name}: the TrainConfig defaults"
    whose = f"{recipe.size or values.get('model')} values of {recipe.command}"
    if recipe.borrowed_from:
        whose = f"{recipe.borrowed_from} values of {recipe.command} (borrowed: no command for this model)"
    return f"recipe {name}, {whose}: " + ", ".join(parts)
