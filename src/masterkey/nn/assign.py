"""Which key each channel of a layer holds: the assignment rules (one callable per rule, see :func:`make_assigner`).

- ``auto`` (the default): the paper's published ConvNeXtV2-B proportions for the paper's own keys (``paper8`` and
  its scale-space models ``scalespace8``), ``uniform`` for every other key set (:func:`resolve_assignment`); the
  published proportions describe those eight filter types, not the keys of another set;
- published proportions (``convnextv2-b``, ``hornet-t``: :data:`PUBLISHED_PROPORTIONS`) or any given proportions,
- ``uniform`` (equal counts),
- per-layer proportions from a fit table (``fits.parquet`` of ``masterkey fit``),
- the best affine fit of the matching channel of a trained model of the same architecture (the authors' variant:
  ``a * key + b`` of the fit becomes the frozen kernel; in ``span`` mode the least-squares mix of all keys).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from masterkey.errors import MasterkeyError
from masterkey.keys import KeySet, load_keys

#: Filter-type proportions (percent, keys 1-8 of ``paper8``) of trained models, as the paper reports them.
PUBLISHED_PROPORTIONS: dict[str, tuple[float, ...]] = {
    "convnextv2-b": (2.77, 3.71, 3.33, 3.55, 3.08, 6.34, 24.17, 53.05),
    "hornet-t": (33.89, 13.97, 3.35, 4.64, 6.35, 5.54, 15.62, 16.64),
}

#: The assignment ``auto`` gives the paper's own keys; every other key set gets ``uniform``.
PAPER_KEYS_ASSIGNMENT = "convnextv2-b"
#: The built-in key sets that are the paper's own keys (whose filter types the published proportions count).
PAPER_KEY_SETS = ("paper8", "scalespace8")


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


def is_paper_keys(keys: KeySet | str | Mapping[int, Any]) -> bool:
    """Whether ``keys`` are the paper's own keys: the values of ``paper8`` or ``scalespace8`` at 7x7, whatever the
    key set or file is called (a discover run's keys per kernel size never are)."""
    if isinstance(keys, Mapping):
        return False
    try:
        keyset = load_keys(keys)
    except MasterkeyError:
        return False
    for name in PAPER_KEY_SETS:
        paper = load_keys(name)
        if keyset.keys.shape == paper.keys.shape and torch.allclose(keyset.keys, paper.keys, atol=1e-6):
            return True
    return False


def resolve_assignment(spec: str | Sequence[float] | Assigner, keys: KeySet | str | Mapping[int, Any]) -> Any:
    """``spec`` with ``auto`` decided for ``keys``: :data:`PAPER_KEYS_ASSIGNMENT` for the paper's own keys
    (:func:`is_paper_keys`), ``uniform`` otherwise. Other specs are returned as they are."""
    if isinstance(spec, str) and spec == "auto":
        return PAPER_KEYS_ASSIGNMENT if is_paper_keys(keys) else "uniform"
    return spec


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
    """Proportions of keys among the rows of a fit table (``layer`` and ``key_index`` columns, or the 0-based ``key``
    of tables written before) for one layer."""
    from masterkey.runformats import with_key_columns

    rows, _ = with_key_columns(table[table["layer"] == layer])
    if len(rows) == 0:
        return np.zeros(0)
    keys = rows["key_index"].to_numpy().astype(np.int64)
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


def span_coefficients(weight: Tensor, keyset: KeySet) -> tuple[Tensor, Tensor]:
    """Least-squares ``alpha`` [C, K] and ``offset`` [C] with ``weight[c] ≈ Σ_j alpha[c, j] key_j + offset[c]``
    for trained kernels ``weight`` [C, 1, k, k] (float64 solve; keys are centred, so ``offset`` is the mean)."""
    flat = weight.detach().double().reshape(weight.shape[0], -1)
    offset = flat.mean(dim=1)
    basis = keyset.keys.double().reshape(len(keyset), -1)  # [K, k*k]
    alpha = torch.linalg.lstsq(basis.T, (flat - offset[:, None]).T).solution.T  # [C, K]
    return alpha.float(), offset.float()


def layer_generator(seed: int, layer: str) -> torch.Generator:
    """A generator for one layer's assignment, independent of the other layers (stable across runs)."""
    digest = hashlib.sha256(f"{seed}:{layer}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


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


# ---------------------------------------------------------------------- the rules
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
        import pyarrow.parquet as pq

        names = pq.read_schema(table_path).names
        key = "key_index" if "key_index" in names else "key"  # files written before key_index: 'key', 0-based
        table = pd.read_parquet(table_path, columns=["layer", key])
    except Exception as exc:
        raise MasterkeyError(f"{table_path}: not a fit table with 'layer' and 'key_index' columns ({exc})") from None
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
    ``auto`` must be resolved for a key set first (:func:`resolve_assignment`).
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
    if spec == "auto":
        raise MasterkeyError("assignment 'auto' depends on the keys: resolve it first (resolve_assignment)")
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
    known = ", ".join(["auto", *PUBLISHED_PROPORTIONS, "uniform", "proportions:P1,...", "fit:FITDIR", "model:WEIGHTS"])
    raise MasterkeyError(f"assignment '{spec}': unknown (expected one of {known})")
