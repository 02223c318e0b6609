"""Model surgery: replace depthwise conv weights by their best affine fits ``a * key + b`` from a key set.

Works on any ``nn.Module`` with depthwise convolutions (timm ConvNeXt / ConvNeXt-V2 / EfficientNet / MobileNet,
torchvision MobileNetV2 / V3, hand-written modules). Each selected filter ``y`` becomes ``a * key + b`` with the
key, ``a`` and ``b`` of its exact least-squares fit (:func:`masterkey.fit.fit_affine`); everything else in the
network stays as it is.

Layers are placed in *stages* for per-stage reports and selections. Names that say their stage (timm
``stages.S.blocks.B``, ``blocks.S.B``) are used as they are; for networks whose names do not (torchvision
``features.N``, efficientnet_pytorch ``_blocks.N``) a stage is a run of layers at one spatial resolution: a new
stage begins at every depthwise conv with stride > 1 (after the first layer).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import nn

from masterkey.depthwise import DepthwiseConv, find_depthwise, stage_block
from masterkey.errors import MasterkeyError, option
from masterkey.fit import fit_affine, fittable
from masterkey.keys import KeySet, load_keys, nearest_kernel_size
from masterkey.normalize import filter_flags, usable_mask

LayerSelector = str | Sequence[str] | Callable[[str], bool] | None
KeySpec = KeySet | str
Keys = KeySpec | Mapping[int, KeySpec]


@dataclass(frozen=True)
class LayerSwap:
    """What happened to one depthwise layer."""

    layer: str
    stage: int
    kernel_size: int
    n_filters: int
    mean_cos2: float
    keys: str
    block: int = -1
    stride: int = 1
    n_kept: int = 0  #: non-finite filters, left as they were


@dataclass
class SwapReport:
    """Per-layer results of :func:`swap_depthwise`: ``layers`` swapped, ``skipped`` ``(layer, reason)`` pairs,
    and the key set used per kernel size (``keysets``)."""

    layers: list[LayerSwap]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    keysets: dict[int, KeySet] = field(default_factory=dict)

    @property
    def n_filters(self) -> int:
        return sum(layer.n_filters for layer in self.layers)

    @property
    def mean_cos2(self) -> float:
        """Filter-weighted mean cos² over all swapped filters."""
        n = self.n_filters
        return sum(layer.mean_cos2 * layer.n_filters for layer in self.layers) / n if n else float("nan")

    @property
    def n_keys(self) -> int | str:
        """Keys per kernel size: an int when every kernel size has the same count, else ``"3x3:10 5x5:8"``."""
        counts = {k: len(ks) for k, ks in sorted(self.keysets.items())}
        if not counts:
            return 0
        if len(set(counts.values())) == 1:
            return next(iter(counts.values()))
        return " ".join(f"{k}x{k}:{n}" for k, n in counts.items())

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([layer.__dict__ for layer in self.layers])

    def per_stage(self) -> pd.DataFrame:
        """Layers, filters, kernel sizes and filter-weighted mean cos² per stage."""
        frame = self.to_frame()
        if frame.empty:
            return frame
        frame["weighted"] = frame["mean_cos2"] * frame["n_filters"]
        grouped = frame.groupby("stage", sort=True)
        out = grouped.agg(n_layers=("layer", "size"), n_filters=("n_filters", "sum"))
        out["mean_cos2"] = grouped["weighted"].sum() / out["n_filters"]
        out["kernel_sizes"] = grouped["kernel_size"].agg(lambda s: ",".join(str(k) for k in sorted(set(s))))
        out["first_layer"] = grouped["layer"].first()
        return out.reset_index()


# ---------------------------------------------------------------------- where layers sit


@dataclass(frozen=True)
class LayerPosition(DepthwiseConv):
    """A depthwise conv with its stage and block (see the module docstring for how stages are found)."""

    stage: int
    block: int

    @property
    def stride(self) -> int:
        return int(max(self.conv.stride))


def depthwise_layers(model: nn.Module) -> list[LayerPosition]:
    """Every spatial depthwise conv of ``model`` in definition order, with its stage and block."""
    convs = find_depthwise(model)
    parsed = [stage_block(dw.name) for dw in convs]
    if convs and all(stage < 0 for stage, _ in parsed):
        return _resolution_stages(convs)
    return [LayerPosition(dw.name, dw.conv, stage, block) for dw, (stage, block) in zip(convs, parsed, strict=True)]


def _resolution_stages(convs: list[DepthwiseConv]) -> list[LayerPosition]:
    out = []
    stage, block = 0, 0
    for i, dw in enumerate(convs):
        if i > 0 and max(dw.conv.stride) > 1:
            stage, block = stage + 1, 0
        out.append(LayerPosition(dw.name, dw.conv, stage, block))
        block += 1
    return out


def chosen_layers(model: nn.Module, layers: LayerSelector) -> list[LayerPosition]:
    """The depthwise layers of ``model`` picked by ``layers``; a clear error if there are none."""
    positions = depthwise_layers(model)
    if not positions:
        raise MasterkeyError(f"{type(model).__name__}: the model has no depthwise convolution to swap")
    chosen = select_layers(positions, layers)
    if not chosen:
        raise MasterkeyError("no depthwise layer matches the layer selection")
    return chosen


def select_layers(layers: Sequence[LayerPosition], selector: LayerSelector) -> list[LayerPosition]:
    """The layers a selector picks.

    ``selector`` is ``None`` (all), a list of exact names, a predicate on the name, or a string of
    comma-separated tokens, each a glob on layer names (``stages.0.*``, ``features.1?.*``), an exact name, or
    ``stage:S`` / ``stage:S-T`` (stages by index). A string token that matches nothing is an error.
    """
    if selector is None:
        return list(layers)
    if callable(selector):
        return [pos for pos in layers if selector(pos.name)]
    if isinstance(selector, str):
        return _select_by_pattern(layers, selector)
    wanted = set(selector)
    return [pos for pos in layers if pos.name in wanted]


_STAGE_TOKEN = re.compile(r"^stages?:(\d+)(?:-(\d+))?$")


def _select_by_pattern(layers: Sequence[LayerPosition], pattern: str) -> list[LayerPosition]:
    tokens = [t.strip() for t in pattern.split(",") if t.strip()]
    if not tokens:
        raise MasterkeyError(f"{option('layers', repr(pattern))}: empty layer selection")
    chosen: set[str] = set()
    for token in tokens:
        m = _STAGE_TOKEN.match(token)
        if m:
            lo = int(m.group(1))
            hi = int(m.group(2)) if m.group(2) else lo
            hits = {pos.name for pos in layers if lo <= pos.stage <= hi}
        else:
            hits = {pos.name for pos in layers if pos.name == token or fnmatch.fnmatchcase(pos.name, token)}
        if not hits:
            stages = sorted({pos.stage for pos in layers})
            names = ", ".join(pos.name for pos in layers[:3])
            raise MasterkeyError(
                f"{option('layers', repr(token))}: matches no depthwise layer (stages {stages}; layer names such as "
                f"{names}, ...)"
            )
        chosen |= hits
    return [pos for pos in layers if pos.name in chosen]


# ---------------------------------------------------------------------- keys per kernel size


def keys_for_kernel(keys: Keys, kernel_size: int, resize: bool = False) -> KeySet:
    """The key set to use for ``kernel_size`` x ``kernel_size`` filters.

    ``keys`` is one key set (built-in name, file, :class:`KeySet`) or a mapping ``{kernel_size: keys}`` (e.g.
    the per-size keys of a discover run). A mapping without this size falls back, with ``resize``, to the
    nearest size of the same parity.
    """
    if isinstance(keys, Mapping):
        what = f"keys for the {kernel_size}x{kernel_size} filters"
        size = nearest_kernel_size(keys, kernel_size, resize, what, "they are")
        return load_keys(keys[size], kernel_size=kernel_size, resize=size != kernel_size or resize)
    return load_keys(keys, kernel_size=kernel_size, resize=resize)


# ---------------------------------------------------------------------- the swap


@torch.no_grad()
def swap_depthwise(
    model: nn.Module,
    keys: Keys,
    layers: LayerSelector = None,
    resize: bool = False,
) -> SwapReport:
    """Replace, in place, every selected depthwise conv weight of ``model`` by its best affine fit from ``keys``.

    ``keys``: a key set (built-in spec, file, :class:`KeySet`) or a mapping ``{kernel_size: key set}``.
    ``layers`` selects layers (see :func:`select_layers`); all depthwise layers by default. Keys of another
    kernel size are centre-cropped / zero-padded only with ``resize``. Non-square kernels are skipped (listed in
    ``SwapReport.skipped``); non-finite filters are left as they are. Returns per-layer mean cos².
    """
    chosen = chosen_layers(model, layers)
    by_size: dict[int, KeySet] = {}
    report: list[LayerSwap] = []
    skipped: list[tuple[str, str]] = []
    for pos in chosen:
        kh, kw = pos.kernel_size
        if kh != kw:
            skipped.append((pos.name, f"non-square {kh}x{kw} kernel"))
            continue
        if kh not in by_size:
            by_size[kh] = keys_for_kernel(keys, kh, resize=resize)
        keyset = by_size[kh]
        weight = pos.conv.weight
        flat = weight.detach().reshape(weight.shape[0], kh, kw).float().cpu()
        finite = fittable(flat)  # non-finite or out-of-range filters (fit.MAX_ABS_WEIGHT) are left as they are
        fit = fit_affine(flat[finite], keyset)
        new = flat.clone()
        new[finite] = fit.a[:, None, None] * keyset.keys[fit.key] + fit.b[:, None, None]
        weight.copy_(new.reshape(weight.shape).to(device=weight.device, dtype=weight.dtype))
        cos2 = fit.cos2
        report.append(
            LayerSwap(
                pos.name,
                pos.stage,
                kh,
                int(weight.shape[0]),
                float(cos2.mean()) if len(cos2) else 1.0,
                keyset.name,
                block=pos.block,
                stride=pos.stride,
                n_kept=int((~finite).sum()),
            )
        )
    if not report:
        reasons = "; ".join(f"{name}: {why}" for name, why in skipped[:3])
        raise MasterkeyError(f"no selected depthwise layer can be swapped ({reasons})")
    return SwapReport(report, skipped, by_size)


def filters_as_keys(model: nn.Module, layers: LayerSelector = None) -> dict[int, KeySet]:
    """The model's own normalised depthwise filters as key sets, one per kernel size.

    Swapping a model with these keys fits every filter exactly (cos² = 1): the identity swap, a check that
    surgery and evaluation are wired right. All-zero, constant and non-finite filters are left out (constant
    filters are fitted exactly by ``b`` anyway).
    """
    out: dict[int, list[torch.Tensor]] = {}
    for pos in select_layers(depthwise_layers(model), layers):
        kh, kw = pos.kernel_size
        if kh != kw:
            continue
        flat = pos.conv.weight.detach().float().cpu().reshape(-1, kh, kw)
        out.setdefault(kh, []).append(flat[usable_mask(filter_flags(flat))])
    if not out:
        raise MasterkeyError(f"{type(model).__name__}: the model has no square depthwise convolution")
    return {
        k: KeySet(f"own-filters@{k}x{k}", torch.cat(parts), {"source": "the model's own filters"})
        for k, parts in sorted(out.items())
    }
