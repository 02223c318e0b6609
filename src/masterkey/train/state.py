"""The state of a training run — model, optimiser, schedule, EMA, position, metrics so far — built fresh or
restored from a checkpoint; the optimiser and schedule; RNG states.

The position is ``(epoch, epoch_step)``: epochs completed and steps done in the next one. A checkpoint taken
mid-epoch (``--checkpoint-every``) also holds every rank's partial loss sums and RNG state, so the resumed epoch
continues bit for bit (on CPU) with the same number of processes.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from masterkey.errors import MasterkeyError
from masterkey.nn.convert import Conversion
from masterkey.reading import torch_load
from masterkey.train.config import TrainConfig
from masterkey.train.distributed import Distributed
from masterkey.train.optim import lr_factor, make_optimizer, make_scheduler

__all__ = ["CHECKPOINT", "TrainState", "build_state", "load_checkpoint", "lr_factor", "rng_state", "set_rng_state"]

log = logging.getLogger("masterkey")
CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = "masterkey-train-checkpoint/2"
READABLE_FORMATS = ("masterkey-train-checkpoint/1", CHECKPOINT_FORMAT)  # /1: epoch boundaries only


# ---------------------------------------------------------------------- RNG
def rng_state() -> dict[str, Any]:
    """Global RNG states (torch CPU / CUDA, numpy, Python), in a form ``torch.load(weights_only=True)`` reads."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`. CUDA states are restored only onto as many devices as were saved; otherwise the
    CUDA generators keep their current state and a warning says so (CUDA-side random draws then differ from an
    uninterrupted run's)."""
    torch.set_rng_state(state["torch"])
    saved = state.get("cuda") or []
    if saved:
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if len(saved) == available:
            torch.cuda.set_rng_state_all(saved)
        else:
            log.warning(
                f"warning: the checkpoint holds the CUDA random state of {len(saved)} device(s), this process sees "
                f"{available}: the CUDA RNG is not restored, so CUDA-side random draws (drop-path on the GPU) "
                "differ from those of an uninterrupted run"
            )
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


# ---------------------------------------------------------------------- checkpoints
def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A training checkpoint written by :func:`~masterkey.train.loop.train` (read with ``weights_only=True``)."""
    ckpt = torch_load(path, "training checkpoint")  # a regular file; torch's weights_only advice never shown
    if not isinstance(ckpt, dict) or ckpt.get("format") not in READABLE_FORMATS:
        raise MasterkeyError(f"{path}: not a masterkey training checkpoint (format {CHECKPOINT_FORMAT})")
    ckpt.setdefault("epoch_step", 0)
    return ckpt


@dataclass
class TrainState:
    """Everything that changes while training, and the position in the run."""

    model: nn.Module
    net: nn.Module  #: ``model`` wrapped for DDP / compile: what the batches go through
    converted: Conversion
    optimizer: torch.optim.Optimizer
    scheduler: Any
    ema: Any  #: timm ``ModelEmaV3`` or None
    amp_dtype: torch.dtype | None
    channels_last: bool
    epoch: int = 0  #: epochs completed
    epoch_step: int = 0  #: steps done in epoch ``epoch`` (0 at an epoch boundary)
    global_step: int = 0
    train_seconds: float = 0.0
    epoch_rows: list[dict[str, Any]] = field(default_factory=list)
    step_rows: list[dict[str, Any]] = field(default_factory=list)
    skipped_images: int = 0
    #: Mid-epoch only: this rank's loss sums, logging window, RNG state and seconds so far in the epoch.
    partial: dict[str, Any] | None = None

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


def build_state(
    config: TrainConfig,
    steps_per_epoch: int,
    info: Distributed,
    device: torch.device,
    ckpt: dict[str, Any] | None,
    build_model: Any,
) -> TrainState:
    """The model (seeded from ``(seed, 'init')``), optimiser, schedule and EMA of ``config``, restored from
    ``ckpt`` when given (this rank's share of a mid-epoch checkpoint included)."""
    from masterkey.data.augment import derive_seed

    torch.manual_seed(derive_seed(config.seed, "init"))
    model, converted = build_model(config)
    model.to(device)
    channels_last = config.channels_last if config.channels_last is not None else device.type == "cuda"
    if channels_last:
        model.to(memory_format=torch.channels_last)
    amp_dtype = torch.bfloat16 if config.amp == "bf16" or (config.amp == "auto" and device.type == "cuda") else None
    optimizer = make_optimizer(model, config, device)
    scheduler = make_scheduler(optimizer, config, steps_per_epoch)
    ema = None
    if config.ema_decay is not None:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=config.ema_decay)
    state = TrainState(model, model, converted, optimizer, scheduler, ema, amp_dtype, channels_last)
    if ckpt is not None:
        _restore(state, ckpt, info)
    if info.enabled:
        device_ids = [device.index] if device.type == "cuda" else None
        state.net = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if config.compile:
        state.net = torch.compile(state.net)
    return state


def _restore(state: TrainState, ckpt: dict[str, Any], info: Distributed) -> None:
    from masterkey.networks.models import describe_mismatch

    try:
        state.model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError:
        raise MasterkeyError(f"checkpoint: {describe_mismatch(ckpt['model'], state.model.state_dict())}") from None
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.scheduler.load_state_dict(ckpt["scheduler"])
    # The lr of the current step under this run's schedule (differs from the stored one when --epochs grew).
    for group, base, fn in zip(
        state.optimizer.param_groups, state.scheduler.base_lrs, state.scheduler.lr_lambdas, strict=True
    ):
        group["lr"] = base * fn(state.scheduler.last_epoch)
    if state.ema is not None and ckpt.get("ema") is not None:
        state.ema.load_state_dict(ckpt["ema"])
    set_rng_state(ckpt["rng"])
    state.epoch, state.epoch_step, state.global_step = int(ckpt["epoch"]), int(ckpt["epoch_step"]), int(ckpt["step"])
    state.train_seconds = float(ckpt.get("train_seconds", 0.0))
    state.epoch_rows, state.step_rows = list(ckpt["rows"]), list(ckpt["step_rows"])
    state.skipped_images = int(ckpt.get("skipped_images", 0))
    partial = ckpt.get("partial")
    if state.epoch_step and partial is not None:
        state.partial = _rank_share(partial, info)


def _rank_share(partial: dict[str, Any], info: Distributed) -> dict[str, Any]:
    """This rank's part of a mid-epoch checkpoint. With another number of processes the sums go to rank 0 and the
    RNG is reseeded (the epoch's batches stay the same; its drop-path draws do not)."""
    ranks = partial["ranks"]
    if len(ranks) == info.world_size:
        return dict(ranks[info.rank])
    if info.is_main:
        log.warning(
            f"resuming mid-epoch with {info.world_size} processes, checkpointed with {len(ranks)}: the batches are the "
            "same, but the rest of this epoch's random draws (drop-path) are not those of an uninterrupted run"
        )
    total = {k: sum(r[k] for r in ranks) for k in ("sums", "window", "wait", "seconds", "skipped")}
    if not info.is_main:
        total = {k: v * 0 for k, v in total.items()}
    return {**total, "rng": None}
