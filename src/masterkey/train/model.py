"""The network a run starts from: the architecture by name, its starting weights (``weights``: a whole trained
model; ``init_from``: a pretrained encoder such as ConvNeXt-V2's FCMAE checkpoints, with a new classifier), the
classifier's initial scale (``head_init_scale``) and the depthwise filters the mode gives it.

``init_from`` follows the fine-tuning start of ConvNeXt-V2 ``main_finetune.py`` (and the authors' fork,
tonylindeberg/masterfiltmodel ``experiments/train_models/main_finetune.py``, ``--finetune``): the decoder, mask
token and projection of an FCMAE checkpoint are dropped, MinkowskiEngine sparse kernels are turned into dense
convolutions (the layout of ConvNeXt-V2 ``utils.py``, ``remap_checkpoint_keys``), the official naming is mapped
onto timm's, and the classifier starts afresh. ``timm:TAG`` takes the weights of the model's timm pretrained tag
instead (``timm:fcmae`` for ``convnextv2_tiny``: ``convnextv2_tiny.fcmae``; a download).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from masterkey.errors import MasterkeyError, option
from masterkey.nn.convert import Conversion, apply_mode
from masterkey.train.config import TrainConfig

#: Top-level entries of an FCMAE checkpoint that belong to pre-training only (ConvNeXt-V2 ``main_finetune.py``
#: removes the keys holding these words before fine-tuning).
PRETRAINING_ONLY = ("decoder", "mask_token", "proj", "pred")


def build_model(config: TrainConfig) -> tuple[nn.Module, Conversion]:
    """The network of ``config`` (timm / torchvision by name with ``model_kwargs`` and ``drop_path``), started from
    ``config.weights`` or ``config.init_from`` when given, its classifier scaled by ``config.head_init_scale``,
    then given keys (or the filters of ``config.filters_from``) as ``config.mode`` says. Seed the global RNG
    first for a fixed init."""
    from masterkey.networks.models import build_architecture, load_weights, read_state_dict

    kwargs = dict(config.model_kwargs)
    if config.drop_path is not None:
        kwargs["drop_path_rate"] = config.drop_path
    model = build_architecture(config.model, **kwargs)
    if config.weights:
        state, _ = read_state_dict(config.weights)
        try:
            load_weights(model, state, source=config.weights, new_head=config.new_head)
        except MasterkeyError as exc:
            if "class-count mismatch" not in str(exc):
                raise
            raise MasterkeyError(f"{exc}; to fine-tune on the data's classes pass {option('new_head', True)}") from None
    if config.init_from:
        load_encoder(model, config.init_from, config)
    if config.head_init_scale is not None:
        init_head(model, config.head_init_scale)
    from masterkey.scalespace import scalespace_models

    converted = apply_mode(
        model,
        config.mode,
        keys=config.keys,
        filters_from=config.filters_from,
        assignment=config.assignment,
        seed=config.seed,
        learn_scale=config.learn_scale,
        key_gain=config.key_gain,
        resize=config.resize_keys,
        sigma_scope=config.sigma_scope,
        scalespace=scalespace_models,
    )
    return model, converted


def classifier(model: nn.Module) -> tuple[str, nn.Linear]:
    """The name and module of the model's final linear classifier (timm's ``get_classifier``)."""
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    if not isinstance(head, nn.Linear):
        raise MasterkeyError(f"{type(model).__name__}: no linear classifier found (a timm model is needed here)")
    name = next(n for n, m in model.named_modules() if m is head)
    return name, head


@torch.no_grad()
def init_head(model: nn.Module, scale: float) -> None:
    """A fresh classifier: weights from a truncated normal (std 0.02, cut at ±2) times ``scale``, biases 0 — the
    ConvNeXt-V2 head init (``head_init_scale``; at 0.001 the std is 2e-5, the value main_finetune.py re-draws
    after loading a pre-trained encoder)."""
    _, head = classifier(model)
    nn.init.trunc_normal_(head.weight, std=0.02, a=-2.0, b=2.0)
    head.weight.mul_(scale)
    if head.bias is not None:
        head.bias.zero_()


def load_encoder(model: nn.Module, spec: str, config: TrainConfig) -> None:
    """Load a pretrained encoder into ``model`` in place: every weight but the classifier must be given (the final
    norm may be missing too, as in FCMAE checkpoints, which have none); the classifier keeps its fresh init."""
    source = spec
    if spec.startswith("timm:"):
        state = _timm_tag_state(spec.removeprefix("timm:"), config)
    else:
        from masterkey.networks.models import read_state_dict

        state, _ = read_state_dict(spec)
        state = fcmae_to_dense(state, source)
    target = model.state_dict()
    head_name, _ = classifier(model)
    top = head_name.split(".")[0]
    state = {
        k: v for k, v in state.items() if not k.startswith(head_name + ".") and k not in ("head.weight", "head.bias")
    }
    from masterkey.networks.models import describe_mismatch, remapped_states

    for candidate in remapped_states(state, model):
        missing = [k for k in target if k not in candidate]
        if all(k.split(".")[0] == top for k in missing) and _shapes_fit(candidate, target):
            model.load_state_dict({**{k: target[k] for k in missing}, **candidate}, strict=True)
            return
    raise MasterkeyError(
        f"{option('init_from', source)}: {describe_mismatch(state, target)} (the encoder of this model is needed; "
        "only the classifier may be missing)"
    )


def _shapes_fit(state: dict[str, Tensor], target: dict[str, Tensor]) -> bool:
    return all(k in target and tuple(v.shape) == tuple(target[k].shape) for k, v in state.items())


def fcmae_to_dense(state: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    """An FCMAE pre-training checkpoint as dense encoder weights in the official ConvNeXt-V2 naming: the
    pre-training-only entries dropped, the ``encoder.`` prefix removed, MinkowskiEngine kernels made dense and the
    ``ln`` / ``linear`` wrapper names removed. Any other state dict is returned unchanged.

    Sparse layouts (ConvNeXt-V2 ``utils.py``, ``remap_checkpoint_keys``): a depthwise kernel ``(k*k, C)`` holds
    ``dense[c, 0, h, w]`` at row ``w*k + h``; a convolution kernel ``(k*k, in, out)`` holds ``dense[o, i, h, w]``
    at ``[w*k + h, i, o]``; biases are stored 2-D; GRN's gamma / beta are ``(1, C)`` for ``(1, 1, 1, C)``."""
    if not any(k.split(".")[0] == "encoder" for k in state):
        return state
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] in PRETRAINING_ONLY:
            continue
        if parts[0] != "encoder":
            raise MasterkeyError(f"{source}: an FCMAE checkpoint with an unexpected entry {key!r}")
        parts = [p for p in parts[1:] if p not in ("ln", "linear")]
        if parts[-1] == "kernel":
            parts[-1] = "weight"
            value = _dense_kernel(value, key, source)
        elif parts[-1] == "bias" and value.ndim > 1:
            value = value.reshape(-1)
        elif "grn" in parts and value.ndim == 2:
            value = value.reshape(1, 1, 1, -1)
        out[".".join(parts)] = value
    return out


def _dense_kernel(value: Tensor, key: str, source: str) -> Tensor:
    k = math.isqrt(value.shape[0])
    if k * k != value.shape[0] or value.ndim not in (2, 3):
        raise MasterkeyError(f"{source}: {key} {tuple(value.shape)} is not a square sparse kernel")
    if value.ndim == 2:  # depthwise (k*k, C) -> (C, 1, k, k)
        return value.t().reshape(value.shape[1], 1, k, k).transpose(2, 3).contiguous()
    return value.permute(2, 1, 0).reshape(value.shape[2], value.shape[1], k, k).transpose(2, 3).contiguous()


def _timm_tag_state(tag: str, config: TrainConfig) -> dict[str, Tensor]:
    """The weights of timm's pretrained tag ``TAG`` of the config's model (downloaded by timm)."""
    from masterkey.networks.models import build_architecture, resolve_model_name

    lib, name = resolve_model_name(config.model)
    if lib != "timm" or not tag:
        raise MasterkeyError(
            f"{option('init_from', 'timm:' + tag)}: a timm model and a pretrained tag are needed (e.g. timm:fcmae)"
        )
    kwargs: dict[str, Any] = {k: v for k, v in config.model_kwargs.items() if k != "num_classes"}
    try:
        pretrained = build_architecture(f"timm:{name}.{tag}", pretrained=True, num_classes=0, **kwargs)
    except MasterkeyError as exc:
        raise MasterkeyError(f"{exc}; or give the checkpoint file with {option('init_from', 'FILE')}") from None
    return dict(pretrained.state_dict())
