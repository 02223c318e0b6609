"""Synthetic banks made from known keys, shared by the discovery tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor

from masterkey.normalize import center_norm


def synthetic_filters(
    keys: Tensor, n: int, seed: int = 0, noise: float = 0.03, offset: float = 0.3
) -> tuple[Tensor, Tensor]:
    """``n`` filters ``a * key + b + noise`` (random key, sign, scale ``|a|`` in [0.5, 2], offset ``b``); returns
    ``(filters [n, k, k], key index [n])``."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(keys), (n,), generator=g)
    sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    a = (torch.rand(n, generator=g) * 1.5 + 0.5) * sign
    b = torch.randn(n, generator=g) * offset
    k = keys.shape[-1]
    filters = a[:, None, None] * keys[idx] + b[:, None, None] + noise * torch.randn(n, k, k, generator=g)
    return filters, idx


def random_keys(n_keys: int, k: int, seed: int) -> Tensor:
    return center_norm(torch.randn(n_keys, k, k, generator=torch.Generator().manual_seed(seed)))


@pytest.fixture
def make_filters():
    """The :func:`synthetic_filters` factory."""
    return synthetic_filters


@pytest.fixture
def make_keys():
    """The :func:`random_keys` factory."""
    return random_keys


@pytest.fixture
def tiny_bank(tmp_path: Path) -> Path:
    """A real bank on disk: two 5x5 sources from the same 8 keys and one 3x3 source."""
    from masterkey.bank import write_bank
    from masterkey.sources.base import HarvestedLayer, HarvestedSource

    keys5 = random_keys(8, 5, seed=1)
    keys3 = random_keys(4, 3, seed=2)
    sources = []
    for i, name in enumerate(("alpha", "beta")):
        filters, _ = synthetic_filters(keys5, 300, seed=10 + i)
        layers = [HarvestedLayer(f"blocks.{j}.dw", filters[j * 100 : (j + 1) * 100, None]) for j in range(3)]
        sources.append(HarvestedSource(name, "synthetic", layers))
    filters3, _ = synthetic_filters(keys3, 200, seed=12)
    sources.append(HarvestedSource("gamma", "synthetic", [HarvestedLayer("blocks.0.dw", filters3[:, None])]))
    return write_bank(sources, tmp_path / "bank").path


@pytest.fixture
def small_chunks(monkeypatch):
    """Banks of more than 256 filters count as large, walked in blocks of 64: small test banks take the paths of
    banks of millions."""
    from masterkey.discover import chunks

    monkeypatch.setattr(chunks, "ONE_PASS", 256)
    monkeypatch.setattr(chunks, "BLOCK", 64)
