"""Depthwise filters from an ONNX file: ``Conv`` nodes whose weight is [C*m, 1, kh, kw] with ``group`` > 1.

Exported graphs usually have BatchNorm folded into the kernels, which rescales each filter; that does not matter
once filters are centre-normed and the sign of the fit is free.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from masterkey.errors import MasterkeyError
from masterkey.files import sha256_file
from masterkey.networks.models import import_optional
from masterkey.sources.base import HarvestedLayer, HarvestedSource, accept_layer


def harvest_onnx(path: str | Path, name: str | None = None) -> HarvestedSource:
    """Every depthwise ``Conv`` node of an ONNX model, in graph order."""
    onnx = import_optional("onnx", "onnx")
    from onnx import numpy_helper

    path = Path(path)
    try:
        model = onnx.load(str(path))
    except Exception as exc:
        raise MasterkeyError(f"{path}: not a readable ONNX model ({str(exc).splitlines()[0][:200]})") from None
    if model.ir_version == 0 or not model.graph.node:
        # Protocol buffers parse an empty (or unrelated) file as an empty model rather than failing.
        raise MasterkeyError(f"{path}: not an ONNX model (the file is empty or holds no graph)")
    graph = model.graph
    tensors: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value":
                    tensors[node.output[0]] = numpy_helper.to_array(attr.t)
    layers: list[HarvestedLayer] = []
    skipped: list[dict[str, str]] = []
    for index, node in enumerate(graph.node):
        if node.op_type != "Conv":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        group = int(attrs.get("group", 1))
        layer = node.name or f"conv{index}"
        weight = tensors.get(node.input[1]) if len(node.input) > 1 else None
        if group <= 1:
            continue
        if weight is None:
            skipped.append({"layer": layer, "reason": "weight is computed in the graph, not a constant"})
            continue
        if weight.ndim != 4 or weight.shape[1] != 1:
            continue
        if not accept_layer(layer, tuple(weight.shape), skipped):
            continue
        strides = attrs.get("strides", [1, 1])
        dilations = attrs.get("dilations", [1, 1])
        layers.append(
            HarvestedLayer(
                name=layer,
                weight=torch.from_numpy(np.array(weight, dtype=np.float32, copy=True)),
                stride=int(max(strides)),
                dilation=int(max(dilations)),
                multiplier=max(1, int(weight.shape[0]) // group),
            )
        )
    if not layers:
        raise MasterkeyError(f"{path}: no depthwise Conv node found (group > 1 with a [C, 1, k, k] weight, k > 1)")
    return HarvestedSource(
        name=name or path.stem,
        kind="onnx",
        layers=layers,
        path=str(path),
        sha256=sha256_file(path),
        skipped=skipped,
    )
