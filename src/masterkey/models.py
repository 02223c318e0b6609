"""Networks by name (timm, torchvision) with weights from local files, loaded safely.

Weights are read with ``safetensors`` or ``torch.load(weights_only=True)``; checkpoints in foreign key namings are
remapped by ``checkpoint_filter_fn``-style functions (timm's own per-model ones, plus those registered with
:func:`register_checkpoint_filter`). Hub downloads happen only when asked for (``pretrained=True``) and fail with a
clear message offline.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from masterkey.errors import MasterkeyError

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
    if not path.is_file():
        raise MasterkeyError(f"{path}: no such file")
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
                f"{path}: not a readable PyTorch state_dict ({_short(exc)}); "
                "expected a .pth/.pt/.bin state_dict or a .safetensors file"
            ) from None
    state = _unwrap(obj)
    if not state:
        raise MasterkeyError(f"{path}: holds no tensors (expected a state_dict of a model)")
    return state, metadata


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


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
    lib, model_name = resolve_model_name(name)
    hub = pretrained and state is None
    try:
        if lib == "timm":
            import timm

            model = timm.create_model(model_name, pretrained=hub, **kwargs)
        else:
            import torchvision

            model = torchvision.models.get_model(model_name, weights="DEFAULT" if hub else None, **kwargs)
    except TypeError as exc:
        raise MasterkeyError(f"model '{name}': bad keyword arguments {kwargs} ({_short(exc)})") from None
    except (OSError, RuntimeError, ValueError) as exc:
        if hub:
            raise MasterkeyError(
                f"model '{name}': could not fetch pretrained weights from the hub ({_short(exc)}); "
                "offline? pass a local weights file instead"
            ) from None
        raise MasterkeyError(f"model '{name}': could not be created ({_short(exc)})") from None
    if state is not None:
        load_weights(model, state, source=str(weights))
    elif not hub:
        raise MasterkeyError(
            f"model '{name}': no weights; pass a local weights file (or allow a hub download with pretrained)"
        )
    return model.eval()


def load_weights(model: nn.Module, state: StateDict, source: str = "weights") -> None:
    """Load ``state`` into ``model`` strictly, remapping foreign namings when needed.

    Raises :class:`MasterkeyError` listing missing / unexpected keys and shape mismatches (with a class-count
    hint) when no remapping makes the checkpoint fit.
    """
    candidates = [state]
    timm_filter = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if timm_filter is not None:
        candidates.append(_try_filter(timm_filter, state, model))
    for fn in _CHECKPOINT_FILTERS:
        candidates.append(_try_filter(fn, state, model))
    target = model.state_dict()
    for cand in candidates:
        if cand is not None and _fits(cand, target):
            model.load_state_dict(cand, strict=True)
            return
    raise MasterkeyError(f"{source}: {describe_mismatch(state, target)}")


def _try_filter(fn: Callable[..., Any], state: StateDict, model: nn.Module) -> StateDict | None:
    try:
        out = fn(dict(state), model)
    except Exception:
        return None
    return out if isinstance(out, dict) else None


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


# Registers the foreign-naming checkpoint filters (efficientnet_pytorch → timm) for every create_model call.
import masterkey.remap  # noqa: E402, F401
