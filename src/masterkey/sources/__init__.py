"""Readers that yield the depthwise filters of a network: timm / torchvision models, raw state_dicts, ONNX.

Every reader returns a :class:`HarvestedSource`; :func:`harvest` picks the reader from what it is given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from masterkey.errors import MasterkeyError
from masterkey.sources.base import HarvestedLayer, HarvestedSource, accept_layer
from masterkey.sources.network import harvest_model, harvest_module
from masterkey.sources.onnx_graph import harvest_onnx
from masterkey.sources.state_dict import harvest_state_dict, harvest_state_dict_file

__all__ = [
    "HarvestedLayer",
    "HarvestedSource",
    "accept_layer",
    "harvest",
    "harvest_model",
    "harvest_module",
    "harvest_onnx",
    "harvest_state_dict",
    "harvest_state_dict_file",
]

_FILE_SUFFIXES = {".pth", ".pt", ".bin", ".ckpt", ".safetensors", ".onnx", ".tar"}


def harvest(
    source: str | Path,
    weights: str | Path | None = None,
    name: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    pretrained: bool = False,
) -> HarvestedSource:
    """Depthwise filters of one source.

    ``source`` is a file (``.onnx``, or a state_dict in ``.pth``/``.pt``/``.bin``/``.safetensors`` — no model
    class needed), or a model name (``convnext_atto``, ``timm:...``, ``torchvision:mobilenet_v2``), optionally
    as ``NAME@WEIGHTS``; ``weights`` gives the local weights file for a model name. Without weights a model name
    needs ``pretrained=True`` and the hub.
    """
    text = str(source)
    path = Path(text)
    if path.is_file():
        if weights is not None:
            raise MasterkeyError(f"{path}: --weights goes with a model name, not with a weights file")
        if path.suffix.lower() == ".onnx":
            return harvest_onnx(path, name=name)
        return harvest_state_dict_file(path, name=name)
    if "@" in text and weights is None:
        text, _, weights_text = text.partition("@")
        weights = Path(weights_text)
    elif path.suffix.lower() in _FILE_SUFFIXES or "/" in text:
        raise MasterkeyError(f"{text}: no such file")
    if weights is not None and not Path(weights).is_file():
        raise MasterkeyError(f"{weights}: no such weights file")
    return harvest_model(text, weights=weights, name=name, model_kwargs=model_kwargs, pretrained=pretrained)
