"""Model surgery: replace depthwise conv weights by their best affine fits ``a * key + b`` from a key set."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from masterkey.depthwise import find_depthwise, stage_block
from masterkey.errors import MasterkeyError
from masterkey.fit import fit_affine
from masterkey.keys import KeySet, load_keys

LayerSelector = Sequence[str] | Callable[[str], bool] | None


@dataclass(frozen=True)
class LayerSwap:
    """What happened to one depthwise layer."""

    layer: str
    stage: int
    kernel_size: int
    n_filters: int
    mean_cos2: float
    keys: str


@dataclass
class SwapReport:
    """Per-layer results of :func:`swap_depthwise`."""

    layers: list[LayerSwap]

    @property
    def n_filters(self) -> int:
        return sum(layer.n_filters for layer in self.layers)

    @property
    def mean_cos2(self) -> float:
        """Filter-weighted mean cos² over all swapped filters."""
        n = self.n_filters
        return sum(layer.mean_cos2 * layer.n_filters for layer in self.layers) / n if n else float("nan")

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([layer.__dict__ for layer in self.layers])

    def per_stage(self) -> pd.DataFrame:
        """Filters and filter-weighted mean cos² per stage."""
        frame = self.to_frame()
        if frame.empty:
            return frame
        frame["weighted"] = frame["mean_cos2"] * frame["n_filters"]
        out = frame.groupby("stage", sort=True).agg(n_layers=("layer", "size"), n_filters=("n_filters", "sum"))
        out["mean_cos2"] = frame.groupby("stage", sort=True)["weighted"].sum() / out["n_filters"]
        return out.reset_index()


def _selector(layers: LayerSelector) -> Callable[[str], bool]:
    if layers is None:
        return lambda name: True
    if callable(layers):
        return layers
    wanted = set(layers)
    return lambda name: name in wanted


@torch.no_grad()
def swap_depthwise(
    model: nn.Module,
    keys: KeySet | str,
    layers: LayerSelector = None,
    resize: bool = False,
) -> SwapReport:
    """Replace, in place, every selected depthwise conv weight of ``model`` by its best affine fit from ``keys``.

    ``layers`` selects layers by name (a list, or a predicate on the module name); all depthwise layers by
    default. Keys of another kernel size are centre-cropped / zero-padded only with ``resize``. Non-finite
    filters are left as they are. Returns per-layer mean cos².
    """
    select = _selector(layers)
    convs = [dw for dw in find_depthwise(model) if select(dw.name)]
    if not find_depthwise(model):
        raise MasterkeyError(f"{type(model).__name__}: the model has no depthwise convolution to swap")
    if not convs:
        raise MasterkeyError("no depthwise layer matches the layer selection")
    by_size: dict[int, KeySet] = {}
    report = []
    for dw in convs:
        kh, kw = dw.kernel_size
        if kh != kw:
            continue
        if kh not in by_size:
            by_size[kh] = load_keys(keys, kernel_size=kh, resize=resize)
        keyset = by_size[kh]
        weight = dw.conv.weight
        flat = weight.detach().reshape(weight.shape[0], kh, kw).float().cpu()
        fit = fit_affine(flat, keyset)
        new = fit.a[:, None, None] * keyset.keys[fit.key] + fit.b[:, None, None]
        finite = torch.isfinite(flat).flatten(1).all(dim=1)
        new[~finite] = flat[~finite]
        weight.copy_(new.reshape(weight.shape).to(weight.dtype))
        stage, _ = stage_block(dw.name)
        cos2 = fit.cos2[finite]
        report.append(
            LayerSwap(dw.name, stage, kh, int(weight.shape[0]), float(cos2.mean()) if len(cos2) else 1.0, keyset.name)
        )
    return SwapReport(report)
