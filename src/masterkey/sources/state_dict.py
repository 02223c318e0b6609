"""Depthwise filters from a raw state_dict: every tensor shaped [C, 1, k, k], no model class needed."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from masterkey.depthwise import stage_block
from masterkey.errors import MasterkeyError
from masterkey.files import sha256_file
from masterkey.networks.models import read_state_dict
from masterkey.sources.base import HarvestedLayer, HarvestedSource, accept_layer


def harvest_state_dict(state: dict[str, Tensor], name: str, kind: str = "state_dict") -> HarvestedSource:
    """Every tensor of ``state`` shaped [C, 1, k, k] with C > 1 and k > 1, in file order.

    A raw state_dict does not record strides, dilations or channel multipliers, so those are taken as 1.
    """
    layers: list[HarvestedLayer] = []
    skipped: list[dict[str, str]] = []
    for key, tensor in state.items():
        if tensor.ndim != 4 or tensor.shape[1] != 1 or tensor.shape[0] < 2 or not tensor.is_floating_point():
            continue
        layer = key[: -len(".weight")] if key.endswith(".weight") else key
        if accept_layer(layer, tuple(tensor.shape), skipped):
            layers.append(HarvestedLayer(layer, tensor.detach().to(torch.float32).cpu().contiguous()))
    return HarvestedSource(name=name, kind=kind, layers=layers, skipped=skipped)


def harvest_state_dict_file(path: str | Path, name: str | None = None) -> HarvestedSource:
    """Depthwise filters of a ``.pth`` / ``.pt`` / ``.bin`` / ``.safetensors`` state_dict file."""
    path = Path(path)
    state, metadata = read_state_dict(path)
    source = harvest_state_dict(state, name or path.stem)
    if not source.layers:
        raise MasterkeyError(f"{path}: no depthwise conv weights found (no tensor shaped [C, 1, k, k] with k > 1)")
    source.path = str(path)
    source.sha256 = sha256_file(path)
    source.model = metadata.get("arch")
    if all(stage_block(layer.name)[0] < 0 for layer in source.layers):
        _stages_from_architecture(state, source)
    return source


def _stages_from_architecture(state: dict[str, Tensor], source: HarvestedSource) -> None:
    """Where the layer names do not say the stage (torchvision ``features.N``, efficientnet_pytorch ``_blocks.N``):
    the stage and block swap infers for the architecture the state_dict loads into
    (:func:`~masterkey.networks.models.guess_model_name`), so that bank, fit and swap tables join on the stage.
    Nothing changes when no architecture matches."""
    from masterkey.networks.models import build_architecture, efficientnet_pytorch_to_timm, guess_model_name
    from masterkey.networks.surgery import depthwise_layers

    guessed = guess_model_name(state)
    if guessed is None:
        return
    lib, _, arch = guessed.rpartition(":")
    model = build_architecture(f"{lib}:{arch}" if lib else arch)
    mapped = efficientnet_pytorch_to_timm(dict(state), model) or dict(state)
    renamed = {id(value): key for key, value in mapped.items()}  # the same tensors, under the model's names
    positions = {f"{p.name}.weight": p for p in depthwise_layers(model)}
    for layer in source.layers:
        original = state.get(f"{layer.name}.weight", state.get(layer.name))
        position = positions.get(renamed.get(id(original), ""))
        if position is not None:
            layer.stage, layer.block = position.stage, position.block
