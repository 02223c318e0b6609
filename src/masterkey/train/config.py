"""The training configuration: one dataclass, resolved and saved in ``run.json`` and in every checkpoint.

Fields marked ``runtime`` (device, precision, progress bars ...) say *how* a run executes, not *what* it computes;
they may differ when a run is resumed. Every other field must match the checkpoint's, or resuming is refused.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from masterkey.errors import MasterkeyError, option
from masterkey.nn.modes import MODES, SIGMA_SCOPES

#: The peak learning rate when neither ``lr`` nor ``base_lr`` is given (the CIFAR-10 ConvNeXts of shared/models).
DEFAULT_LR = 3e-3
#: Layer-wise lr decay strategies of ConvNeXt-V2 (``optim_factory.py``); see :mod:`masterkey.train.optim`.
LAYER_DECAY_TYPES = ("single", "group")


def _runtime(default: Any) -> Any:
    return field(default=default, metadata={"runtime": True})


@dataclass
class TrainConfig:
    """Everything that defines a training run. Defaults follow the CIFAR-10 ConvNeXts in ``shared/models``
    (AdamW lr 3e-3, wd 0.05, batch 512, warm-up + cosine, label smoothing 0.1, pad-4 reflect crop + flip): the
    ``cifar`` recipe. ``recipe`` names a preset (:mod:`masterkey.train.recipes`) whose values fill every field
    not given explicitly."""

    recipe: str | None = None  # cifar | imagenet (see masterkey.train.recipes); explicit fields win
    # model
    model: str = "convnext_atto"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    drop_path: float | None = None  # stochastic depth rate (model keyword drop_path_rate); None: the model's default
    weights: str | None = None  # start from these weights (a local file) instead of random init
    new_head: bool = False  # with weights: a fresh classifier for the data's classes instead of the weights' one
    init_from: str | None = None  # pretrained encoder (FCMAE): a weights file, or timm:TAG (e.g. timm:fcmae, online)
    head_init_scale: float | None = None  # a fresh classifier: trunc-normal(0.02) x this scale, bias 0
    # depthwise filters
    mode: str = "trainable"  # a mode of masterkey.nn.modes.MODES: trainable | frozen | key-init | span | ...
    keys: str = "paper8"  # built-in key set name or key file (ignored for modes trainable and transfer-*)
    assignment: str = "auto"  # masterkey.nn.assign: auto = published proportions for paper8, else uniform
    learn_scale: bool = False  # frozen / scalespace modes: learn a per-channel scale a as well as the offset b
    key_gain: float = 1.0  # keys are unit-norm; their kernels are key_gain * key (+ offset)
    resize_keys: bool = False  # centre-crop / zero-pad keys whose kernel size differs from the model's
    sigma_scope: str = "key"  # scalespace mode: one (σx, σy, γ) per key of a layer, or per channel
    filters_from: str | None = None  # transfer modes: the trained model whose depthwise filters are copied
    # data
    data: str = ""  # folder holding train/ and test/ (or val/) ImageFolders or tar shards (or a timm data set root)
    dataset: str = ""  # timm data set name with a scheme (torch/cifar10, hfds/NAME); empty: folders / tar shards
    image_size: int | None = None  # square size the model sees (evaluation: resize image_size / crop_pct, crop)
    crop_pct: float = 1.0  # evaluation (and pad-crop training) images: resize to image_size / crop_pct, centre-crop
    interpolation: str = "bilinear"  # bilinear | bicubic | nearest (PIL resizing, train and test)
    max_train_images: int | None = None  # class-balanced subset (first files of each class)
    max_test_images: int | None = None
    normalize: str = "auto"  # auto | cifar10 | imagenet | dataset
    train_crop: str = "pad"  # pad: random crop with crop_padding reflect padding | rrc: RandomResizedCrop (timm)
    crop_padding: int = 4  # random crop with this much reflect padding (0: no crop)
    hflip: bool = True
    auto_augment: str | None = None  # timm policy, e.g. rand-m9-mstd0.5-inc1 (RandAugment); None: off
    re_prob: float = 0.0  # random erasing probability (timm RandomErasing, per-pixel noise)
    mixup: float = 0.0  # Beta(alpha, alpha) of mixup; 0 disables
    cutmix: float = 0.0  # Beta(alpha, alpha) of cutmix; 0 disables
    # optimisation
    epochs: int = 20
    batch_size: int = 512  # global batch (split over DDP ranks)
    lr: float | None = None  # peak lr; None: base_lr * batch_size / 256 when base_lr is set, else 3e-3
    base_lr: float | None = None  # when set, lr = base_lr * batch_size / 256 (the linear scaling rule)
    update_freq: int = 1  # each rank's share of a step in this many micro-batches (gradient accumulation)
    weight_decay: float = 0.05
    layer_decay: float | None = None  # layer-wise lr decay (ConvNeXt-V2 optim_factory.py); None: off
    layer_decay_type: str = "single"  # single: one lr per block | group: 12 groups of blocks (ConvNeXt-V2)
    warmup_epochs: float = 1.0
    min_lr: float = 0.0
    label_smoothing: float = 0.1
    grad_clip: float | None = None
    ema_decay: float | None = None  # e.g. 0.999; None disables EMA
    ema_eval: bool = True  # with EMA: evaluate the EMA weights after every epoch too (ema_test_* metrics)
    seed: int = 0
    eval_batch_size: int = 1024
    # runtime: how, not what
    device: str = _runtime("auto")  # auto | cpu | cuda | cuda:N
    amp: str = _runtime("auto")  # auto (bf16 on CUDA) | bf16 | none
    channels_last: bool | None = _runtime(None)  # None: on CUDA only
    compile: bool = _runtime(False)
    threads: int | None = _runtime(None)  # CPU threads of torch (None: torch's default)
    data_mode: str = _runtime("auto")  # auto | memory | stream (see masterkey.data.stream.choose_data_mode)
    memory_budget: str | None = _runtime(None)  # e.g. 16G; None: $MASTERKEY_MEMORY_BUDGET or half the free RAM
    workers: int | None = _runtime(None)  # DataLoader processes per rank when streaming (None: CPUs / ranks, <= 8)
    checkpoint_every: int | None = _runtime(None)  # also checkpoint every N steps (mid-epoch); None: each epoch
    log_every: int = _runtime(10)  # steps between per-step metric rows
    tensorboard: bool = _runtime(False)
    progress: bool | None = _runtime(None)  # None: bars when stderr is a terminal

    @property
    def worker_augment(self) -> bool:
        """Whether images are augmented one by one in DataLoader workers (timm transforms), which only the
        streamed path serves; otherwise crops and flips are drawn per batch on the device."""
        return self.train_crop == "rrc" or bool(self.auto_augment) or self.re_prob > 0

    def key_assignment(self) -> str:
        """The assignment rule this config trains with: ``auto`` decided for its keys (the published ConvNeXtV2-B
        proportions for the paper's own keys, else ``uniform``: :func:`masterkey.nn.assign.resolve_assignment`);
        any other rule as it is. Runs record the decided rule."""
        if not MODES[self.mode].uses_keys:
            return self.assignment
        from masterkey.nn.assign import resolve_assignment

        return resolve_assignment(self.assignment, self.keys)

    # ------------------------------------------------------------------ conversion
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def runtime_fields(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls) if f.metadata.get("runtime")}

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        """A config from a mapping (an experiment file, a checkpoint, command-line options); unknown names are
        refused. A ``recipe`` fills every field the mapping does not give (:func:`~masterkey.train.recipes.apply`)."""
        from masterkey.train.recipes import apply_recipe

        known = cls.field_names()
        unknown = [k for k in values if k not in known]
        if unknown:
            raise MasterkeyError(
                f"{source}: unknown option(s) {', '.join(map(repr, unknown))} (known: {', '.join(known)})"
            )
        if values.get("recipe"):
            values = apply_recipe(values["recipe"], values, source)
        return cls(**values).validated(source)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        """A validated copy with ``changes``; a new ``batch_size`` or ``base_lr`` rescales an ``lr`` that came from
        ``base_lr`` (unless ``lr`` is among the changes)."""
        if self.base_lr is not None and "lr" not in changes and {"batch_size", "base_lr"} & changes.keys():
            changes["lr"] = None
        return dataclasses.replace(self, **changes).validated()

    # ------------------------------------------------------------------ checks
    def validated(self, source: str = "config") -> TrainConfig:
        """Check every field; raise :class:`MasterkeyError` naming the first bad one. Returns ``self``."""

        def bad(name: str, expected: str) -> MasterkeyError:
            return MasterkeyError(f"{source}: {name}={getattr(self, name)!r}: expected {expected}")

        self._check_model(bad, source)
        self._check_optimisation(bad, source)
        self._check_data(bad, source)
        return self

    def _check_model(self, bad: Callable[[str, str], MasterkeyError], source: str) -> None:
        """Model, depthwise-filter and runtime fields."""
        if self.mode not in MODES:
            raise bad("mode", " | ".join(MODES))
        if self.sigma_scope not in SIGMA_SCOPES:
            raise bad("sigma_scope", " | ".join(SIGMA_SCOPES))
        copying = [m.name for m in MODES.values() if m.copies_filters]
        if MODES[self.mode].copies_filters and not self.filters_from:
            raise MasterkeyError(
                f"{source}: mode {self.mode} copies the depthwise filters of a trained model: give it with "
                f"{option('filters_from', 'WEIGHTS')}"
            )
        if self.filters_from and not MODES[self.mode].copies_filters:
            raise bad("filters_from", f"none unless mode is {' or '.join(copying)}")
        if self.new_head and not self.weights:
            raise bad("new_head", "false unless weights are given (it replaces their classifier)")
        if self.init_from is not None and (not isinstance(self.init_from, str) or not self.init_from):
            raise bad("init_from", "a weights file or timm:TAG, or none")
        if self.init_from and self.weights:
            raise bad("init_from", "none when weights are given (one starting point)")
        if self.head_init_scale is not None:
            if not isinstance(self.head_init_scale, (int, float)) or not 0 < self.head_init_scale <= 1e3:
                raise bad("head_init_scale", "a positive scale or none")
            if self.weights and not self.new_head:
                raise bad("head_init_scale", "none when the classifier comes from weights (add new_head)")
        if not isinstance(self.model, str) or not self.model:
            raise bad("model", "a timm or torchvision model name")
        if not isinstance(self.model_kwargs, dict):
            raise bad("model_kwargs", "a mapping of keyword arguments")
        for name, high in (
            ("epochs", 100_000),
            ("batch_size", 65_536),
            ("eval_batch_size", 65_536),
            ("log_every", 10**8),
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= high:
                raise bad(name, f"an integer from 1 to {high:,}")
        for name, high in (
            ("max_train_images", 10**8),
            ("max_test_images", 10**8),
            ("image_size", 1024),
            ("threads", 1024),
        ):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or not 1 <= value <= high):
                raise bad(name, f"an integer from 1 to {high:,}, or none")
        if self.amp not in ("auto", "bf16", "none"):
            raise bad("amp", "auto | bf16 | none")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise bad("device", "auto | cpu | cuda | cuda:N")
        if not math.isfinite(self.key_gain) or self.key_gain == 0:
            raise bad("key_gain", "a finite non-zero number")
        if self.drop_path is not None and not (isinstance(self.drop_path, (int, float)) and 0 <= self.drop_path < 1):
            raise bad("drop_path", "a rate in [0, 1) or none")
        if self.drop_path is not None and "drop_path_rate" in self.model_kwargs:
            raise bad("drop_path", "unset when model_kwargs gives drop_path_rate (one or the other)")

    def _check_optimisation(self, bad: Callable[[str, str], MasterkeyError], source: str) -> None:
        """Seed, learning rates, regularisation. Resolves ``lr``: from ``base_lr`` when set (an ``lr`` that differs
        from it is refused as a conflict, never silently replaced), else :data:`DEFAULT_LR` when not given."""
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**32:
            raise bad("seed", "an integer from 0 to 4,294,967,295")
        for name in ("weight_decay", "warmup_epochs", "min_lr", "label_smoothing", "mixup", "cutmix"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise bad(name, "a finite number >= 0")
        if self.lr is not None and (not isinstance(self.lr, (int, float)) or not math.isfinite(self.lr) or self.lr < 0):
            raise bad("lr", "a finite number >= 0")
        if self.base_lr is not None:
            if not isinstance(self.base_lr, (int, float)) or not math.isfinite(self.base_lr) or self.base_lr <= 0:
                raise bad("base_lr", "a positive learning rate per 256 images, or none")
            scaled = self.base_lr * self.batch_size / 256
            if self.lr is not None and self.lr != scaled:
                raise MasterkeyError(
                    f"{source}: {option('lr', self.lr)} and {option('base_lr', self.base_lr)} conflict (base_lr "
                    f"gives lr = {self.base_lr:g} x {self.batch_size} / 256 = {scaled:g}): give one of them"
                )
            self.lr = scaled
        elif self.lr is None:
            self.lr = DEFAULT_LR
        if self.lr <= 0:
            raise bad("lr", "a positive learning rate")
        if self.min_lr > self.lr:
            raise bad("min_lr", f"at most lr ({self.lr})")
        if self.label_smoothing >= 1:
            raise bad("label_smoothing", "a number in [0, 1)")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise bad("grad_clip", "a positive number or none")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise bad("ema_decay", "a number in (0, 1) or none")
        if self.layer_decay is not None and not (
            isinstance(self.layer_decay, (int, float)) and 0 < self.layer_decay <= 1
        ):
            raise bad("layer_decay", "a factor in (0, 1] or none")
        if self.layer_decay_type not in LAYER_DECAY_TYPES:
            raise bad("layer_decay_type", " | ".join(LAYER_DECAY_TYPES))
        if not isinstance(self.update_freq, int) or isinstance(self.update_freq, bool) or self.update_freq < 1:
            raise bad("update_freq", "a positive number of micro-batches per step")

    def _check_data(self, bad: Callable[[str, str], MasterkeyError], source: str) -> None:
        """Data, augmentation and data-path fields."""
        if not isinstance(self.crop_padding, int) or not 0 <= self.crop_padding <= 256:
            raise bad("crop_padding", "an integer from 0 to 256")
        if self.normalize not in ("auto", "cifar10", "imagenet", "dataset"):
            raise bad("normalize", "auto | cifar10 | imagenet | dataset")
        if self.train_crop not in ("pad", "rrc"):
            raise bad("train_crop", "pad | rrc")
        if self.train_crop == "rrc" and self.image_size is None:
            raise bad("image_size", f"a size for RandomResizedCrop (train_crop rrc needs {option('image_size', 'N')})")
        if not isinstance(self.crop_pct, (int, float)) or not 0 < self.crop_pct <= 1:
            raise bad("crop_pct", "a number in (0, 1]")
        if self.crop_pct != 1 and self.image_size is None:
            raise bad("crop_pct", f"1 unless {option('image_size', 'N')} is given (crop_pct scales the resize to N)")
        if self.interpolation not in ("bilinear", "bicubic", "nearest"):
            raise bad("interpolation", "bilinear | bicubic | nearest")
        if not isinstance(self.re_prob, (int, float)) or not 0 <= self.re_prob <= 1:
            raise bad("re_prob", "a probability in [0, 1]")
        if self.auto_augment is not None and not (isinstance(self.auto_augment, str) and self.auto_augment):
            raise bad("auto_augment", "a timm policy name such as rand-m9-mstd0.5-inc1, or none")
        if self.auto_augment:
            from masterkey.data.augment import check_auto_augment

            check_auto_augment(self.auto_augment)
        if self.data_mode not in ("auto", "memory", "stream"):
            raise bad("data_mode", "auto | memory | stream")
        from masterkey.data.decode import MAX_WORKERS

        value = self.workers
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value > MAX_WORKERS):
            raise bad("workers", f"an integer from 0 to {MAX_WORKERS}, or none")
        if value is not None and value < 0:
            raise bad("workers", f"an integer from 0 to {MAX_WORKERS}, or none")
        if self.checkpoint_every is not None and (
            not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 1
        ):
            raise bad("checkpoint_every", "a positive number of steps or none")
        if self.memory_budget is not None:
            from masterkey.data.stream import parse_size

            parse_size(self.memory_budget)
        if self.dataset and not isinstance(self.dataset, str):
            raise bad("dataset", "a timm data set name such as torch/cifar10")
        if not self.data:
            raise MasterkeyError(
                f"{source}: no data folder given ({option('data', 'DATA')}, holding DATA/train and DATA/test)"
            )


def config_differences(saved: dict[str, Any], current: TrainConfig, ignore: tuple[str, ...] = ()) -> list[str]:
    """``"name: saved -> current"`` for every non-runtime field that differs, except ``ignore``. A field the saved
    config lacks was added later, when its default kept the old behaviour: it counts as its default."""
    runtime = TrainConfig.runtime_fields()
    defaults = field_defaults()
    now = current.to_dict()
    out = []
    for name, value in now.items():
        if name in runtime or name in ignore:
            continue
        old = saved.get(name, defaults[name])
        if normal_form(old) != normal_form(value):
            out.append(f"{name}: {old!r} (checkpoint) vs {value!r} (now)")
    return out


def field_defaults() -> dict[str, Any]:
    """The default value of every :class:`TrainConfig` field."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(TrainConfig):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def normal_form(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [normal_form(v) for v in value]
    if isinstance(value, dict):
        return {k: normal_form(v) for k, v in sorted(value.items())}
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
