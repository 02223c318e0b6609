"""What a network with keys holds and what its key layers learned: key counts, parameter counts, per-epoch
statistics of span and scale-space layers, and a per-layer summary."""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor, nn

from masterkey.depthwise import find_depthwise
from masterkey.nn.layers import KeyKernel, SpanKernel, key_layers, unwrap
from masterkey.nn.scalespace import ScaleSpaceKernel


def key_counts(model: nn.Module, n_keys: int | None = None) -> list[int]:
    """How many channels hold each key, over all key layers (empty when there are none)."""
    indices = [k.key_index.cpu() for _, k in key_layers(model)]
    if not indices:
        return []
    index = torch.cat(indices)
    index = index[index >= 0]
    return torch.bincount(index, minlength=n_keys or 0).tolist()


def parameter_counts(model: nn.Module) -> dict[str, int | float]:
    """Trainable parameters, all parameters, frozen key values (buffers), and the depthwise kernels' share:
    ``depthwise_trainable`` (trainable parameters that shape depthwise kernels — conv weights, offsets, scales,
    mixing weights, σ, γ — not the conv's output bias), ``depthwise_channels`` and their ratio
    ``depthwise_trainable_per_channel``."""
    model = unwrap(model)
    layers = key_layers(model)
    kernel = sum(k.kernel_parameters() for _, k in layers)
    channels = sum(k.channels for _, k in layers)
    keyed = {name for name, _ in layers}
    for dw in find_depthwise(model):
        if dw.name in keyed:
            continue
        kernel += dw.conv.weight.numel() if dw.conv.weight.requires_grad else 0
        channels += dw.conv.out_channels
    return {
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total": sum(p.numel() for p in model.parameters()),
        "frozen_key_values": sum(k.key.numel() for _, k in layers if isinstance(k, KeyKernel)),
        "depthwise_trainable": kernel,
        "depthwise_channels": channels,
        "depthwise_trainable_per_channel": kernel / channels if channels else 0.0,
    }


def _scalespace_rows(layer: ScaleSpaceKernel) -> tuple[Tensor, Tensor]:
    """Key of each parameter row, and whether a channel uses the row (key scope: keys nobody holds are idle)."""
    if layer.scope == "channel":
        return layer.key_index.cpu(), torch.ones(layer.channels, dtype=torch.bool)
    n = len(layer.families)
    used = torch.bincount(layer.key_index.cpu().clamp_min(0), minlength=n) > 0
    return torch.arange(n), used


@torch.no_grad()
def depthwise_epoch_stats(model: nn.Module) -> dict[str, float]:
    """Scalars for a training log row (empty for models without span / scale-space layers).

    Scale-space layers: ``dw_sigma_x_kJ``, ``dw_sigma_y_kJ`` (and ``dw_gamma_kJ`` for centre-surround keys): the
    mean over every parameter row of key J in use (one per layer with scope ``key``, one per channel with scope
    ``channel``). Span layers: ``dw_alpha_kJ``, the mean |alpha| of key J over all channels, and ``dw_alpha_own``,
    the mean share of a channel's total |alpha| on the key it started from (1 for one-hot).
    """
    sums: dict[str, list[float]] = {}

    def add(name: str, values: Tensor) -> None:
        total = sums.setdefault(name, [0.0, 0.0])
        total[0] += float(values.double().sum())
        total[1] += values.numel()

    for _, layer in key_layers(model):
        if isinstance(layer, ScaleSpaceKernel):
            keys, used = _scalespace_rows(layer)
            sigma = layer.sigma.cpu()
            gamma = layer.row_gamma().cpu()
            for j in keys[used].unique().tolist():
                rows = used & (keys == j)
                add(f"dw_sigma_x_k{j + 1}", sigma[rows, 0])
                add(f"dw_sigma_y_k{j + 1}", sigma[rows, 1])
                if not bool(gamma[rows].isnan().all()):
                    add(f"dw_gamma_k{j + 1}", gamma[rows])
        elif isinstance(layer, SpanKernel):
            magnitude = layer.alpha.abs().cpu()
            for j in range(magnitude.shape[1]):
                add(f"dw_alpha_k{j + 1}", magnitude[:, j])
            own = layer.key_index.cpu()
            if bool((own >= 0).all()):
                share = magnitude[torch.arange(len(own)), own] / magnitude.sum(dim=1).clamp_min(1e-12)
                add("dw_alpha_own", share)
    return {name: total / count for name, (total, count) in sorted(sums.items(), key=lambda kv: _stat_order(kv[0]))}


def _stat_order(name: str) -> tuple[str, int]:
    found = re.fullmatch(r"(.*_k)(\d+)", name)
    return (found.group(1), int(found.group(2))) if found else (name, 0)


@torch.no_grad()
def depthwise_summary(model: nn.Module) -> list[dict[str, Any]]:
    """Per span / scale-space layer, what it learned: span: ``mean_abs_alpha`` per key (which keys the layer
    uses); scale-space: per key in use, the mean ``sigma_x``, ``sigma_y`` (and ``gamma``) over its rows (one row
    with scope ``key``). Empty for other models."""
    out: list[dict[str, Any]] = []
    for name, layer in key_layers(model):
        entry: dict[str, Any] = {"layer": name, "channels": layer.channels, "kernel_size": layer.kernel_size[0]}
        if isinstance(layer, SpanKernel):
            entry["mean_abs_alpha"] = layer.alpha.abs().mean(dim=0).cpu().tolist()
        elif isinstance(layer, ScaleSpaceKernel):
            keys, used = _scalespace_rows(layer)
            sigma = layer.sigma.cpu().double()
            n_keys = int(keys.max()) + 1 if len(keys) else 0
            entry.update({"scope": layer.scope, "sigma_x": [None] * n_keys, "sigma_y": [None] * n_keys})
            entry["gamma"] = [None] * n_keys
            gamma = layer.row_gamma().cpu().double()
            for j in keys[used].unique().tolist():
                rows = used & (keys == j)
                entry["sigma_x"][j] = float(sigma[rows, 0].mean())
                entry["sigma_y"][j] = float(sigma[rows, 1].mean())
                if not bool(gamma[rows].isnan().all()):
                    entry["gamma"][j] = float(gamma[rows].mean())
        else:
            continue
        out.append(entry)
    return out
