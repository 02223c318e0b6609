"""Depthwise convolutions built from keys (docs/design.md, step 6, and beyond): the modes of ``masterkey train``.

:class:`KeyConv2d` replaces a depthwise ``nn.Conv2d`` in place. Its kernel is ``scale * key + offset`` where ``key``
[C, 1, k, k] is a frozen *buffer* (so no optimiser, weight decay or gradient ever touches it), ``offset`` is the
learnable per-channel scalar ``b`` the authors add to the kernel, ``scale`` an optional learnable per-channel ``a``
(not absorbable when a LayerNorm follows the conv, as in ConvNeXt), and the usual conv bias stays.
:class:`SpanConv2d` mixes all keys per channel (``Σ_j alpha[c, j] key_j + b``, keys frozen, ``alpha`` learnable);
:class:`ScaleSpaceConv2d` generates its keys from discrete scale-space models whose σ (and γ) are learnable.

Channel → key assignment (one callable per rule, see :func:`make_assigner`):

- published proportions (``convnextv2-b``, ``hornet-t``: :data:`PUBLISHED_PROPORTIONS`) or any given proportions,
- ``uniform`` (equal counts),
- per-layer proportions from a fit table (``fits.parquet`` of ``masterkey fit``),
- the best affine fit of the matching channel of a trained model of the same architecture (the authors' variant:
  ``a * key + b`` of the fit becomes the frozen kernel; in ``span`` mode the least-squares mix of all keys).

:func:`convert_to_keys` applies a key mode to a whole network: ``"trainable"`` (left as it is), ``"frozen"`` (keys
frozen, offsets learnable), ``"key-init"`` (plain convs initialised from the keys, then fully trainable), ``"span"``
or ``"scalespace"``. :func:`transfer_filters` copies every depthwise filter of a trained model instead
(``"transfer-frozen"`` / ``"transfer-init"``). :func:`export_state_dict` materialises the kernels so that the plain
architecture (``timm.create_model``) loads the result with ``load_state_dict(strict=True)``;
:func:`depthwise_epoch_stats` and :func:`depthwise_summary` say what span and scale-space layers learned.
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
from masterkey.keys import KeySet, load_keys, resolve_key_spec
from masterkey.networks.modes import MODES, SIGMA_SCOPES, TRANSFER_MODES

#: Filter-type proportions (percent, keys 1-8 of ``paper8``) of trained models, as the paper reports them.
PUBLISHED_PROPORTIONS: dict[str, tuple[float, ...]] = {
    "convnextv2-b": (2.77, 3.71, 3.33, 3.55, 3.08, 6.34, 24.17, 53.05),
    "hornet-t": (33.89, 13.97, 3.35, 4.64, 6.35, 5.54, 15.62, 16.64),
}


# ---------------------------------------------------------------------- the modules
class KernelConv2d(nn.Module):
    """A depthwise convolution whose kernel ``weight`` [C, 1, k, k] is computed from its own parameters and buffers.

    The base of :class:`KeyConv2d`, :class:`SpanConv2d` and :class:`ScaleSpaceConv2d`: it copies the geometry of the
    ``nn.Conv2d`` (or timm ``Conv2dSame``) it replaces, keeps its bias (``bias`` [C] or ``None``) and the buffer
    ``key_index`` [C] (the key each channel was assigned; -1 when unknown), convolves with ``weight`` and turns
    into a plain conv again (:meth:`to_conv`). Subclasses define ``weight``.
    """

    def __init__(self, conv: nn.Conv2d, key_index: Tensor | None = None) -> None:
        super().__init__()
        kind = type(conv).__name__
        if not isinstance(conv, nn.Conv2d) or kind not in ("Conv2d", "Conv2dSame"):
            raise MasterkeyError(f"cannot hold keys in a {kind}: only nn.Conv2d and timm Conv2dSame are supported")
        c = conv.out_channels
        self.in_channels, self.out_channels, self.groups = conv.in_channels, c, conv.groups
        self.kernel_size, self.stride, self.dilation = tuple(conv.kernel_size), tuple(conv.stride), tuple(conv.dilation)
        self.padding, self.padding_mode = conv.padding, conv.padding_mode
        self._same = kind == "Conv2dSame"
        self._reversed_padding_repeated_twice = getattr(conv, "_reversed_padding_repeated_twice", None)
        device = conv.weight.device
        index = torch.full((c,), -1, dtype=torch.long) if key_index is None else torch.as_tensor(key_index).long()
        self.register_buffer("key_index", index.reshape(c).to(device).clone())
        self._bias_init = None if conv.bias is None else conv.bias.detach().float().clone()

    def _register_bias(self) -> None:
        """Register ``bias`` last, so that state_dicts list it after the kernel's parameters, as a plain conv does."""
        if self._bias_init is not None:
            self.bias: nn.Parameter | None = nn.Parameter(self._bias_init.to(self.key_index.device))
        else:
            self.register_parameter("bias", None)
        del self._bias_init

    @property
    def weight(self) -> Tensor:
        raise NotImplementedError

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
        conv = conv.to(self.key_index.device)
        with torch.no_grad():
            conv.weight.copy_(self.weight)
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv

    def kernel_parameters(self) -> int:
        """Trainable parameters that shape the kernel (everything but the conv's output bias)."""
        return sum(p.numel() for n, p in self.named_parameters() if n != "bias" and p.requires_grad)


class KeyConv2d(KernelConv2d):
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
        super().__init__(conv, key_index)
        c, device = self.out_channels, self.key_index.device
        kernels = torch.as_tensor(kernels).detach().reshape(c, 1, *self.kernel_size).to(torch.float32)
        self.register_buffer("key", kernels.to(device).contiguous())
        init_offset = torch.zeros(c) if offset is None else torch.as_tensor(offset, dtype=torch.float32)
        self.offset = nn.Parameter(init_offset.reshape(c).to(device).clone())
        if learn_scale:
            init_scale = torch.ones(c) if scale is None else torch.as_tensor(scale, dtype=torch.float32)
            self.scale: nn.Parameter | None = nn.Parameter(init_scale.reshape(c).to(device).clone())
        else:
            self.register_parameter("scale", None)
        self._register_bias()

    @property
    def weight(self) -> Tensor:
        """The kernel ``scale * key + offset`` [C, 1, k, k] (differentiable in ``scale`` and ``offset``)."""
        w = self.key
        if self.scale is not None:
            w = w * self.scale[:, None, None, None]
        return w + self.offset[:, None, None, None]

    def extra_repr(self) -> str:
        c, k = self.out_channels, self.kernel_size
        return f"{c}, kernel_size={k}, stride={self.stride}, learn_scale={self.scale is not None}"


class SpanConv2d(KernelConv2d):
    """A depthwise convolution whose kernel mixes all keys: ``kernel[c] = Σ_j alpha[c, j] key_j + offset[c]``.

    Buffer ``basis`` [K, k, k] (the unit keys, frozen); parameters ``alpha`` [C, K] (the mixing weights),
    ``offset`` [C] (the ``b`` of :class:`KeyConv2d`) and ``bias``. ``key_index`` is the key each channel started
    from. With a one-hot ``alpha`` (``alpha[c, key_index[c]] = s``) the kernel is exactly ``s * key + offset``.
    """

    def __init__(
        self,
        conv: nn.Conv2d,
        basis: Tensor,
        alpha: Tensor,
        offset: Tensor | None = None,
        key_index: Tensor | None = None,
    ) -> None:
        super().__init__(conv, key_index)
        c, device = self.out_channels, self.key_index.device
        basis = torch.as_tensor(basis).detach().to(torch.float32)
        if basis.ndim != 3 or tuple(basis.shape[1:]) != self.kernel_size:
            raise MasterkeyError(
                f"span keys: expected [K, {self.kernel_size[0]}, {self.kernel_size[1]}], got {tuple(basis.shape)}"
            )
        alpha = torch.as_tensor(alpha, dtype=torch.float32).reshape(c, len(basis))
        self.register_buffer("basis", basis.to(device).contiguous())
        self.alpha = nn.Parameter(alpha.to(device).clone())
        init_offset = torch.zeros(c) if offset is None else torch.as_tensor(offset, dtype=torch.float32)
        self.offset = nn.Parameter(init_offset.reshape(c).to(device).clone())
        self._register_bias()

    @property
    def weight(self) -> Tensor:
        """``alpha @ basis + offset`` as [C, 1, k, k], in float32 even under autocast."""
        with torch.autocast(self.alpha.device.type, enabled=False):
            mixed = (self.alpha @ self.basis.flatten(1)).reshape(self.out_channels, 1, *self.kernel_size)
        return mixed + self.offset[:, None, None, None]

    def extra_repr(self) -> str:
        return f"{self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, keys={len(self.basis)}"


@dataclass(frozen=True)
class ScaleSpaceKey:
    """The generative model of one key: a scale-space ``family`` (:data:`masterkey.kernels.FAMILIES`), its scales,
    γ (``gaussian-laplacian`` only; else 0) and the sign that aligns the model with the key."""

    family: str
    sigma_x: float
    sigma_y: float
    gamma: float = 0.0
    sign: int = 1


def scalespace_models(keyset: KeySet) -> list[ScaleSpaceKey]:
    """The scale-space model of every key: the stored parameters of ``scalespace8`` (and of any key set made by
    :func:`masterkey.explain.scalespace.scalespace_keyset`), else a least-squares fit of each key
    (:func:`masterkey.explain.scalespace.fit_keyset`, the family named by its label, else the best one)."""
    rows = keyset.provenance.get("parameters") if keyset.provenance.get("source") == "scalespace" else None
    if not rows:
        from masterkey.explain.scalespace import fit_keyset

        rows = fit_keyset(keyset).to_dict(orient="records")
    if len(rows) != len(keyset):
        raise MasterkeyError(f"key set '{keyset.name}': {len(rows)} scale-space models for {len(keyset)} keys")
    out = []
    for row in rows:
        gamma = row.get("gamma")
        gamma = 0.0 if gamma is None or (isinstance(gamma, float) and math.isnan(gamma)) else float(gamma)
        out.append(
            ScaleSpaceKey(
                str(row["family"]), float(row["sigma_x"]), float(row["sigma_y"]), gamma, int(row.get("sign", 1))
            )
        )
    return out


class ScaleSpaceConv2d(KernelConv2d):
    """A depthwise convolution whose keys are discrete scale-space models with learnable scales.

    Channel ``c`` holds key ``key_index[c]``; its kernel is ``scale[c] * unit(sign * model(σx, σy, γ)) + offset[c]``
    where ``model`` is the key's family (:func:`masterkey.kernels.scalespace_kernel_torch`, differentiable) and
    ``unit`` centres and normalises as :class:`~masterkey.keys.KeySet` does. ``σ = exp(log σ)`` (always positive;
    Adam then moves σ by ratios). Scope ``key``: one entry of ``log_sigma_x`` / ``log_sigma_y`` per key of the set
    [K], shared by all channels of the layer holding it; scope ``channel``: one per channel [C]. ``gamma`` holds γ
    for the rows of the ``gaussian-laplacian`` family only. Families and signs are fixed; ``scale`` is a buffer
    (``learn_scale``: a parameter). The model kernels are computed in float64 outside autocast.
    """

    def __init__(
        self,
        conv: nn.Conv2d,
        models: Sequence[ScaleSpaceKey],
        key_index: Tensor,
        scope: str = "key",
        scale: Tensor | None = None,
        offset: Tensor | None = None,
        learn_scale: bool = False,
    ) -> None:
        super().__init__(conv, key_index)
        if scope not in SIGMA_SCOPES:
            raise MasterkeyError(f"sigma scope '{scope}': expected one of {', '.join(SIGMA_SCOPES)}")
        if self.kernel_size[0] != self.kernel_size[1]:
            raise MasterkeyError(f"scale-space keys are k x k; this layer is {self.kernel_size}")
        c, device = self.out_channels, self.key_index.device
        self.scope = scope
        rows = list(models) if scope == "key" else [models[int(i)] for i in self.key_index.tolist()]
        self.families = tuple(m.family for m in rows)
        self.register_buffer("group", (self.key_index if scope == "key" else torch.arange(c, device=device)).clone())
        # 1-D parameters: the optimiser's grouping gives them no weight decay (which would pull log σ to 0).
        for axis in ("x", "y"):
            sigma = torch.tensor([getattr(m, f"sigma_{axis}") for m in rows], dtype=torch.float64)
            setattr(self, f"log_sigma_{axis}", nn.Parameter(sigma.clamp_min(1e-3).log().float().to(device)))
        gl_rows = [i for i, f in enumerate(self.families) if f == "gaussian-laplacian"]
        if gl_rows:
            gamma = torch.tensor([rows[i].gamma for i in gl_rows], dtype=torch.float32, device=device)
            self.gamma: nn.Parameter | None = nn.Parameter(gamma)
        else:  # no empty parameter: DDP would wait for its gradient
            self.register_parameter("gamma", None)
        self.register_buffer("sign", torch.tensor([float(m.sign) for m in rows], device=device))
        init_scale = torch.ones(c) if scale is None else torch.as_tensor(scale, dtype=torch.float32).reshape(c)
        if learn_scale:
            self.scale = nn.Parameter(init_scale.to(device).clone())
        else:
            self.register_buffer("scale", init_scale.to(device).clone())
        init_offset = torch.zeros(c) if offset is None else torch.as_tensor(offset, dtype=torch.float32)
        self.offset = nn.Parameter(init_offset.reshape(c).to(device).clone())
        self._register_bias()
        # Rows of each family, in one order, and where each row lands again (for one gather per forward).
        by_family: dict[str, list[int]] = {}
        for i, family in enumerate(self.families):
            by_family.setdefault(family, []).append(i)
        self._groups = [(family, len(ids)) for family, ids in by_family.items()]
        order = [i for ids in by_family.values() for i in ids]
        self.register_buffer("_order", torch.tensor(order, dtype=torch.long, device=device), persistent=False)
        self.register_buffer("_inverse", torch.argsort(self._order), persistent=False)
        position = torch.full((len(rows),), -1, dtype=torch.long)
        position[gl_rows] = torch.arange(len(gl_rows))
        self.register_buffer("_gamma_row", position.to(device), persistent=False)

    @property
    def sigma(self) -> Tensor:
        """(σx, σy) per row [G, 2]."""
        return torch.stack([self.log_sigma_x, self.log_sigma_y], dim=1).exp()

    def row_gamma(self) -> Tensor:
        """γ per parameter row [G] (NaN for rows whose family has none)."""
        out = torch.full((len(self.families),), math.nan, device=self._gamma_row.device)
        if self.gamma is not None:
            rows = self._gamma_row >= 0
            out[rows] = self.gamma.detach()[self._gamma_row[rows]]
        return out

    def unit_keys(self) -> Tensor:
        """The centred, unit-norm, sign-aligned model kernel of every row [G, k, k] (float64)."""
        from masterkey.kernels import scalespace_kernel_torch

        k = self.kernel_size[0]
        with torch.autocast(self.log_sigma_x.device.type, enabled=False):
            sigma_x = self.log_sigma_x.double().exp()[self._order]
            sigma_y = self.log_sigma_y.double().exp()[self._order]
            gamma_rows = self._gamma_row[self._order]
            parts, start = [], 0
            for family, count in self._groups:
                rows = slice(start, start + count)
                gamma = None
                if family == "gaussian-laplacian" and self.gamma is not None:
                    gamma = self.gamma.double()[gamma_rows[rows]]
                parts.append(scalespace_kernel_torch(family, sigma_x[rows], sigma_y[rows], gamma, k))
                start += count
            raw = torch.cat(parts)[self._inverse].flatten(1)
            centred = raw - raw.mean(dim=1, keepdim=True)
            unit = centred / torch.linalg.vector_norm(centred, dim=1, keepdim=True).clamp_min(1e-30)
            return (unit * self.sign.double()[:, None]).reshape(-1, k, k)

    @property
    def weight(self) -> Tensor:
        """``scale * unit_key + offset`` per channel [C, 1, k, k] (float32; differentiable in σ, γ, offset)."""
        keys = self.unit_keys()[self.group].float()
        return (keys * self.scale[:, None, None] + self.offset[:, None, None])[:, None]

    def extra_repr(self) -> str:
        return f"{self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, scope={self.scope}"


# ---------------------------------------------------------------------- assignment rules
@dataclass
class KeyAssignment:
    """Which key each channel of one layer gets, and optionally the fitted ``scale`` / ``offset`` per channel (and
    the trained kernels they were fitted to)."""

    key_index: Tensor
    scale: Tensor | None = None
    offset: Tensor | None = None
    source: Tensor | None = None  # the trained kernels [C, 1, k, k] the assignment was fitted to, if any


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


def source_kernel(state: Mapping[str, Tensor], layer: str, shape: Sequence[int], source: str) -> Tensor:
    """The depthwise kernel of ``layer`` in the state_dict ``state`` of a trained model (float32), which must have
    ``shape``; a :class:`MasterkeyError` naming the layer otherwise."""
    trained = state.get(f"{layer}.weight")
    if trained is None:
        raise MasterkeyError(f"{source}: has no weight for layer '{layer}' (is it the same architecture?)")
    if tuple(trained.shape) != tuple(shape):
        raise MasterkeyError(
            f"{source}: layer '{layer}' is {tuple(trained.shape)} there but {tuple(shape)} in the model"
        )
    return trained.detach().float()


def _model_assigner(state: Mapping[str, Tensor], source: str) -> Assigner:
    def assign(layer: str, weight: Tensor, keyset: KeySet, generator: torch.Generator) -> KeyAssignment:
        trained = source_kernel(state, layer, weight.shape, source)
        fitted = assign_from_model(trained, keyset)
        fitted.source = trained
        return fitted

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


def span_coefficients(weight: Tensor, keyset: KeySet) -> tuple[Tensor, Tensor]:
    """Least-squares ``alpha`` [C, K] and ``offset`` [C] with ``weight[c] ≈ Σ_j alpha[c, j] key_j + offset[c]``
    for trained kernels ``weight`` [C, 1, k, k] (float64 solve; keys are centred, so ``offset`` is the mean)."""
    flat = weight.detach().double().reshape(weight.shape[0], -1)
    offset = flat.mean(dim=1)
    basis = keyset.keys.double().reshape(len(keyset), -1)  # [K, k*k]
    alpha = torch.linalg.lstsq(basis.T, (flat - offset[:, None]).T).solution.T  # [C, K]
    return alpha.float(), offset.float()


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
    sigma_scope: str = "key",
) -> list[ConvertedLayer]:
    """Give every spatial depthwise conv of ``model`` keys, in place; returns what each layer got.

    ``mode``: ``"trainable"`` leaves the model unchanged; ``"frozen"`` swaps in :class:`KeyConv2d` (keys frozen,
    per-channel offset learnable, per-channel scale too with ``learn_scale``); ``"key-init"`` writes the keys into
    the plain conv weights, which then train as usual; ``"span"`` swaps in :class:`SpanConv2d` (all keys frozen,
    mixing weights learnable, starting one-hot at the assigned key, or at the least-squares mix of the trained
    kernel with a ``model:`` assignment); ``"scalespace"`` swaps in :class:`ScaleSpaceConv2d` (the keys' scale-space
    models with learnable σ per key or per channel, ``sigma_scope``). Keys are unit-norm and multiplied by
    ``key_gain``, except with a ``model:`` assignment, whose fitted ``a * key + b`` is used as it is. Keys whose
    kernel size differs from a layer's are refused unless ``resize`` (centre crop / zero pad; scale-space models
    are generated at every size). Assignment is seeded per layer. The ``transfer-*`` modes are
    :func:`transfer_filters`.
    """
    if mode not in MODES:
        raise MasterkeyError(f"mode '{mode}': expected one of {', '.join(MODES)}")
    if mode in TRANSFER_MODES:
        raise MasterkeyError(f"mode '{mode}' copies the filters of a trained model: use transfer_filters")
    if mode == "trainable":
        return []
    if not math.isfinite(key_gain) or key_gain == 0:
        raise MasterkeyError(f"key gain {key_gain}: must be a finite non-zero number")
    if sigma_scope not in SIGMA_SCOPES:
        raise MasterkeyError(f"sigma scope '{sigma_scope}': expected one of {', '.join(SIGMA_SCOPES)}")
    base = load_keys(keys)
    per_size = isinstance(keys, str) and isinstance(resolve_key_spec(keys), dict)  # a discover run, keys per size
    models = scalespace_models(base) if mode == "scalespace" else None
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
            if models is not None:  # the layer's keys are the models at its size (what the assigner fits to)
                keyset = _model_keyset(models, base, kh)
            else:
                keyset = load_keys(keys if per_size else base, kernel_size=kh, resize=resize)
        except MasterkeyError as exc:
            raise MasterkeyError(f"layer {dw.name}: {exc}") from None
        result = assign(dw.name, dw.conv.weight.detach().cpu(), keyset, layer_generator(seed, dw.name))
        new = _keyed_layer(dw.conv, mode, keyset, result, models, key_gain, learn_scale, sigma_scope)
        if new is not None:
            _set_submodule(model, dw.name, new)
        index = result.key_index.long()
        counts = torch.bincount(index, minlength=len(keyset)).tolist()
        converted.append(ConvertedLayer(dw.name, len(index), kh, counts))
    return converted


def _model_keyset(models: Sequence[ScaleSpaceKey], base: KeySet, size: int) -> KeySet:
    """The scale-space models of ``base`` generated at ``size`` (centred, unit-norm) as a key set."""
    from masterkey.kernels import scalespace_kernel

    kernels = [m.sign * scalespace_kernel(m.family, m.sigma_x, m.sigma_y, m.gamma, size) for m in models]
    return KeySet(f"{base.name}@scalespace", torch.from_numpy(np.stack(kernels)), labels=base.labels)


def _keyed_layer(
    conv: nn.Conv2d,
    mode: str,
    keyset: KeySet,
    result: KeyAssignment,
    models: list[ScaleSpaceKey] | None,
    key_gain: float,
    learn_scale: bool,
    sigma_scope: str,
) -> nn.Module | None:
    """The module that replaces ``conv`` in ``mode`` (None for ``key-init``, which writes into ``conv``)."""
    index = result.key_index.long()
    unit = keyset.keys[index]  # [C, k, k]
    fitted = result.scale is not None
    scale = result.scale if fitted else torch.full((len(index),), float(key_gain))
    offset = result.offset if result.offset is not None else torch.zeros(len(index))
    if mode == "frozen":
        if learn_scale:
            return KeyConv2d(conv, unit, index, learn_scale=True, scale=scale, offset=offset)
        return KeyConv2d(conv, unit * scale[:, None, None], index, offset=offset)
    if mode == "span":
        if result.source is not None:
            alpha, offset = span_coefficients(result.source, keyset)
        else:
            alpha = torch.zeros(len(index), len(keyset))
            alpha[torch.arange(len(index)), index] = scale.float()
        return SpanConv2d(conv, keyset.keys, alpha, offset, index)
    if mode == "scalespace":
        assert models is not None
        return ScaleSpaceConv2d(conv, models, index, sigma_scope, scale, offset, learn_scale)
    with torch.no_grad():
        kernel = unit * scale[:, None, None] + offset[:, None, None]
        conv.weight.copy_(kernel.reshape(conv.weight.shape).to(conv.weight))
    return None


def _looks_depthwise(name: str, tensor: Tensor) -> bool:
    return name.endswith(".weight") and tensor.ndim == 4 and tensor.shape[1] == 1 and tensor.shape[-1] > 1


def transfer_filters(model: nn.Module, weights: str | Path, *, freeze: bool) -> list[ConvertedLayer]:
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
    converted = []
    for dw in layers:
        with torch.no_grad():
            dw.conv.weight.copy_(source_kernel(state, dw.name, dw.conv.weight.shape, source))
        dw.conv.weight.requires_grad_(not freeze)
        converted.append(ConvertedLayer(dw.name, dw.conv.out_channels, dw.kernel_size[0]))
    return converted


def key_layers(model: nn.Module) -> list[tuple[str, KernelConv2d]]:
    """The key-holding layers (:class:`KeyConv2d`, :class:`SpanConv2d`, :class:`ScaleSpaceConv2d`) of a model
    (DDP / compile wrappers looked through)."""
    return [(n, m) for n, m in unwrap(model).named_modules() if isinstance(m, KernelConv2d)]


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
    """A plain state_dict of ``model``: each key-holding layer becomes ``weight`` (its materialised kernel) and
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
    """Replace every key-holding layer of ``model`` by a plain conv holding its kernel, in place."""
    target = unwrap(model)
    for name, layer in key_layers(target):
        _set_submodule(target, name, layer.to_conv())
    return model


def key_counts(model: nn.Module, n_keys: int | None = None) -> list[int]:
    """How many channels hold each key, over all key-holding layers (empty when there are none)."""
    indices = [m.key_index.cpu() for _, m in key_layers(model)]
    if not indices:
        return []
    index = torch.cat(indices)
    index = index[index >= 0]
    return torch.bincount(index, minlength=n_keys or 0).tolist()


def parameter_counts(model: nn.Module) -> dict[str, int | float]:
    """Trainable parameters, all parameters, frozen key values (buffers), and the depthwise kernels' share:
    ``depthwise_trainable`` (trainable parameters that shape depthwise kernels — conv weights, offsets, scales,
    mixing weights, σ, γ — not the conv's output bias), ``depthwise_channels`` and their ratio
    ``depthwise_trainable_per_channel``."""
    model = unwrap(model)
    layers = key_layers(model)
    kernel = sum(m.kernel_parameters() for _, m in layers)
    channels = sum(m.out_channels for _, m in layers)
    for dw in find_depthwise(model):
        kernel += dw.conv.weight.numel() if dw.conv.weight.requires_grad else 0
        channels += dw.conv.out_channels
    return {
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total": sum(p.numel() for p in model.parameters()),
        "frozen_key_values": sum(m.key.numel() for _, m in layers if isinstance(m, KeyConv2d)),
        "depthwise_trainable": kernel,
        "depthwise_channels": channels,
        "depthwise_trainable_per_channel": kernel / channels if channels else 0.0,
    }


# ---------------------------------------------------------------------- what the keys learned
def _scalespace_rows(layer: ScaleSpaceConv2d) -> tuple[Tensor, Tensor]:
    """Key of each parameter row, and whether a channel uses the row (key scope: keys nobody holds are idle)."""
    if layer.scope == "channel":
        return layer.key_index.cpu(), torch.ones(layer.out_channels, dtype=torch.bool)
    n = len(layer.families)
    used = torch.bincount(layer.key_index.cpu().clamp_min(0), minlength=n) > 0
    return torch.arange(n), used


@torch.no_grad()
def depthwise_epoch_stats(model: nn.Module) -> dict[str, float]:
    """Scalars for a training log row (empty for models without span / scale-space layers).

    Scale-space layers: ``dw_sigma_x_kJ``, ``dw_sigma_y_kJ`` (and ``dw_gamma_kJ`` for centre-surround keys): the
    mean over every parameter row of key J in use (one per layer with scope ``key``, one per channel with scope
    ``channel``). Span layers: ``dw_alpha_kJ``, the mean |alpha| of key J over all channels, and ``dw_alpha_own``,
    the mean share of a channel's total |alpha| on the key it started from (1 for one-hot).
    """
    sums: dict[str, list[float]] = {}

    def add(name: str, values: Tensor) -> None:
        total = sums.setdefault(name, [0.0, 0.0])
        total[0] += float(values.double().sum())
        total[1] += values.numel()

    for _, layer in key_layers(model):
        if isinstance(layer, ScaleSpaceConv2d):
            keys, used = _scalespace_rows(layer)
            sigma = layer.sigma.cpu()
            gamma = layer.row_gamma().cpu()
            for j in keys[used].unique().tolist():
                rows = used & (keys == j)
                add(f"dw_sigma_x_k{j + 1}", sigma[rows, 0])
                add(f"dw_sigma_y_k{j + 1}", sigma[rows, 1])
                if not bool(gamma[rows].isnan().all()):
                    add(f"dw_gamma_k{j + 1}", gamma[rows])
        elif isinstance(layer, SpanConv2d):
            magnitude = layer.alpha.abs().cpu()
            for j in range(magnitude.shape[1]):
                add(f"dw_alpha_k{j + 1}", magnitude[:, j])
            own = layer.key_index.cpu()
            if bool((own >= 0).all()):
                share = magnitude[torch.arange(len(own)), own] / magnitude.sum(dim=1).clamp_min(1e-12)
                add("dw_alpha_own", share)
    return {name: total / count for name, (total, count) in sorted(sums.items(), key=lambda kv: _stat_order(kv[0]))}


def _stat_order(name: str) -> tuple[str, int]:
    found = re.fullmatch(r"(.*_k)(\d+)", name)
    return (found.group(1), int(found.group(2))) if found else (name, 0)


@torch.no_grad()
def depthwise_summary(model: nn.Module) -> list[dict[str, Any]]:
    """Per span / scale-space layer, what it learned: span: ``mean_abs_alpha`` per key (which keys the layer
    uses); scale-space: per key in use, the mean ``sigma_x``, ``sigma_y`` (and ``gamma``) over its rows (one row
    with scope ``key``). Empty for other models."""
    out: list[dict[str, Any]] = []
    for name, layer in key_layers(model):
        entry: dict[str, Any] = {"layer": name, "channels": layer.out_channels, "kernel_size": layer.kernel_size[0]}
        if isinstance(layer, SpanConv2d):
            entry["mean_abs_alpha"] = layer.alpha.abs().mean(dim=0).cpu().tolist()
        elif isinstance(layer, ScaleSpaceConv2d):
            keys, used = _scalespace_rows(layer)
            sigma = layer.sigma.cpu().double()
            n_keys = int(keys.max()) + 1 if len(keys) else 0
            entry.update({"scope": layer.scope, "sigma_x": [None] * n_keys, "sigma_y": [None] * n_keys})
            entry["gamma"] = [None] * n_keys
            gamma = layer.row_gamma().cpu().double()
            for j in keys[used].unique().tolist():
                rows = used & (keys == j)
                entry["sigma_x"][j] = float(sigma[rows, 0].mean())
                entry["sigma_y"][j] = float(sigma[rows, 1].mean())
                if not bool(gamma[rows].isnan().all()):
                    entry["gamma"][j] = float(gamma[rows].mean())
        else:
            continue
        out.append(entry)
    return out
