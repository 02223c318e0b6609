"""Candidate keys: decoded latents of a trained autoencoder, centred, unit-normed and (unless turned off) without
near-duplicates."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from masterkey.discover.autoencoder import TrainedAutoencoder
from masterkey.discover.settings import SPACINGS
from masterkey.errors import MasterkeyError
from masterkey.keys import KeySet
from masterkey.normalize import center_norm, filter_flags, usable_mask


@dataclass
class Candidates:
    """Candidate keys [M, k, k] (centred, unit-norm) and the latent each was decoded from."""

    keys: Tensor
    latents: Tensor

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    @property
    def kernel_size(self) -> int:
        return int(self.keys.shape[-1])

    def keyset(self, name: str = "candidates", provenance: dict | None = None) -> KeySet:
        labels = tuple(f"z={float(z):.4f}" for z in self.latents)
        return KeySet(name, self.keys, dict(provenance or {}), labels)

    def subset(self, index: Sequence[int] | Tensor) -> Candidates:
        idx = torch.as_tensor(list(index) if not isinstance(index, Tensor) else index, dtype=torch.long)
        return Candidates(self.keys[idx], self.latents[idx])


def latent_grid(latents: Tensor, n: int, spacing: str = "range") -> Tensor:
    """``n`` latents at which to decode candidates.

    ``"range"`` (default): evenly spaced between the smallest and largest latent the data were encoded to (the
    sigmoid is rarely saturated, so [0, 1] would waste candidates where no filter lies); ``"unit"``: evenly spaced
    in [0, 1] (the paper's wording); ``"quantile"``: at evenly spaced quantiles of the data's latents (denser where
    more filters lie).
    """
    if n < 1:
        raise MasterkeyError(f"number of candidates must be at least 1, got {n}")
    if spacing == "unit":
        return torch.linspace(0.0, 1.0, n, dtype=torch.float64)
    if len(latents) == 0:
        raise MasterkeyError("latent grid: no encoded filters")
    z = latents.to(torch.float64)
    if spacing == "range":
        return torch.linspace(float(z.min()), float(z.max()), n, dtype=torch.float64)
    if spacing == "quantile":
        return torch.quantile(z, torch.linspace(0.0, 1.0, n, dtype=torch.float64))
    raise MasterkeyError(f"latent spacing {spacing!r}: expected one of {', '.join(SPACINGS)}")


def normalise_candidates(filters: Tensor) -> tuple[Tensor, Tensor]:
    """Centre and unit-norm ``filters`` [M, k, k] (in float64); returns ``(normalised, usable mask)``: a decoded
    filter that is constant, all-zero or non-finite has no shape, is not usable and is zero in ``normalised``."""
    usable = usable_mask(filter_flags(filters))
    out = torch.zeros(filters.shape, dtype=torch.float32)
    out[usable] = center_norm(filters[usable].to(torch.float64)).to(torch.float32)
    return out, usable


def dedupe(keys: Tensor, threshold: float = 0.995) -> Tensor:
    """Indices (increasing) of the keys kept when each key whose |cos| with an earlier kept key is at least
    ``threshold`` is dropped (signs do not matter). ``keys`` are centred and unit-norm."""
    flat = keys.reshape(keys.shape[0], -1).to(torch.float64)
    kept: list[int] = []
    for i in range(flat.shape[0]):
        if not kept or float((flat[kept] @ flat[i]).abs().max()) < threshold:
            kept.append(i)
    return torch.tensor(kept, dtype=torch.long)


def make_candidates(ae: TrainedAutoencoder, latents: Tensor, dedupe_threshold: float | None = 0.995) -> Candidates:
    """Decode ``latents``, centre and unit-norm, drop constant outputs and near-duplicates (|cos| ≥ threshold;
    ``None`` keeps them, as the paper did)."""
    latents = torch.as_tensor(latents, dtype=torch.float64).flatten()
    keys, usable = normalise_candidates(ae.decode(latents))
    keys, latents = keys[usable], latents[usable]
    if len(keys) == 0:
        raise MasterkeyError("the autoencoder decoded only constant filters; train longer or check the bank")
    if dedupe_threshold is None:
        return Candidates(keys.contiguous(), latents)
    keep = dedupe(keys, dedupe_threshold)
    return Candidates(keys[keep].contiguous(), latents[keep])


def resample_around(latents: Tensor, n: int, width: float | None = None) -> Tensor:
    """``n`` latents spread around the given ``latents`` (the best candidates of a first round), in [0, 1].

    Each centre gets about ``n / len(latents)`` evenly spaced latents within ``± width``; by default ``width`` is half
    the smallest gap between distinct centres (so neighbourhoods do not overlap), at most 0.05. The centres
    themselves are included.
    """
    centres = torch.sort(torch.as_tensor(latents, dtype=torch.float64).flatten()).values
    if len(centres) == 0:
        raise MasterkeyError("resample: no latents to resample around")
    if n < len(centres):
        raise MasterkeyError(f"resample: {n} latents cannot cover {len(centres)} centres")
    if width is None:
        gaps = torch.diff(torch.unique(centres))
        width = min(0.05, float(gaps.min()) / 2) if len(gaps) else 0.05
        width = max(width, 1e-4)
    per = [n // len(centres) + (1 if i < n % len(centres) else 0) for i in range(len(centres))]
    out = []
    for centre, m in zip(centres.tolist(), per, strict=True):
        if m == 1:
            out.append(torch.tensor([centre], dtype=torch.float64))
            continue
        half = m // 2
        # Symmetric steps around an exact zero, so the centre itself is among them; an even count drops the
        # farthest step on the lower side.
        steps = torch.arange(-half, half + 1, dtype=torch.float64)
        offsets = width * steps[1:] / half if m % 2 == 0 else width * steps / half
        out.append(centre + offsets)
    return torch.sort(torch.cat(out).clamp(0.0, 1.0)).values
