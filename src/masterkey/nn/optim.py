"""Optimiser parameter groups for networks with keys."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn


def param_groups(model: nn.Module, weight_decay: float, no_decay: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Parameter groups for ``torch.optim.AdamW(param_groups(model, wd), lr=...)`` (or any optimiser):
    weight decay only for the weights of convs and linear layers.

    Kept out of decay: every parameter of one dimension — the key layers' offsets ``b`` and scales ``a``, the
    scale-space layers' log σ and γ (decay would pull σ to 1 and the offsets to 0), biases, norm layers — every
    name ending in ``.bias`` and every name in ``no_decay`` (e.g. a model's ``no_weight_decay()``). The span
    mode's mixing weights ``alpha`` [C, K] take decay, as the conv weights they stand for would. Frozen parameters
    (``requires_grad`` off) and the frozen keys (buffers) are in no group. The groups and their order are timm's
    ``param_groups_weight_decay``: ``[{no decay}, {decay}]``, empty groups left out, all in one group without decay.
    """
    skip = set(no_decay)
    decay, undecayed = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if not weight_decay or param.ndim <= 1 or name.endswith(".bias") or name in skip:
            undecayed.append(param)
        else:
            decay.append(param)
    groups = []
    if undecayed:
        groups.append({"params": undecayed, "weight_decay": 0.0})
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    return groups
