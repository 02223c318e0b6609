"""Networks by name (timm, torchvision) with weights from local files, loaded safely.

Weights are read with ``safetensors`` or ``torch.load(weights_only=True)``; checkpoints in foreign key namings are
remapped by ``checkpoint_filter_fn``-style functions (timm's own per-model ones, plus those registered with
:func:`register_checkpoint_filter`). Hub downloads happen only when asked for (``pretrained=True``) and fail with a
clear message offline.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from masterkey.errors import MasterkeyError
from masterkey.reading import describe_torch_error, regular_file

StateDict = dict[str, Tensor]
CheckpointFilter = Callable[[StateDict, nn.Module], "StateDict | None"]

_WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "module", "net", "params")
_PREFIXES = ("module.", "_orig_mod.", "model.")
_CHECKPOINT_FILTERS: list[CheckpointFilter] = []


def register_checkpoint_filter(fn: CheckpointFilter) -> CheckpointFilter:
    """Register ``fn(state_dict, model) -> state_dict | None`` to remap foreign checkpoints onto a model.

    It is tried, in registration order, when a checkpoint does not load as it is; it returns ``None`` when it
    does not apply.
    """
    _CHECKPOINT_FILTERS.append(fn)
    return fn


def read_state_dict(path: str | Path) -> tuple[StateDict, dict[str, str]]:
    """Tensors of a checkpoint file (``.safetensors`` or a torch pickle) and its safetensors metadata.

    Wrappers such as ``{"state_dict": ...}`` and DDP / ``torch.compile`` prefixes are removed; non-tensor
    entries are dropped. Raises :class:`MasterkeyError` naming the file if it is missing, corrupt, or not a
    state dict.
    """
    path = Path(path)
    regular_file(path, "weights file")  # a FIFO would block, a device never end; a folder is not "no such file"
    metadata: dict[str, str] = {}
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = dict(f.metadata() or {})
                obj: Any = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        except Exception as exc:
            raise MasterkeyError(f"{path}: not a readable safetensors file ({_short(exc)})") from None
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise MasterkeyError(
                f"{path}: not a readable PyTorch state_dict ({describe_torch_error(path, exc)}); "
                "expected a .pth/.pt/.bin state_dict or a .safetensors file"
            ) from None
    state = _unwrap(obj)
    if not state:
        raise MasterkeyError(f"{path}: holds no tensors (expected a state_dict of a model)")
    return state, metadata


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    if len(first) < 8:  # a bare key or code (e.g. "101") says nothing without the exception's name
        first = f"{type(exc).__name__} {first}".strip()
    return first[:200]


def _unwrap(obj: Any) -> StateDict:
    for _ in range(3):
        if isinstance(obj, Mapping) and not any(isinstance(v, Tensor) for v in obj.values()):
            inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping):
        return {}
    state = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    for prefix in _PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def resolve_model_name(name: str) -> tuple[str, str]:
    """``(library, model)`` for a name such as ``convnext_atto``, ``timm:convnext_atto`` or
    ``torchvision:mobilenet_v2``. timm is tried first for unprefixed names."""
    import timm
    import torchvision

    lib, sep, model = name.partition(":")
    if sep:
        if lib not in ("timm", "torchvision"):
            raise MasterkeyError(f"model '{name}': unknown library '{lib}' (expected timm: or torchvision:)")
        known = timm.is_model(model) if lib == "timm" else model in torchvision.models.list_models()
        if not known:
            raise MasterkeyError(f"model '{name}': {lib} has no model named '{model}'")
        return lib, model
    if timm.is_model(name):
        return "timm", name
    if name in torchvision.models.list_models():
        return "torchvision", name
    close = timm.list_models(f"*{name.split('_')[0]}*")[:5]
    hint = f" (similar timm names: {', '.join(close)})" if close else ""
    raise MasterkeyError(f"model '{name}': not a timm or torchvision model name, nor an existing file{hint}")


def parse_scalar(value: str) -> Any:
    """``"10"`` → 10, ``"0.5"`` → 0.5, ``"true"`` → True; anything else stays a string."""
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def parse_model_kwargs(text: str | None) -> dict[str, Any]:
    """A model's keyword arguments as a user writes them: ``"num_classes=10,patch_size=1"`` (ints, floats, bools,
    strings: :func:`parse_scalar`) or a JSON object (``'{"num_classes": 10}'``). Empty or None: no arguments."""
    from masterkey.errors import option
    from masterkey.jsonio import loads

    what = option("model_kwargs")
    text = (text or "").strip()
    if text.startswith("{"):
        try:
            kwargs = loads(text, what, restore=False)
        except MasterkeyError as exc:
            raise MasterkeyError(f"{what}: not a JSON object ({str(exc).partition(': ')[2]})") from None
        if not isinstance(kwargs, dict):
            raise MasterkeyError(f"{what}: expected a JSON object")
        return kwargs
    out: dict[str, Any] = {}
    for item in text.split(",") if text else []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise MasterkeyError(f"{what}: expected key=value pairs separated by commas, got {item!r}")
        out[key.strip()] = parse_scalar(value.strip())
    return out


def build_architecture(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """The network ``name`` (timm first, then torchvision; ``timm:`` / ``torchvision:`` prefixes pick one) built
    with ``kwargs``: randomly initialised, or with the hub's weights when ``pretrained`` (online only).

    The one place where masterkey constructs a network; every failure is a :class:`MasterkeyError`.
    """
    lib, model_name = resolve_model_name(name)

    def construct(weights: bool) -> nn.Module:
        if lib == "timm":
            import timm

            return timm.create_model(model_name, pretrained=weights, **kwargs)
        import torchvision

        return torchvision.models.get_model(model_name, weights="DEFAULT" if weights else None, **kwargs)

    try:
        if kwargs and not pretrained:
            _check_parameter_count(name, kwargs, construct)
        return construct(pretrained)
    except MasterkeyError:
        raise
    except TypeError as exc:
        raise MasterkeyError(f"model '{name}': bad keyword arguments {kwargs} ({_short(exc)})") from None
    except (OSError, RuntimeError, ValueError) as exc:
        if pretrained:
            raise MasterkeyError(
                f"model '{name}': could not fetch pretrained weights from the hub ({_short(exc)}); "
                "offline? pass a local weights file instead"
            ) from None
        raise MasterkeyError(f"model '{name}': could not be created ({_short(exc)})") from None


#: The largest network masterkey builds (8 GB of float32 weights); keyword arguments such as a huge
#: ``num_classes`` would otherwise exhaust the machine's memory before anything could be said.
MAX_PARAMETERS = 2_000_000_000


#: Parameter counts already measured in this process, by (name, keyword arguments): a count depends on nothing
#: else, and building on the meta device costs as much Python as building for real (0.1 s for a ConvNeXt-atto).
_PARAMETER_COUNTS: dict[str, int | None] = {}


def _check_parameter_count(name: str, kwargs: dict[str, Any], construct: Callable[[bool], nn.Module]) -> None:
    """Build the network on the meta device (no memory) and refuse it when it exceeds :data:`MAX_PARAMETERS`.
    A network that cannot be built there is left to the real construction to judge."""
    key = repr((name, sorted(kwargs.items())))
    if key not in _PARAMETER_COUNTS:
        try:
            with torch.device("meta"):
                _PARAMETER_COUNTS[key] = sum(p.numel() for p in construct(False).parameters())
        except Exception:
            _PARAMETER_COUNTS[key] = None
    count = _PARAMETER_COUNTS[key]
    if count is None:
        return
    if count > MAX_PARAMETERS:
        raise MasterkeyError(
            f"model '{name}' with {kwargs} would have {count:,} parameters, more than {MAX_PARAMETERS:,}; "
            "check the model keyword arguments"
        )


def create_model(
    name: str | None = None,
    weights: str | Path | None = None,
    pretrained: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """A model by timm / torchvision name, with weights from a local file (or the hub with ``pretrained``).

    ``name`` may be omitted when ``weights`` is a safetensors file whose metadata names the architecture
    (``arch``, plus ``num_classes`` / ``patch_size``), as the CIFAR-10 ConvNeXts in ``shared/models`` do.
    The model is returned in eval mode.
    """
    state: StateDict | None = None
    if weights is not None:
        state, metadata = read_state_dict(weights)
        if name is None:
            if "arch" not in metadata:
                raise MasterkeyError(f"{weights}: no model name given and the file's metadata names no 'arch'")
            name = metadata["arch"]
        for key in ("num_classes", "patch_size", "in_chans"):
            if key in metadata and key not in kwargs:
                kwargs[key] = parse_scalar(metadata[key])
    elif name is None:
        raise MasterkeyError("no model: give a model name, a weights file, or both")
    hub = pretrained and state is None
    model = build_architecture(name, pretrained=hub, **kwargs)
    if state is not None:
        load_weights(model, state, source=str(weights))
    elif not hub:
        raise MasterkeyError(
            f"model '{name}': no weights; pass a local weights file (or allow a hub download with pretrained)"
        )
    return model.eval()


def load_weights(model: nn.Module, state: StateDict, source: str = "weights", new_head: bool = False) -> None:
    """Load ``state`` into ``model`` strictly, remapping foreign namings when needed.

    ``new_head``: a classifier whose class count differs from the model's (a 2-D weight with the model's input
    width but another output count, and its bias) is not loaded: the model keeps its own freshly initialised
    one (fine-tuning on a new label set). Everything else must fit.
    Raises :class:`MasterkeyError` listing missing / unexpected keys and shape mismatches (with a class-count
    hint) when no remapping makes the checkpoint fit.
    """
    target = model.state_dict()
    failures: list[str] = []
    for cand in remapped_states(state, model, failures):
        if new_head:
            cand = _with_own_head(cand, target)
        if _fits(cand, target):
            model.load_state_dict(cand, strict=True)
            return
    tried = f" (remappings that failed: {'; '.join(failures)})" if failures else ""
    raise MasterkeyError(f"{source}: {describe_mismatch(state, target)}{tried}")


#: What a checkpoint filter raises when it does not apply to a checkpoint (a missing key, a shape it cannot
#: reshape). Anything else is a bug in the filter and propagates.
FILTER_ERRORS = (KeyError, IndexError, RuntimeError, ValueError, TypeError, AttributeError)


def remapped_states(state: StateDict, model: nn.Module, failures: list[str] | None = None) -> Iterator[StateDict]:
    """``state`` as it is, then as each checkpoint filter remaps it for ``model`` (timm's own ``checkpoint_filter_fn``
    for the model, then those registered with :func:`register_checkpoint_filter`), computed one at a time.

    A filter that does not apply returns None or raises one of :data:`FILTER_ERRORS`; such a failure is named in
    ``failures`` (``"NAME: ErrorType: message"``) for the caller's error message. A :class:`MasterkeyError` from a
    filter propagates."""
    yield state
    timm_filter = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    for fn in ([timm_filter] if timm_filter is not None else []) + _CHECKPOINT_FILTERS:
        try:
            out = fn(dict(state), model)
        except MasterkeyError:
            raise
        except FILTER_ERRORS as exc:
            if failures is not None:
                detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
                failures.append(f"{getattr(fn, '__qualname__', fn)} raised {type(exc).__name__} {detail}".strip())
            continue
        if isinstance(out, dict):
            yield out


def _with_own_head(state: StateDict, target: Mapping[str, Tensor]) -> StateDict:
    """``state`` with the target's own tensors in place of a classifier of another class count."""
    out = dict(state)
    for key, tensor in target.items():
        theirs = state.get(key)
        if theirs is None or tensor.ndim != 2 or theirs.ndim != 2 or tuple(theirs.shape) == tuple(tensor.shape):
            continue
        if theirs.shape[1] != tensor.shape[1]:
            continue
        out[key] = tensor
        bias = key.removesuffix("weight") + "bias"
        if bias in target and bias in state and state[bias].shape != target[bias].shape:
            out[bias] = target[bias]
    return out


def _fits(state: Mapping[str, Tensor], target: Mapping[str, Tensor]) -> bool:
    return set(state) == set(target) and all(tuple(state[k].shape) == tuple(target[k].shape) for k in target)


def describe_mismatch(state: Mapping[str, Tensor], target: Mapping[str, Tensor]) -> str:
    """One line saying why ``state`` does not fit ``target``."""
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}"
        for k in target
        if k in state and tuple(state[k].shape) != tuple(target[k].shape)
    ]
    parts = ["weights do not fit the model"]
    if missing:
        parts.append(f"{len(missing)} missing keys ({_few(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys ({_few(unexpected)})")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches ({_few(shapes)})")
        hint = _class_count_hint(state, target)
        if hint:
            parts.append(hint)
    return "; ".join(parts)


def _few(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")


def _class_count_hint(state: Mapping[str, Tensor], target: Mapping[str, Tensor]) -> str | None:
    for key in target:
        if key in state and key.endswith("weight") and state[key].ndim == 2 and target[key].ndim == 2:
            s, t = state[key].shape, target[key].shape
            if s[1] == t[1] and s[0] != t[0]:
                return f"class-count mismatch: the weights have {s[0]} classes, the model {t[0]} (num_classes={s[0]})"
    return None


def import_optional(module: str, extra: str) -> Any:
    """Import an optional dependency or fail with the pip command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MasterkeyError(f"this needs the '{module}' package: pip install 'masterkey[{extra}]'") from None


# ---------------------------------------------------------------------- foreign checkpoints
# Checkpoints in foreign key namings, mapped onto timm models.
#
# ``efficientnet_pytorch`` naming (``_conv_stem``, ``_blocks.N._depthwise_conv``, ``_bn0`` ...) → timm EfficientNet
# (``conv_stem``, ``blocks.S.B.conv_dw``, ``bn1`` ...). Blocks are matched in order: the N-th ``_blocks`` entry is
# the N-th timm block, whose ``blocks.S.B`` name carries the stage. A block without ``_expand_conv`` is timm's
# ``DepthwiseSeparableConv`` (``conv_dw``, ``bn1``, ``conv_pw``, ``bn2``), one with it an ``InvertedResidual``
# (``conv_pw``, ``bn1``, ``conv_dw``, ``bn2``, ``conv_pwl``, ``bn3``); squeeze-excitation maps to ``se``.
#
# The EfficientNet-Lite0 weights in ``shared/models`` were trained with TensorFlow "SAME" padding, BatchNorm
# eps 1e-3 and inputs scaled to [-1, 1]: timm's ``tf_efficientnet_lite0`` is that implementation (verified by
# accuracy, see ``bench/results/swap.md``); ``efficientnet_lite0`` (symmetric padding) also loads them, less
# accurately. :func:`guess_model_name` names the matching timm / torchvision model of a plain state_dict.
#
# The mapping is registered with :func:`register_checkpoint_filter`, so every :func:`create_model` and
# :func:`load_weights` call can use it.
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
    candidates = _EFFICIENTNET_PYTORCH_CANDIDATES if is_efficientnet_pytorch(state) else _PLAIN_CANDIDATES
    n_classes = _classifier_size(state)
    for name in candidates:
        lib, _, arch = name.rpartition(":")
        kwargs = {"num_classes": n_classes} if n_classes else {}
        try:
            model = build_architecture(f"{lib}:{arch}" if lib else arch, **kwargs)
        except Exception:
            continue
        target = model.state_dict()
        mapped = efficientnet_pytorch_to_timm(dict(state), model) if is_efficientnet_pytorch(state) else dict(state)
        if mapped is not None and _fits(mapped, target):
            return name if lib else f"timm:{arch}"
    return None


def _classifier_size(state: Mapping[str, Tensor]) -> int | None:
    for key in ("_fc.weight", "classifier.1.weight", "classifier.3.weight", "classifier.weight", "head.fc.weight"):
        if key in state and state[key].ndim == 2:
            return int(state[key].shape[0])
    return None
