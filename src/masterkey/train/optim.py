"""The optimiser and the learning-rate schedule: AdamW (no weight decay on 1-D parameters), optionally with
layer-wise lr decay as ConvNeXt-V2 defines it; linear warm-up then cosine per step; the loss.

Layer-wise lr decay (facebookresearch/ConvNeXt-V2 ``optim_factory.py``, ``get_num_layer_for_convnext_single`` /
``get_num_layer_for_convnext`` and ``main_finetune.py``): every parameter gets a layer id, and its lr is scaled by
``decay ** (L + 1 - id)``. ``single``: ``L`` is the number of blocks; the stem and stage ``s``'s downsampling
layer take the id ``1 + blocks before stage s``, block ``j`` of stage ``s`` ``1 + blocks before s + j``, the
rest (final norm, classifier) ``L + 1`` (scale 1). ``group`` (ConvNeXt-V2 Base / Large): ``L = 12``; stem 0,
downsampling 2, 3, 12 for stages 1, 2, 3; blocks of stages 0 / 1 ids 1 / 2, of stage 2 ``3 + j // 3``, of stage 3
12; the rest 13. Parameters are named the timm way (``stem``, ``stages.s.downsample``, ``stages.s.blocks.j``);
the official ``downsample_layers.s`` / ``stages.s.j`` are the same layers.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from masterkey.errors import MasterkeyError, option
from masterkey.train.config import TrainConfig


def make_optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW; 1-D parameters (norms, biases, key offsets and scales) get no weight decay
    (:func:`masterkey.nn.optim.param_groups`, timm's grouping); with ``config.layer_decay`` every group's lr is
    scaled by its layer's factor (``lr_scale`` in each group)."""
    if config.layer_decay is None:
        from masterkey.nn.optim import param_groups

        groups = param_groups(model, config.weight_decay)
    else:
        groups = layer_decay_groups(model, config.weight_decay, config.layer_decay, config.layer_decay_type)
        for group in groups:
            group["lr"] = config.lr * group["lr_scale"]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.999), fused=device.type == "cuda")


def convnext_depths(model: nn.Module) -> list[int]:
    """Blocks per stage of a timm ConvNeXt-style network (``model.stages[s].blocks``)."""
    stages = getattr(model, "stages", None)
    if not isinstance(stages, nn.Sequential) or not all(hasattr(s, "blocks") for s in stages):
        raise MasterkeyError(
            f"{option('layer_decay')}: defined for ConvNeXt-style networks (stem, stages.S.blocks.J); "
            f"{type(model).__name__} has no such stages"
        )
    return [len(s.blocks) for s in stages]


def layer_id(name: str, depths: list[int], kind: str = "single") -> int:
    """The ConvNeXt-V2 layer id of parameter ``name`` (timm naming); see the module docstring."""
    parts = name.split(".")
    stage: int | None = None
    block: int | None = None
    if parts[0] == "stem":
        stage = 0
    elif parts[0] == "stages" and len(parts) > 3 and parts[2] in ("downsample", "blocks"):
        stage = int(parts[1])
        block = int(parts[3]) if parts[2] == "blocks" else None
    if kind == "single":
        if stage is None:
            return sum(depths) + 1
        return sum(depths[:stage]) + 1 + (block or 0)
    if stage is None:
        return 13
    if block is None:
        return {0: 0, 1: 2, 2: 3}.get(stage, 12)
    if stage < 2:
        return stage + 1
    return 3 + block // 3 if stage == 2 else 12


def layer_scales(depths: list[int], decay: float, kind: str = "single") -> list[float]:
    """The lr factor of each layer id: ``decay ** (L + 1 - id)`` for ids ``0 ... L + 1``."""
    n = sum(depths) if kind == "single" else 12
    return [decay ** (n + 1 - i) for i in range(n + 2)]


def layer_decay_groups(model: nn.Module, weight_decay: float, decay: float, kind: str) -> list[dict[str, Any]]:
    """Parameter groups per (layer id, decay or not), in the order parameters are first met; frozen parameters are
    left out. No weight decay on 1-D parameters, biases, the model's ``no_weight_decay()`` names and names ending
    in ``.gamma`` / ``.beta`` (ConvNeXt-V2 ``get_parameter_groups``)."""
    depths = convnext_depths(model)
    scales = layer_scales(depths, decay, kind)
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim <= 1 or name.endswith((".bias", ".gamma", ".beta")) or name in skip
        layer = layer_id(name, depths, kind)
        group = groups.setdefault(
            (layer, no_decay),
            {"params": [], "weight_decay": 0.0 if no_decay else weight_decay, "lr_scale": scales[layer]},
        )
        group["params"].append(param)
    return list(groups.values())


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Multiplier of the base lr at ``step``: linear warm-up to 1 over ``warmup_steps``, then cosine to
    ``min_ratio`` at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def schedule_steps(config: TrainConfig, steps_per_epoch: int) -> tuple[int, int]:
    """``(warm-up steps, total steps)`` of the run's schedule."""
    total = config.epochs * steps_per_epoch
    return min(total, round(config.warmup_epochs * steps_per_epoch)), total


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int) -> Any:
    """Per-step warm-up + cosine schedule over ``config.epochs`` (a ``LambdaLR``; its state is the step count).
    Each group follows it from its own starting lr (scaled by layer-wise decay), down to ``min_lr`` times the
    same scale."""
    warmup, total = schedule_steps(config, steps_per_epoch)
    ratio = config.min_lr / config.lr
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup, total, ratio))


def peak_lr(optimizer: torch.optim.Optimizer) -> float:
    """The largest lr of the optimiser's groups (with layer-wise decay: the classifier's; else every group's)."""
    return max(group["lr"] for group in optimizer.param_groups)


def loss_fn(logits: Tensor, targets: Tensor, label_smoothing: float) -> Tensor:
    """Cross-entropy on hard labels (with smoothing) or on soft targets (already smoothed and mixed)."""
    if targets.ndim == 2:
        return F.cross_entropy(logits.float(), targets)
    return F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)
