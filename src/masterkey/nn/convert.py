"""Whole networks given keys (or a trained model's filters), as a training mode of :mod:`masterkey.nn.modes` says.

:func:`convert_to_keys` gives every spatial depthwise conv of a network keys, in place: the mode's ``kernel``
names one builder below (:data:`KERNEL_BUILDERS`), which makes the layer's kernel from its key set and assignment.
:func:`transfer_filters` copies the filters of a trained model instead; :func:`apply_mode` does either, as the mode
says. Both return a :class:`Conversion` that carries what each layer got.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from masterkey.depthwise import find_depthwise
from masterkey.errors import MasterkeyError
from masterkey.keys import KeySet, load_keys, resolve_key_spec
from masterkey.nn.assign import (
    Assigner,
    KeyAssignment,
    layer_generator,
    make_assigner,
    resolve_assignment,
    source_kernel,
    span_coefficients,
)
from masterkey.nn.layers import KernelParametrization, KeyKernel, SpanKernel, attach_kernel, kernel_of
from masterkey.nn.modes import MODES, SIGMA_SCOPES, get_mode
from masterkey.nn.scalespace import ScaleSpaceKernel, ScaleSpaceKey, model_keyset, stored_models

#: Scale-space models for a key set: a list, or a function of the key set (e.g.
#: :func:`masterkey.scalespace.scalespace_models`, which fits them).
ScaleSpaceModels = Sequence[ScaleSpaceKey] | Callable[[KeySet], Sequence[ScaleSpaceKey]]


@dataclass
class ConvertedLayer:
    """One depthwise layer given keys: its name, channel count, kernel size and how many channels hold each key."""

    name: str
    channels: int
    kernel_size: int
    counts: list[int] = field(default_factory=list)


@dataclass
class Conversion:
    """What :func:`convert_to_keys` / :func:`transfer_filters` did to a network: the ``mode``, the key set's name
    and the assignment rule used (``auto`` resolved; None without keys), the trained model whose filters were
    copied (transfer modes), and every layer."""

    mode: str
    layers: list[ConvertedLayer] = field(default_factory=list)
    keys: str | None = None
    assignment: str | None = None
    filters_from: str | None = None

    @property
    def channels(self) -> int:
        """Channels given keys (or filters) over all layers."""
        return sum(layer.channels for layer in self.layers)

    @property
    def key_counts(self) -> list[int]:
        """How many channels hold each key, over all layers (empty without keys)."""
        n = max((len(layer.counts) for layer in self.layers), default=0)
        return [sum(layer.counts[j] for layer in self.layers if j < len(layer.counts)) for j in range(n)]


# ---------------------------------------------------------------------- one builder per kind of kernel
@dataclass(frozen=True)
class _Options:
    key_gain: float
    learn_scale: bool
    sigma_scope: str
    resize: bool


class KernelBuilder:
    """Makes the kernel of one kind (a :class:`~masterkey.nn.modes.Mode`'s ``kernel``) for each layer: the layer's
    key set (:meth:`layer_keys`) and, from the assignment, the kernel (:meth:`build`; None when the conv's own
    weight is written instead)."""

    def __init__(self, base: KeySet, keys: Any, options: _Options, scalespace: ScaleSpaceModels | None) -> None:
        self.base, self.keys, self.options = base, keys, options
        self.per_size = isinstance(keys, str) and isinstance(resolve_key_spec(keys), dict)  # a discover run

    def layer_keys(self, size: int) -> KeySet:
        return load_keys(self.keys if self.per_size else self.base, kernel_size=size, resize=self.options.resize)

    def build(self, conv: nn.Conv2d, keyset: KeySet, assigned: KeyAssignment) -> KernelParametrization | None:
        raise NotImplementedError

    def _scale_offset(self, assigned: KeyAssignment) -> tuple[Tensor, Tensor]:
        """Per-channel scale (the fit's ``a``, else the key gain) and offset (the fit's ``b``, else 0)."""
        n = len(assigned.key_index)
        scale = assigned.scale if assigned.scale is not None else torch.full((n,), float(self.options.key_gain))
        offset = assigned.offset if assigned.offset is not None else torch.zeros(n)
        return scale, offset


class _KeyBuilder(KernelBuilder):
    def build(self, conv: nn.Conv2d, keyset: KeySet, assigned: KeyAssignment) -> KernelParametrization:
        index = assigned.key_index.long()
        scale, offset = self._scale_offset(assigned)
        learn = self.options.learn_scale
        return KeyKernel(keyset.keys[index], index, offset=offset, scale=scale, learn_scale=learn)


class _SpanBuilder(KernelBuilder):
    def build(self, conv: nn.Conv2d, keyset: KeySet, assigned: KeyAssignment) -> KernelParametrization:
        index = assigned.key_index.long()
        if assigned.source is not None:
            alpha, offset = span_coefficients(assigned.source, keyset)
        else:
            scale, offset = self._scale_offset(assigned)
            alpha = torch.zeros(len(index), len(keyset))
            alpha[torch.arange(len(index)), index] = scale.float()
        return SpanKernel(keyset.keys, alpha, offset, index)


class _KeyInitBuilder(KernelBuilder):
    def build(self, conv: nn.Conv2d, keyset: KeySet, assigned: KeyAssignment) -> None:
        scale, offset = self._scale_offset(assigned)
        kernel = keyset.keys[assigned.key_index.long()] * scale[:, None, None] + offset[:, None, None]
        with torch.no_grad():
            conv.weight.copy_(kernel.reshape(conv.weight.shape).to(conv.weight))


class _ScaleSpaceBuilder(KernelBuilder):
    """Keys are the scale-space models of the key set, generated at each layer's size (no resizing needed)."""

    def __init__(self, base: KeySet, keys: Any, options: _Options, scalespace: ScaleSpaceModels | None) -> None:
        super().__init__(base, keys, options, scalespace)
        if options.sigma_scope not in SIGMA_SCOPES:
            raise MasterkeyError(f"sigma scope '{options.sigma_scope}': expected one of {', '.join(SIGMA_SCOPES)}")
        models = scalespace(base) if callable(scalespace) else scalespace
        models = list(models) if models is not None else stored_models(base)
        if models is None:
            raise MasterkeyError(
                f"key set '{base.name}' carries no scale-space models: pass scalespace=... (e.g. "
                "masterkey.scalespace.scalespace_models, which fits them) or use the keys 'scalespace8'"
            )
        if len(models) != len(base):
            raise MasterkeyError(f"key set '{base.name}': {len(models)} scale-space models for {len(base)} keys")
        self.models = models

    def layer_keys(self, size: int) -> KeySet:
        return model_keyset(self.models, self.base, size)

    def build(self, conv: nn.Conv2d, keyset: KeySet, assigned: KeyAssignment) -> KernelParametrization:
        scale, offset = self._scale_offset(assigned)
        o = self.options
        index = assigned.key_index.long()
        size = conv.kernel_size[0]
        return ScaleSpaceKernel(self.models, index, size, o.sigma_scope, scale, offset, o.learn_scale)


#: The builder of each kind of kernel a mode can name (``Mode.kernel``).
KERNEL_BUILDERS: dict[str, type[KernelBuilder]] = {
    "key": _KeyBuilder,
    "span": _SpanBuilder,
    "key-init": _KeyInitBuilder,
    "scalespace": _ScaleSpaceBuilder,
}


# ---------------------------------------------------------------------- whole networks
def convert_to_keys(
    model: nn.Module,
    keys: KeySet | str,
    mode: str = "frozen",
    assignment: str | Sequence[float] | Assigner = "auto",
    *,
    seed: int = 0,
    learn_scale: bool = False,
    key_gain: float = 1.0,
    resize: bool = False,
    sigma_scope: str = "key",
    scalespace: ScaleSpaceModels | None = None,
) -> Conversion:
    """Give every spatial depthwise conv of ``model`` keys, in place; returns what each layer got.

    ``mode`` (:data:`masterkey.nn.modes.MODES`): ``"trainable"`` leaves the model unchanged; ``"frozen"`` attaches
    a :class:`~masterkey.nn.layers.KeyKernel` (keys frozen, per-channel offset learnable, per-channel scale too with
    ``learn_scale``); ``"key-init"`` writes the keys into the plain conv weights, which then train as usual;
    ``"span"`` a :class:`~masterkey.nn.layers.SpanKernel` (all keys frozen, mixing weights learnable, starting
    one-hot at the assigned key, or at the least-squares mix of the trained kernel with a ``model:`` assignment);
    ``"scalespace"`` a :class:`~masterkey.nn.scalespace.ScaleSpaceKernel` (the keys' scale-space models — stored
    with the key set, or given by ``scalespace`` — with learnable σ per key or per channel, ``sigma_scope``).
    The convs stay what they were (``isinstance(conv, nn.Conv2d)``); their ``weight`` is computed from the kernel.

    ``assignment`` (:func:`masterkey.nn.assign.make_assigner`): ``auto`` gives the paper's own keys the published
    ConvNeXtV2-B proportions and any other key set equal counts. Keys are unit-norm and multiplied by ``key_gain``,
    except with a ``model:`` assignment, whose fitted ``a * key + b`` is used as it is. Keys whose kernel size
    differs from a layer's are refused unless ``resize`` (centre crop / zero pad; scale-space models are generated
    at every size). Assignment is seeded per layer. The ``transfer-*`` modes are :func:`transfer_filters`.
    """
    spec = get_mode(mode)
    if spec.copies_filters:
        raise MasterkeyError(f"mode '{mode}' copies the filters of a trained model: use transfer_filters")
    if spec.kernel is None:
        return Conversion(mode)
    if not math.isfinite(key_gain) or key_gain == 0:
        raise MasterkeyError(f"key gain {key_gain}: must be a finite non-zero number")
    base = load_keys(keys)
    options = _Options(float(key_gain), bool(learn_scale), sigma_scope, bool(resize))
    builder = KERNEL_BUILDERS[spec.kernel](base, keys, options, scalespace)
    rule = resolve_assignment(assignment, keys)
    assign = make_assigner(rule)
    layers = find_depthwise(model)
    if not layers:
        raise MasterkeyError(f"{type(model).__name__}: has no depthwise convolutions to give keys to")
    conversion = Conversion(mode, keys=base.name, assignment=_rule_name(rule))
    for dw in layers:
        kh, kw = dw.kernel_size
        if kh != kw:
            raise MasterkeyError(f"layer {dw.name}: kernel {kh}x{kw} is not square; keys are k x k")
        if kernel_of(dw.conv) is not None:
            raise MasterkeyError(f"layer {dw.name}: already holds keys (materialize the model first)")
        try:
            keyset = builder.layer_keys(kh)
        except MasterkeyError as exc:
            raise MasterkeyError(f"layer {dw.name}: {exc}") from None
        result = assign(dw.name, dw.conv.weight.detach().cpu(), keyset, layer_generator(seed, dw.name))
        kernel = builder.build(dw.conv, keyset, result)
        if kernel is not None:
            attach_kernel(dw.conv, kernel)
        index = result.key_index.long()
        counts = torch.bincount(index, minlength=len(keyset)).tolist()
        conversion.layers.append(ConvertedLayer(dw.name, len(index), kh, counts))
    return conversion


def _rule_name(rule: str | Sequence[float] | Assigner) -> str:
    if isinstance(rule, str):
        return rule
    if callable(rule):
        return getattr(rule, "__name__", "custom")
    return "proportions:" + ",".join(f"{float(p):g}" for p in rule)


def _looks_depthwise(name: str, tensor: Tensor) -> bool:
    return name.endswith(".weight") and tensor.ndim == 4 and tensor.shape[1] == 1 and tensor.shape[-1] > 1


def transfer_filters(model: nn.Module, weights: str | Path, *, freeze: bool) -> Conversion:
    """Copy every spatial depthwise filter of the trained model ``weights`` (same architecture: the same
    depthwise layer names, channels and kernel sizes; everything else may differ), channel for channel, into
    ``model``, in place. ``freeze`` stops their gradients (``requires_grad`` off: exact filters for the whole
    training, no optimiser state, no weight decay); otherwise they are an initialisation and train as usual.
    The first layer that does not match is named in a :class:`MasterkeyError`."""
    from masterkey.networks.models import read_state_dict

    source = str(weights)
    state, _ = read_state_dict(weights)
    layers = find_depthwise(model)
    if not layers:
        raise MasterkeyError(f"{type(model).__name__}: has no depthwise convolutions to copy filters into")
    for dw in layers:
        source_kernel(state, dw.name, dw.conv.weight.shape, source)  # all layers checked before any is changed
    names = {f"{dw.name}.weight" for dw in layers}
    extra = [n for n, t in state.items() if _looks_depthwise(n, t) and n not in names]
    if extra:
        raise MasterkeyError(
            f"{source}: has depthwise layer '{extra[0].removesuffix('.weight')}' that the model lacks "
            f"({len(extra)} such layers; is it the same architecture?)"
        )
    mode = next(m.name for m in MODES.values() if m.copies_filters and m.frozen == freeze)
    conversion = Conversion(mode, filters_from=source)
    for dw in layers:
        with torch.no_grad():
            dw.conv.weight.copy_(source_kernel(state, dw.name, dw.conv.weight.shape, source))
        dw.conv.weight.requires_grad_(not freeze)
        conversion.layers.append(ConvertedLayer(dw.name, dw.conv.out_channels, dw.kernel_size[0]))
    return conversion


def apply_mode(
    model: nn.Module,
    mode: str,
    *,
    keys: KeySet | str = "paper8",
    filters_from: str | Path | None = None,
    **options: Any,
) -> Conversion:
    """Give ``model`` the depthwise filters of ``mode``, in place: :func:`transfer_filters` of ``filters_from`` for
    the modes that copy a trained model's filters (frozen or not, as the mode says), else :func:`convert_to_keys`
    of ``keys`` with ``options`` (``assignment``, ``seed``, ``learn_scale``, ``key_gain``, ``resize``,
    ``sigma_scope``, ``scalespace``)."""
    spec = get_mode(mode)
    if spec.copies_filters:
        if filters_from is None:
            raise MasterkeyError(f"mode '{mode}' copies the filters of a trained model: give filters_from")
        return transfer_filters(model, filters_from, freeze=spec.frozen)
    return convert_to_keys(model, keys, mode, **options)
