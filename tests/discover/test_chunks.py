"""Chunked passes: covering, blocking, float64 unit rows, and memory that does not grow with the bank."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from masterkey.discover import chunks
from masterkey.discover.chunks import blocks, row_chunks, unit_rows_blocked, weighted_scatter
from masterkey.errors import MasterkeyError
from masterkey.normalize import unit_rows


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 5000), st.integers(1, 700))
def test_row_chunks_cover_every_row_once_in_balanced_pieces(n: int, size: int) -> None:
    parts = row_chunks(n, size)
    assert [i for p in parts for i in range(p.start, p.stop)] == list(range(n))
    lengths = [p.stop - p.start for p in parts]
    assert all(0 < length <= size for length in lengths)
    assert not lengths or max(lengths) - min(lengths) <= 1


def test_a_small_bank_is_one_block(small_chunks) -> None:
    assert blocks(256) == [slice(0, 256)]  # the arithmetic of a single pass
    assert [b.stop - b.start for b in blocks(257)] == [51, 51, 52, 51, 52]  # a larger bank: at most BLOCK rows each
    assert blocks(0) == []


def test_unit_rows_are_centred_unit_float64_rows_whatever_the_blocking(small_chunks) -> None:
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(300, 3, 3, generator=g) * 5 + 2
    x = unit_rows_blocked(raw)
    assert x.dtype == torch.float64 and x.shape == (300, 9)
    assert torch.equal(x, unit_rows(raw))  # row by row arithmetic: blocks change nothing
    assert torch.allclose(x.sum(dim=1), torch.zeros(300, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(x.norm(dim=1), torch.ones(300, dtype=torch.float64), atol=1e-12)
    bad = raw.clone()
    bad[7, 1, 2] = float("inf")
    with pytest.raises(MasterkeyError, match="finite and non-constant"):
        unit_rows_blocked(bad)
    bad[7] = 3.0
    with pytest.raises(MasterkeyError, match="finite and non-constant"):
        unit_rows_blocked(bad)


def test_weighted_scatter_sums_its_chunks(small_chunks) -> None:
    g = torch.Generator().manual_seed(1)
    raw = torch.randn(1000, 5, 5, generator=g)
    w = torch.rand(1000, generator=g, dtype=torch.float64)
    x = unit_rows(raw)
    expected = (x * w[:, None]).T @ x
    assert torch.allclose(weighted_scatter(raw, w), expected, atol=1e-12)
    assert torch.allclose(weighted_scatter(raw), x.T @ x / 1000, atol=1e-12)


MEMORY_SCRIPT = r"""
import json, sys
import numpy as np, torch
from masterkey.discover.baselines import spherical_kmeans
from masterkey.discover.greedy import greedy_backward
from masterkey.discover.objectives import VarianceObjective, source_weights
from masterkey.keys import load_keys
from masterkey.normalize import center_norm

def status(field):
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(field + ":")).split()[1]) * 1024

n = int(sys.argv[1])
torch.set_num_threads(1)
filters = torch.randn(n, 5, 5, generator=torch.Generator().manual_seed(0))
filters -= filters.mean(dim=(1, 2), keepdim=True)
filters /= filters.norm(dim=(1, 2), keepdim=True)
weights = source_weights(np.arange(n) % 3, n)
candidates = center_norm(torch.randn(12, 5, 5, generator=torch.Generator().manual_seed(1)))
before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets the peak (VmHWM) to the current RSS
objective = VarianceObjective(filters, candidates, weights)
greedy_backward(objective, floor=8, progress=False)
spherical_kmeans(filters, 4, weights, n_init=1, sample_size=2000, score=False)
objective.score_many([load_keys(f"random:4:{s}", kernel_size=5) for s in range(3)])
print(json.dumps({"extra": status("VmHWM") - before, "filters": filters.numel() * 4}))
"""


def _extra_memory(*sizes: int) -> list[dict[str, int]]:
    """Run :data:`MEMORY_SCRIPT` for each bank size, in fresh processes side by side (peaks must not mix)."""
    env = {**os.environ, "PYTHONPATH": str(Path(chunks.__file__).parents[2])}
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", MEMORY_SCRIPT, str(n)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for n in sizes
    ]
    results = []
    for run in runs:
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
        results.append(json.loads(out))
    return results


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to reset peak memory")
def test_memory_does_not_grow_with_the_bank() -> None:
    """The greedy objective, k-means and baseline scoring on 5x more filters: the memory they add beyond the
    filters themselves stays about the same (chunked passes; a few numbers per filter), far below 5x."""
    small, large = _extra_memory(60_000, 300_000)
    assert large["extra"] < 2.5 * small["extra"], (small, large)
    # A float64 copy of the filters alone would be twice their size.
    assert large["extra"] < 2 * large["filters"], large
