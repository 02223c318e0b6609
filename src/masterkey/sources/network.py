"""Depthwise filters from a network object (timm / torchvision model by name, or any ``nn.Module``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from masterkey.depthwise import find_depthwise
from masterkey.errors import MasterkeyError
from masterkey.files import sha256_file
from masterkey.networks.models import create_model, resolve_model_name
from masterkey.sources.base import HarvestedLayer, HarvestedSource, accept_layer


def harvest_module(module: nn.Module, name: str, kind: str = "module") -> HarvestedSource:
    """Every depthwise ``nn.Conv2d`` of ``module`` (channel multipliers, strides and dilations recorded)."""
    from masterkey.networks.surgery import depthwise_layers

    # The stage swap infers for the same network (from the names, else from the strides), so tables join on it.
    positions = {p.name: p for p in depthwise_layers(module)}
    layers: list[HarvestedLayer] = []
    skipped: list[dict[str, str]] = []
    for dw in find_depthwise(module, spatial_only=False):
        weight = dw.conv.weight
        if not accept_layer(dw.name, tuple(weight.shape), skipped):
            continue
        layers.append(
            HarvestedLayer(
                name=dw.name,
                weight=weight.detach().to(torch.float32).cpu().clone(),
                stride=max(dw.conv.stride),
                dilation=max(dw.conv.dilation),
                multiplier=dw.multiplier,
                stage=positions[dw.name].stage if dw.name in positions else None,
                block=positions[dw.name].block if dw.name in positions else None,
            )
        )
    return HarvestedSource(name=name, kind=kind, layers=layers, skipped=skipped)


def harvest_model(
    model_name: str,
    weights: str | Path | None = None,
    name: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    pretrained: bool = False,
) -> HarvestedSource:
    """Depthwise filters of a timm / torchvision model created by name, with local or hub weights."""
    lib, arch = resolve_model_name(model_name)
    model = create_model(model_name, weights=weights, pretrained=pretrained, **(model_kwargs or {}))
    default_name = Path(weights).stem if weights is not None else arch
    source = harvest_module(model, name or default_name, kind=lib)
    if not source.layers:
        raise MasterkeyError(f"model '{model_name}': has no depthwise convolution with a k x k kernel, k > 1")
    source.model = arch
    if weights is not None:
        source.path = str(weights)
        source.sha256 = sha256_file(weights)
    return source
