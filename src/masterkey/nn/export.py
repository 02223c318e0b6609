"""A network with keys, back to plain form: materialised convs, a plain state_dict, a weights file, an ONNX graph.

Every key layer's kernel is computed once and written where the plain architecture expects its depthwise weight,
so ``timm.create_model(...)`` / ``torchvision.models.get_model(...)`` load the result with
``load_state_dict(strict=True)`` and compute the same outputs.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from masterkey import jsonio
from masterkey.files import ONNX_PRODUCER, WEIGHTS_FORMAT
from masterkey.nn.layers import key_layers, unwrap


def materialize(model: nn.Module) -> nn.Module:
    """Turn every key layer of ``model`` back into the plain conv it was (its class, e.g. timm ``Conv2dSame``,
    restored) holding its current kernel as a trainable ``weight``, in place. Returns ``model``."""
    target = unwrap(model)
    for name, _ in key_layers(target):
        conv = target.get_submodule(name)
        # Deep copies share the class torch made for the parametrized conv, and removing the parametrization deletes
        # the weight property from that class: give this conv a class of its own first, so copies keep theirs.
        cls = type(conv)
        own = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
        conv.__class__ = type(cls.__name__, cls.__bases__, own)
        with torch.enable_grad():  # the kept kernel is a Parameter only if it is computed with gradients
            parametrize.remove_parametrizations(conv, "weight", leave_parametrized=True)
        weight = conv.weight
        if not isinstance(weight, nn.Parameter):
            del conv._buffers["weight"]
            conv.weight = nn.Parameter(weight.detach())
    return model


def export_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """A plain state_dict of ``model``: each key layer becomes ``weight`` (its kernel) and ``bias``, in the plain
    conv's order, so the unconverted architecture loads it with ``load_state_dict(strict=True)``. DDP /
    DataParallel / ``torch.compile`` wrappers are looked through (by type). Tensors are detached CPU copies."""
    model = unwrap(model)
    layers = dict(key_layers(model))
    out: dict[str, Tensor] = {}
    for name, tensor in model.state_dict().items():
        owner = _key_layer_of(name, layers)
        if owner is None:
            out[name] = tensor.detach().cpu().clone()
        elif f"{owner}.weight" not in out:
            conv = model.get_submodule(owner)
            with torch.no_grad():
                out[f"{owner}.weight"] = layers[owner].kernel().detach().cpu().clone()
            if conv.bias is not None:
                out[f"{owner}.bias"] = conv.bias.detach().cpu().clone()
    return out


def _key_layer_of(name: str, layers: Mapping[str, Any]) -> str | None:
    """The key layer whose state ``name`` is (its bias or its kernel's tensors), or None."""
    prefix, found, _ = name.partition(".parametrizations.weight.")
    if found and prefix in layers:
        return prefix
    if name.startswith("parametrizations.weight.") and "" in layers:  # the model is a single key layer
        return ""
    owner = name.rpartition(".")[0]
    return owner if owner in layers else None


def save_weights(
    model: nn.Module,
    path: str | Path,
    metadata: Mapping[str, str] | None = None,
    *,
    overwrite: bool = False,
    inputs: Iterable[str | Path | None] = (),
) -> Path:
    """Write :func:`export_state_dict` of ``model`` to a safetensors file (atomically, under the output rule of
    :func:`masterkey.files.output_file`), with ``metadata`` (e.g. ``arch``, ``num_classes``, ``dataset``: what
    :func:`masterkey.networks.models.create_model` reads back). Returns the path."""
    from masterkey.files import output_file, safetensors_bytes

    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta["masterkey"] = jsonio.dumps({"format": WEIGHTS_FORMAT}, indent=None)
    state = {k: v.contiguous() for k, v in export_state_dict(model).items()}
    data = safetensors_bytes(state, metadata=meta)
    with output_file(path, "weights", overwrite=overwrite, inputs=inputs) as f:
        f.write(data)
    return Path(path)


def onnx_bytes(model: nn.Module, example: Tensor) -> bytes:
    """The ONNX graph of ``model`` (materialised in a copy, in eval mode; ``model`` is left as it is) for inputs
    shaped like ``example`` (give a batch of 2 or more: an example batch of 1 fixes the batch size) with any
    batch size: input ``images``, output ``logits``. Needs ``onnx`` and
    ``onnxscript`` (the ``onnx`` extra). A PyTorch limitation to know: after ``torch.export`` (which the exporter
    runs), processes forked from this one cannot run autograd; export before, or apart from, forked training."""
    try:
        import onnxscript  # noqa: F401  (torch's exporter needs it; say so before it fails deep inside)
    except ImportError:
        from masterkey.errors import MasterkeyError

        raise MasterkeyError("ONNX export needs onnx and onnxscript: pip install 'masterkey[onnx]'") from None
    plain = materialize(copy.deepcopy(unwrap(model))).eval()
    batch = torch.export.Dim("batch")
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints its progress even when not verbose
        program = torch.onnx.export(
            plain,
            (example,),
            dynamo=True,
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
            external_data=False,
            verbose=False,
        )
    proto = program.model_proto
    proto.producer_name = ONNX_PRODUCER
    return proto.SerializeToString()


def save_onnx(
    model: nn.Module,
    path: str | Path,
    example: Tensor,
    *,
    overwrite: bool = False,
    inputs: Iterable[str | Path | None] = (),
) -> Path:
    """Write :func:`onnx_bytes` of ``model`` to ``path`` (atomically, under the output rule). Returns the path."""
    from masterkey.files import output_file

    data = onnx_bytes(model, example)
    with output_file(path, "onnx", overwrite=overwrite, inputs=inputs) as f:
        f.write(data)
    return Path(path)
