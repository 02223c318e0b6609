"""The training configuration: one dataclass, resolved and saved in ``run.json`` and in every checkpoint.

Fields marked ``runtime`` (device, precision, progress bars ...) say *how* a run executes, not *what* it computes;
they may differ when a run is resumed. Every other field must match the checkpoint's, or resuming is refused.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from masterkey.errors import MasterkeyError
from masterkey.networks.keyconv import MODES, SIGMA_SCOPES, TRANSFER_MODES


def _runtime(default: Any) -> Any:
    return field(default=default, metadata={"runtime": True})


@dataclass
class TrainConfig:
    """Everything that defines a training run. Defaults follow the CIFAR-10 ConvNeXts in ``shared/models``
    (AdamW lr 3e-3, wd 0.05, batch 512, warm-up + cosine, label smoothing 0.1, pad-4 reflect crop + flip)."""

    # model
    model: str = "convnext_atto"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None  # start from these weights (a local file) instead of random init
    new_head: bool = False  # with weights: a fresh classifier for the data's classes instead of the weights' one
    # depthwise filters
    mode: str = "trainable"  # trainable | frozen | key-init | span | scalespace | transfer-frozen | transfer-init
    keys: str = "paper8"  # built-in key set name or key file (ignored for modes trainable and transfer-*)
    assignment: str = "convnextv2-b"  # see masterkey.networks.keyconv.make_assigner
    learn_scale: bool = False  # frozen / scalespace modes: learn a per-channel scale a as well as the offset b
    key_gain: float = 1.0  # keys are unit-norm; their kernels are key_gain * key (+ offset)
    resize_keys: bool = False  # centre-crop / zero-pad keys whose kernel size differs from the model's
    sigma_scope: str = "key"  # scalespace mode: one (σx, σy, γ) per key of a layer, or per channel
    filters_from: str | None = None  # transfer modes: the trained model whose depthwise filters are copied
    # data
    data: str = ""  # folder holding train/ and test/ (or val/) ImageFolders
    image_size: int | None = None  # resize shorter side + centre crop to this before caching
    max_train_images: int | None = None  # class-balanced subset (first files of each class)
    max_test_images: int | None = None
    normalize: str = "auto"  # auto | cifar10 | imagenet | dataset
    crop_padding: int = 4  # random crop with this much reflect padding (0: no crop)
    hflip: bool = True
    mixup: float = 0.0  # Beta(alpha, alpha) of mixup; 0 disables
    cutmix: float = 0.0  # Beta(alpha, alpha) of cutmix; 0 disables
    # optimisation
    epochs: int = 20
    batch_size: int = 512  # global batch (split over DDP ranks)
    lr: float = 3e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    min_lr: float = 0.0
    label_smoothing: float = 0.1
    grad_clip: float | None = None
    ema_decay: float | None = None  # e.g. 0.999; None disables EMA
    seed: int = 0
    eval_batch_size: int = 1024
    # runtime: how, not what
    device: str = _runtime("auto")  # auto | cpu | cuda | cuda:N
    amp: str = _runtime("auto")  # auto (bf16 on CUDA) | bf16 | none
    channels_last: bool | None = _runtime(None)  # None: on CUDA only
    compile: bool = _runtime(False)
    threads: int | None = _runtime(None)  # CPU threads of torch (None: torch's default)
    log_every: int = _runtime(10)  # steps between per-step metric rows
    tensorboard: bool = _runtime(False)
    progress: bool | None = _runtime(None)  # None: bars when stderr is a terminal

    # ------------------------------------------------------------------ conversion
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def runtime_fields(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls) if f.metadata.get("runtime")}

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        """A config from a mapping (an experiment file, a checkpoint); unknown names are refused."""
        known = cls.field_names()
        unknown = [k for k in values if k not in known]
        if unknown:
            raise MasterkeyError(
                f"{source}: unknown option(s) {', '.join(map(repr, unknown))} (known: {', '.join(known)})"
            )
        return cls(**values).validated(source)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes).validated()

    # ------------------------------------------------------------------ checks
    def validated(self, source: str = "config") -> TrainConfig:
        """Check every field; raise :class:`MasterkeyError` naming the first bad one. Returns ``self``."""

        def bad(name: str, expected: str) -> MasterkeyError:
            return MasterkeyError(f"{source}: {name}={getattr(self, name)!r}: expected {expected}")

        if self.mode not in MODES:
            raise bad("mode", " | ".join(MODES))
        if self.sigma_scope not in SIGMA_SCOPES:
            raise bad("sigma_scope", " | ".join(SIGMA_SCOPES))
        if self.mode in TRANSFER_MODES and not self.filters_from:
            raise MasterkeyError(
                f"{source}: mode {self.mode} copies the depthwise filters of a trained model: give it with "
                "--filters-from WEIGHTS (filters_from)"
            )
        if self.filters_from and self.mode not in TRANSFER_MODES:
            raise bad("filters_from", f"none unless mode is {' or '.join(TRANSFER_MODES)}")
        if self.new_head and not self.weights:
            raise bad("new_head", "false unless weights are given (it replaces their classifier)")
        if not isinstance(self.model, str) or not self.model:
            raise bad("model", "a timm or torchvision model name")
        if not isinstance(self.model_kwargs, dict):
            raise bad("model_kwargs", "a mapping of keyword arguments")
        for name in ("epochs", "batch_size", "eval_batch_size", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise bad(name, "a positive integer")
        for name in ("max_train_images", "max_test_images", "image_size", "threads"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise bad(name, "a positive integer or none")
        for name in ("lr", "weight_decay", "warmup_epochs", "min_lr", "label_smoothing", "mixup", "cutmix"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise bad(name, "a finite number >= 0")
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
        if not isinstance(self.crop_padding, int) or self.crop_padding < 0:
            raise bad("crop_padding", "an integer >= 0")
        if self.normalize not in ("auto", "cifar10", "imagenet", "dataset"):
            raise bad("normalize", "auto | cifar10 | imagenet | dataset")
        if self.amp not in ("auto", "bf16", "none"):
            raise bad("amp", "auto | bf16 | none")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise bad("device", "auto | cpu | cuda | cuda:N")
        if not math.isfinite(self.key_gain) or self.key_gain == 0:
            raise bad("key_gain", "a finite non-zero number")
        if not self.data:
            raise MasterkeyError(f"{source}: no data folder given (--data DATA, holding DATA/train and DATA/test)")
        return self


def config_differences(saved: dict[str, Any], current: TrainConfig) -> list[str]:
    """``"name: saved -> current"`` for every non-runtime field that differs. A field the saved config lacks was
    added later, when its default kept the old behaviour: it counts as its default."""
    runtime = TrainConfig.runtime_fields()
    defaults = field_defaults()
    now = current.to_dict()
    out = []
    for name, value in now.items():
        if name in runtime:
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
