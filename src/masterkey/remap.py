"""Checkpoints in foreign key namings, mapped onto timm models.

``efficientnet_pytorch`` naming (``_conv_stem``, ``_blocks.N._depthwise_conv``, ``_bn0`` ...) → timm EfficientNet
(``conv_stem``, ``blocks.S.B.conv_dw``, ``bn1`` ...). Blocks are matched in order: the N-th ``_blocks`` entry is
the N-th timm block, whose ``blocks.S.B`` name carries the stage. A block without ``_expand_conv`` is timm's
``DepthwiseSeparableConv`` (``conv_dw``, ``bn1``, ``conv_pw``, ``bn2``), one with it an ``InvertedResidual``
(``conv_pw``, ``bn1``, ``conv_dw``, ``bn2``, ``conv_pwl``, ``bn3``); squeeze-excitation maps to ``se``.

The EfficientNet-Lite0 weights in ``shared/models`` were trained with TensorFlow "SAME" padding, BatchNorm
eps 1e-3 and inputs scaled to [-1, 1]: timm's ``tf_efficientnet_lite0`` is that implementation (verified by
accuracy, see ``bench/results/swap.md``); ``efficientnet_lite0`` (symmetric padding) also loads them, less
accurately. :func:`guess_model_name` names the matching timm / torchvision model of a plain state_dict.

Importing this module registers the mapping with :func:`masterkey.models.register_checkpoint_filter`
(``masterkey.models`` imports it, so every :func:`~masterkey.models.create_model` can use it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor, nn

from masterkey.models import StateDict, register_checkpoint_filter

_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_INVERTED_RESIDUAL = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_DEPTHWISE_SEPARABLE = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.([A-Za-z0-9_]+)\.(.+)$")


def is_efficientnet_pytorch(state: Mapping[str, Tensor]) -> bool:
    """True for a state_dict in the ``efficientnet_pytorch`` naming."""
    return any(k.startswith("_blocks.") for k in state) and "_conv_stem.weight" in state


def efficientnet_pytorch_to_timm(state: StateDict, model: nn.Module) -> StateDict | None:
    """``state`` in the ``efficientnet_pytorch`` naming renamed for a timm EfficientNet ``model``; ``None`` when
    either side is not of that kind or the block counts differ."""
    if not is_efficientnet_pytorch(state):
        return None
    timm_blocks = [name for name, _ in model.named_modules() if re.fullmatch(r"blocks\.\d+\.\d+", name)]
    block_ids = sorted({int(m.group(1)) for k in state if (m := _BLOCK_KEY.match(k))})
    if not timm_blocks or len(timm_blocks) != len(block_ids) or block_ids != list(range(len(block_ids))):
        return None
    expands = {int(m.group(1)) for k in state if (m := _BLOCK_KEY.match(k)) and m.group(2) == "_expand_conv"}
    out: StateDict = {}
    for key, value in state.items():
        m = _BLOCK_KEY.match(key)
        if m:
            index, part, rest = int(m.group(1)), m.group(2), m.group(3)
            table = _INVERTED_RESIDUAL if index in expands else _DEPTHWISE_SEPARABLE
            if part not in table:
                return None
            out[f"{timm_blocks[index]}.{table[part]}.{rest}"] = value
        else:
            head, _, rest = key.partition(".")
            if head not in _TOP:
                return None
            out[f"{_TOP[head]}.{rest}"] = value
    return out


register_checkpoint_filter(efficientnet_pytorch_to_timm)

# Implementations tried by :func:`guess_model_name`, in order; efficientnet_pytorch checkpoints come from
# TensorFlow-trained weights, so the ``tf_`` (SAME padding, eps 1e-3) timm variants come first.
_EFFICIENTNET_PYTORCH_CANDIDATES = (
    *(f"tf_efficientnet_lite{i}" for i in range(5)),
    *(f"tf_efficientnet_b{i}" for i in range(4)),
)
_PLAIN_CANDIDATES = (
    "torchvision:mobilenet_v2",
    "torchvision:mobilenet_v3_large",
    "torchvision:mobilenet_v3_small",
    "torchvision:efficientnet_b0",
    "timm:mobilenetv2_100",
    "timm:efficientnet_b0",
    "timm:convnext_atto",
)


def guess_model_name(state: Mapping[str, Tensor]) -> str | None:
    """The name of a timm / torchvision model (among common DS-CNNs) that ``state`` loads into exactly, or
    ``None``. Checked by key names and shapes; it builds a few small models, so it takes a second or two."""
    from masterkey.models import _fits

    candidates = _EFFICIENTNET_PYTORCH_CANDIDATES if is_efficientnet_pytorch(state) else _PLAIN_CANDIDATES
    n_classes = _classifier_size(state)
    for name in candidates:
        lib, _, arch = name.rpartition(":")
        kwargs = {"num_classes": n_classes} if n_classes else {}
        try:
            model = _bare(lib, arch, kwargs)
        except Exception:
            continue
        target = model.state_dict()
        mapped = efficientnet_pytorch_to_timm(dict(state), model) if is_efficientnet_pytorch(state) else dict(state)
        if mapped is not None and _fits(mapped, target):
            return name if lib else f"timm:{arch}"
    return None


def _bare(lib: str, arch: str, kwargs: dict[str, int]) -> nn.Module:
    if lib == "torchvision":
        import torchvision

        return torchvision.models.get_model(arch, weights=None, **kwargs)
    import timm

    return timm.create_model(arch, pretrained=False, **kwargs)


def _classifier_size(state: Mapping[str, Tensor]) -> int | None:
    for key in ("_fc.weight", "classifier.1.weight", "classifier.3.weight", "classifier.weight", "head.fc.weight"):
        if key in state and state[key].ndim == 2:
            return int(state[key].shape[0])
    return None
