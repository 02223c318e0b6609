"""Frozen-key depthwise convolutions (SPEC §2.7): every channel keeps one key, only a per-channel offset trains.

:class:`KeyConv2d` replaces a depthwise ``nn.Conv2d`` in place. Its kernel is ``scale * key + offset`` where ``key``
[C, 1, k, k] is a frozen *buffer* (so no optimiser, weight decay or gradient ever touches it), ``offset`` is the
learnable per-channel scalar ``b`` the authors add to the kernel, ``scale`` an optional learnable per-channel ``a``
(not absorbable when a LayerNorm follows the conv, as in ConvNeXt), and the usual conv bias stays.

Channel → key assignment (one callable per rule, see :func:`make_assigner`):

- published proportions (``convnextv2-b``, ``hornet-t``: :data:`PUBLISHED_PROPORTIONS`) or any given proportions,
- ``uniform`` (equal counts),
- per-layer proportions from a fit table (``fits.parquet`` of ``masterkey fit``),
- the best affine fit of the matching channel of a trained model of the same architecture (the authors' variant:
  ``a * key + b`` of the fit becomes the frozen kernel).

:func:`convert_to_keys` applies a mode to a whole network: ``"trainable"`` (left as it is), ``"frozen"`` (keys
frozen, offsets learnable) or ``"key-init"`` (plain convs initialised from the keys, then fully trainable).
:func:`export_state_dict` materialises the kernels so that the plain architecture (``timm.create_model``) loads
the result with ``load_state_dict(strict=True)``.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from masterkey.depthwise import find_depthwise
from masterkey.errors import MasterkeyError
from masterkey.keys import KeySet, load_keys

MODES = ("trainable", "frozen", "key-init")

#: Filter-type proportions (percent, keys 1-8 of ``paper8``) of trained models, from the paper (SPEC §2.7).
PUBLISHED_PROPORTIONS: dict[str, tuple[float, ...]] = {
    "convnextv2-b": (2.77, 3.71, 3.33, 3.55, 3.08, 6.34, 24.17, 53.05),
    "hornet-t": (33.89, 13.97, 3.35, 4.64, 6.35, 5.54, 15.62, 16.64),
}


# ---------------------------------------------------------------------- the module
class KeyConv2d(nn.Module):
    """A depthwise convolution whose per-channel kernel is ``scale * key + offset`` with ``key`` frozen.

    Parameters: ``offset`` [C] (the learnable ``b``), ``scale`` [C] when ``learn_scale`` (else ``None``) and
    ``bias`` [C] when the original conv had one. Buffers: ``key`` [C, 1, k, k] (frozen) and ``key_index`` [C]
    (which key of the key set each channel holds; -1 when unknown). It exposes the geometry attributes of the
    ``nn.Conv2d`` it replaces (``in_channels``, ``kernel_size``, ``stride`` ...) and ``weight`` (the kernel).
    """

    def __init__(
        self,
        conv: nn.Conv2d,
        kernels: Tensor,
        key_index: Tensor | None = None,
        learn_scale: bool = False,
        scale: Tensor | None = None,
        offset: Tensor | None = None,
    ) -> None:
        super().__init__()
        kind = type(conv).__name__
        if not isinstance(conv, nn.Conv2d) or kind not in ("Conv2d", "Conv2dSame"):
            raise MasterkeyError(f"cannot hold keys in a {kind}: only nn.Conv2d and timm Conv2dSame are supported")
        c = conv.out_channels
        k = tuple(conv.kernel_size)
        kernels = torch.as_tensor(kernels).detach().reshape(c, 1, *k).to(torch.float32)
        self.in_channels, self.out_channels, self.groups = conv.in_channels, c, conv.groups
        self.kernel_size, self.stride, self.dilation = k, tuple(conv.stride), tuple(conv.dilation)
        self.padding, self.padding_mode = conv.padding, conv.padding_mode
        self._same = kind == "Conv2dSame"
        self._reversed_padding_repeated_twice = getattr(conv, "_reversed_padding_repeated_twice", None)
        device = conv.weight.device
        self.register_buffer("key", kernels.to(device).contiguous())
        index = torch.full((c,), -1, dtype=torch.long) if key_index is None else torch.as_tensor(key_index).long()
        self.register_buffer("key_index", index.to(device).clone())
        init_offset = torch.zeros(c) if offset is None else torch.as_tensor(offset, dtype=torch.float32)
        self.offset = nn.Parameter(init_offset.reshape(c).to(device).clone())
        if learn_scale:
            init_scale = torch.ones(c) if scale is None else torch.as_tensor(scale, dtype=torch.float32)
            self.scale: nn.Parameter | None = nn.Parameter(init_scale.reshape(c).to(device).clone())
        else:
            self.register_parameter("scale", None)
        if conv.bias is not None:
            self.bias: nn.Parameter | None = nn.Parameter(conv.bias.detach().float().clone())
        else:
            self.register_parameter("bias", None)

    @property
    def weight(self) -> Tensor:
        """The kernel ``scale * key + offset`` [C, 1, k, k] (differentiable in ``scale`` and ``offset``)."""
        w = self.key
        if self.scale is not None:
            w = w * self.scale[:, None, None, None]
        return w + self.offset[:, None, None, None]

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        if self._same:
            from timm.layers.conv2d_same import conv2d_same

            return conv2d_same(x, w, self.bias, self.stride, (0, 0), self.dilation, self.groups)
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return F.conv2d(x, w, self.bias, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def to_conv(self) -> nn.Conv2d:
        """A plain conv (``nn.Conv2d``, or timm ``Conv2dSame``) holding the materialised kernel."""
        common = {
            "stride": self.stride,
            "dilation": self.dilation,
            "groups": self.groups,
            "bias": self.bias is not None,
        }
        if self._same:
            from timm.layers import Conv2dSame

            conv: nn.Conv2d = Conv2dSame(self.in_channels, self.out_channels, self.kernel_size, **common)
        else:
            conv = nn.Conv2d(
                self.in_channels,
                self.out_channels,
                self.kernel_size,
                padding=self.padding,
                padding_mode=self.padding_mode,
                **common,
            )
        conv = conv.to(self.key.device)
        with torch.no_grad():
            conv.weight.copy_(self.weight)
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv

    def extra_repr(self) -> str:
        c, k = self.out_channels, self.kernel_size
        return f"{c}, kernel_size={k}, stride={self.stride}, learn_scale={self.scale is not None}"


# ---------------------------------------------------------------------- assignment rules
@dataclass
class KeyAssignment:
    """Which key each channel of one layer gets, and optionally the fitted ``scale`` / ``offset`` per channel."""

    key_index: Tensor
    scale: Tensor | None = None
    offset: Tensor | None = None


class Assigner(Protocol):
    """``assigner(layer_name, weight [C, 1, k, k], keyset, generator) -> KeyAssignment``."""

    def __call__(self, layer: str, weight: Tensor, keyset: KeySet, generator: torch.Generator) -> KeyAssignment: ...


def counts_from_proportions(n: int, proportions: Sequence[float]) -> Tensor:
    """Integer counts summing to ``n`` closest to ``n * proportions`` (largest remainder; ties to lower index)."""
    p = np.asarray(proportions, dtype=np.float64)
    if p.ndim != 1 or len(p) == 0 or not np.all(np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
        raise MasterkeyError(f"proportions must be non-negative numbers with a positive sum, got {list(proportions)}")
    exact = n * p / p.sum()
    counts = np.floor(exact).astype(np.int64)
    remainder = exact - counts
    order = np.lexsort((np.arange(len(p)), -remainder))  # largest remainder first, then lower index
    counts[order[: n - int(counts.sum())]] += 1
    return torch.from_numpy(counts)


def assign_by_proportions(
    n_channels: int, proportions: Sequence[float], generator: torch.Generator | None = None
) -> Tensor:
    """Key index per channel: exactly :func:`counts_from_proportions` of each key, in a random (seeded) order."""
    counts = counts_from_proportions(n_channels, proportions)
    index = torch.repeat_interleave(torch.arange(len(counts)), counts)
    return index[torch.randperm(n_channels, generator=generator)]


def assign_uniform(n_channels: int, n_keys: int, generator: torch.Generator | None = None) -> Tensor:
    """Key index per channel with equal counts per key (as equal as ``n_channels`` allows), in a random order."""
    return assign_by_proportions(n_channels, [1.0] * n_keys, generator)


def layer_proportions(table: Any, layer: str, n_keys: int) -> np.ndarray:
    """Proportions of keys among the rows of a fit table (``layer`` and ``key`` columns) for one layer."""
    rows = table[table["layer"] == layer]
    if len(rows) == 0:
        return np.zeros(0)
    keys = rows["key"].to_numpy().astype(np.int64)
    if keys.max() >= n_keys or keys.min() < 0:
        raise MasterkeyError(
            f"fit table: layer {layer} uses key {keys.max() + 1} but the key set has {n_keys} keys "
            "(was the table fitted with another key set?)"
        )
    return np.bincount(keys, minlength=n_keys) / len(keys)


def assign_from_fit_table(
    table: Any, layer: str, n_channels: int, n_keys: int, generator: torch.Generator | None = None
) -> Tensor:
    """Key index per channel with the per-layer proportions of a fit table (rows of all sources pooled)."""
    p = layer_proportions(table, layer, n_keys)
    if len(p) == 0:
        raise MasterkeyError(f"fit table has no rows for layer '{layer}'")
    return assign_by_proportions(n_channels, p, generator)


def assign_from_model(weight: Tensor, keyset: KeySet) -> KeyAssignment:
    """Best affine fit (``masterkey.fit.fit_affine``) of each channel of a trained depthwise ``weight``
    [C, 1, k, k]: its key, ``scale`` = a and ``offset`` = b."""
    from masterkey.fit import fit_affine

    flat = weight.detach().float().reshape(weight.shape[0], -1)
    fit = fit_affine(flat, keyset)
    return KeyAssignment(fit.key, fit.a.float(), fit.b.float())


def _proportion_assigner(proportions: Sequence[float], what: str) -> Assigner:
    def assign(layer: str, weight: Tensor, keyset: KeySet, generator: torch.Generator) -> KeyAssignment:
        if len(proportions) != len(keyset):
            raise MasterkeyError(
                f"assignment '{what}' gives {len(proportions)} proportions but key set '{keyset.name}' has "
                f"{len(keyset)} keys"
            )
        return KeyAssignment(assign_by_proportions(weight.shape[0], proportions, generator))

    return assign


def _uniform_assigner(layer: str, weight: Tensor, keyset: KeySet, generator: torch.Generator) -> KeyAssignment:
    return KeyAssignment(assign_uniform(weight.shape[0], len(keyset), generator))


def _fit_table_assigner(path: Path) -> Assigner:
    import pandas as pd

    table_path = path / "fits.parquet" if path.is_dir() else path
    if not table_path.is_file():
        raise MasterkeyError(f"assignment fit:{path}: no fits.parquet (expected a 'masterkey fit -o DIR' directory)")
    try:
        table = pd.read_parquet(table_path, columns=["layer", "key"])
    except Exception as exc:
        raise MasterkeyError(f"{table_path}: not a fit table with 'layer' and 'key' columns ({exc})") from None
    fit_keys = {int(m.group(1)): p for p in path.glob("keys_k*.safetensors") if (m := re.search(r"k(\d+)", p.stem))}

    def assign(layer: str, weight: Tensor, keyset: KeySet, generator: torch.Generator) -> KeyAssignment:
        k = weight.shape[-1]
        if k in fit_keys:
            used = KeySet.load(fit_keys[k])
            if used.keys.shape != keyset.keys.shape or not torch.allclose(used.keys, keyset.keys, atol=1e-5):
                raise MasterkeyError(
                    f"{table_path}: fitted with key set '{used.name}', not with the training keys '{keyset.name}'"
                )
        p = layer_proportions(table, layer, len(keyset))
        if len(p) == 0:
            some = ", ".join(sorted(table["layer"].unique())[:3])
            raise MasterkeyError(f"{table_path}: no fits for layer '{layer}' (the table has layers such as {some})")
        return KeyAssignment(assign_by_proportions(weight.shape[0], p, generator))

    return assign


def _model_assigner(state: Mapping[str, Tensor], source: str) -> Assigner:
    def assign(layer: str, weight: Tensor, keyset: KeySet, generator: torch.Generator) -> KeyAssignment:
        trained = state.get(f"{layer}.weight")
        if trained is None:
            raise MasterkeyError(f"{source}: has no weight for layer '{layer}' (is it the same architecture?)")
        if tuple(trained.shape) != tuple(weight.shape):
            raise MasterkeyError(
                f"{source}: layer '{layer}' is {tuple(trained.shape)} there but {tuple(weight.shape)} in the model"
            )
        return assign_from_model(trained, keyset)

    return assign


def make_assigner(spec: str | Sequence[float] | Assigner) -> Assigner:
    """An assignment rule from a spec.

    ``convnextv2-b`` / ``hornet-t`` (published proportions), ``uniform``, ``proportions:P1,P2,...``,
    ``fit:PATH`` (a ``masterkey fit`` directory or ``fits.parquet``: per-layer proportions), ``model:WEIGHTS``
    (best fit of each channel of a trained model of the same architecture), a list of proportions, or a callable.
    """
    if callable(spec):
        return spec
    if not isinstance(spec, str):
        return _proportion_assigner([float(p) for p in spec], "proportions")
    name, _, arg = spec.partition(":")
    if spec in PUBLISHED_PROPORTIONS:
        return _proportion_assigner(PUBLISHED_PROPORTIONS[spec], spec)
    if spec == "uniform":
        return _uniform_assigner
    if name == "proportions" and arg:
        try:
            values = [float(v) for v in arg.split(",")]
        except ValueError:
            raise MasterkeyError(f"assignment '{spec}': expected proportions:P1,P2,... (numbers)") from None
        counts_from_proportions(1, values)  # validates
        return _proportion_assigner(values, spec)
    if name == "fit" and arg:
        return _fit_table_assigner(Path(arg))
    if name == "model" and arg:
        from masterkey.networks.models import read_state_dict

        state, _ = read_state_dict(arg)
        return _model_assigner(state, arg)
    known = ", ".join([*PUBLISHED_PROPORTIONS, "uniform", "proportions:P1,...", "fit:FITDIR", "model:WEIGHTS"])
    raise MasterkeyError(f"assignment '{spec}': unknown (expected one of {known})")


# ---------------------------------------------------------------------- whole networks
@dataclass
class ConvertedLayer:
    """One depthwise layer given keys: its name, channel count, kernel size and how many channels hold each key."""

    name: str
    channels: int
    kernel_size: int
    counts: list[int] = field(default_factory=list)


def layer_generator(seed: int, layer: str) -> torch.Generator:
    """A generator for one layer's assignment, independent of the other layers (stable across runs)."""
    digest = hashlib.sha256(f"{seed}:{layer}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def convert_to_keys(
    model: nn.Module,
    keys: KeySet | str,
    mode: str = "frozen",
    assignment: str | Sequence[float] | Assigner = "convnextv2-b",
    *,
    seed: int = 0,
    learn_scale: bool = False,
    key_gain: float = 1.0,
    resize: bool = False,
) -> list[ConvertedLayer]:
    """Give every spatial depthwise conv of ``model`` keys, in place; returns what each layer got.

    ``mode``: ``"trainable"`` leaves the model unchanged; ``"frozen"`` swaps in :class:`KeyConv2d` (keys frozen,
    per-channel offset learnable, per-channel scale too with ``learn_scale``); ``"key-init"`` writes the keys into
    the plain conv weights, which then train as usual. Keys are unit-norm and multiplied by ``key_gain``, except
    with a ``model:`` assignment, whose fitted ``a * key + b`` is used as it is. Keys whose kernel size differs
    from a layer's are refused unless ``resize`` (centre crop / zero pad). Assignment is seeded per layer.
    """
    if mode not in MODES:
        raise MasterkeyError(f"mode '{mode}': expected one of {', '.join(MODES)}")
    if mode == "trainable":
        return []
    if not math.isfinite(key_gain) or key_gain == 0:
        raise MasterkeyError(f"key gain {key_gain}: must be a finite non-zero number")
    base = load_keys(keys)
    assign = make_assigner(assignment)
    layers = find_depthwise(model)
    if not layers:
        raise MasterkeyError(f"{type(model).__name__}: has no depthwise convolutions to give keys to")
    converted: list[ConvertedLayer] = []
    for dw in layers:
        kh, kw = dw.kernel_size
        if kh != kw:
            raise MasterkeyError(f"layer {dw.name}: kernel {kh}x{kw} is not square; keys are k x k")
        try:
            keyset = load_keys(base, kernel_size=kh, resize=resize)
        except MasterkeyError as exc:
            raise MasterkeyError(f"layer {dw.name}: {exc}") from None
        conv = dw.conv
        result = assign(dw.name, conv.weight.detach().cpu(), keyset, layer_generator(seed, dw.name))
        index = result.key_index.long()
        unit = keyset.keys[index]  # [C, k, k]
        fitted = result.scale is not None
        scale = result.scale if fitted else torch.full((len(index),), float(key_gain))
        offset = result.offset if result.offset is not None else torch.zeros(len(index))
        if mode == "frozen":
            if learn_scale:
                new = KeyConv2d(conv, unit, index, learn_scale=True, scale=scale, offset=offset)
            else:
                new = KeyConv2d(conv, unit * scale[:, None, None], index, offset=offset)
            _set_submodule(model, dw.name, new)
        else:
            with torch.no_grad():
                kernel = unit * scale[:, None, None] + offset[:, None, None]
                conv.weight.copy_(kernel.reshape(conv.weight.shape).to(conv.weight))
        counts = torch.bincount(index, minlength=len(keyset)).tolist()
        converted.append(ConvertedLayer(dw.name, len(index), kh, counts))
    return converted


def key_layers(model: nn.Module) -> list[tuple[str, KeyConv2d]]:
    """The :class:`KeyConv2d` layers of a model (DDP / compile wrappers looked through)."""
    return [(n, m) for n, m in unwrap(model).named_modules() if isinstance(m, KeyConv2d)]


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def export_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """A plain state_dict of ``model``: each :class:`KeyConv2d` becomes ``weight`` (= ``scale*key+offset``) and
    ``bias``, so the unconverted architecture loads it with ``load_state_dict(strict=True)``. Tensors are
    detached copies on the CPU."""
    model = unwrap(model)
    keyconvs = dict(key_layers(model))
    out: dict[str, Tensor] = {}
    done: set[str] = set()
    for name, tensor in model.state_dict().items():
        prefix, _, leaf = name.rpartition(".")
        if prefix in keyconvs:
            if prefix not in done:
                with torch.no_grad():
                    out[f"{prefix}.weight"] = keyconvs[prefix].weight.detach().cpu().clone()
                done.add(prefix)
            if leaf != "bias":
                continue
        out[name] = tensor.detach().cpu().clone()
    return out


def materialize(model: nn.Module) -> nn.Module:
    """Replace every :class:`KeyConv2d` of ``model`` by a plain conv holding its kernel, in place."""
    target = unwrap(model)
    for name, layer in key_layers(target):
        _set_submodule(target, name, layer.to_conv())
    return model


def key_counts(model: nn.Module, n_keys: int | None = None) -> list[int]:
    """How many channels hold each key, over all :class:`KeyConv2d` layers (empty when there are none)."""
    indices = [m.key_index.cpu() for _, m in key_layers(model)]
    if not indices:
        return []
    index = torch.cat(indices)
    index = index[index >= 0]
    return torch.bincount(index, minlength=n_keys or 0).tolist()


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Trainable parameters, all parameters, and frozen key values (buffers) of a model."""
    model = unwrap(model)
    return {
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total": sum(p.numel() for p in model.parameters()),
        "frozen_key_values": sum(m.key.numel() for _, m in key_layers(model)),
    }
