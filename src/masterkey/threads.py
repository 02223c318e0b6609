"""One way to set torch's CPU thread count for a block of work: :func:`torch_threads`, a context manager that is
also a decorator. Stages enter it once at their boundary (``discover`` with its ``cpu_threads`` setting); the
training loop can do the same.

Why discovery uses one thread by default: its matrices are tiny, a second thread gains nothing on them, and when the
cores are shared, OpenMP threads that wait for each other made each autoencoder step several times slower (see
``bench/results/discover.md``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["torch_threads"]


@contextlib.contextmanager
def torch_threads(n: int | None, device: str | torch.device | None = None) -> Iterator[None]:
    """Run the block with ``n`` torch CPU threads, restoring the setting afterwards.

    ``n`` None, or a ``device`` that is not the CPU, leaves torch's setting alone. Usable as a decorator with a fixed
    count (``@torch_threads(1)``); nested blocks with the same count cost nothing."""
    import torch

    if n is None or (device is not None and torch.device(device).type != "cpu") or n == torch.get_num_threads():
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
