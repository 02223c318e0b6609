"""Multi-process training with PyTorch DDP under ``torchrun`` (one process per GPU, or several CPU processes), on
one node or many.

``torchrun --nproc_per_node=N -m masterkey train ...`` (one node) or ``torchrun --nnodes=M --nproc_per_node=N
--rdzv_backend=c10d --rdzv_endpoint=HOST:PORT --rdzv_id=JOB -m masterkey train ...`` (on every node) sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`init_distributed` reads them, maps the process to ``cuda:LOCAL_RANK`` and joins the process group (nccl on
GPUs, gloo on CPUs). Without them everything runs in one process. The global batch is split into contiguous,
disjoint per-rank slices (:func:`masterkey.data.batches.shard_batch`); rank 0 alone logs and writes files, and hands
what it reads (checkpoints) to the other ranks, so only rank 0's node needs to see the run directory.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from masterkey.errors import MasterkeyError, option


@dataclass(frozen=True)
class Distributed:
    """Where this process sits: ``rank`` of ``world_size`` processes, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    owns_group: bool = False  # True when init_distributed created the process group (and must destroy it)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise MasterkeyError(f"environment variable {name}={value!r}: expected an integer (set by torchrun)") from None


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """``auto`` → ``cuda:<local_rank>`` when CUDA is available, else ``cpu``; ``cuda`` → ``cuda:<local_rank>``."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise MasterkeyError(
                f"device '{spec}': CUDA is not available on this machine (use {option('device', 'cpu')})"
            )
        if spec == "cuda":
            spec = f"cuda:{local_rank}"
        device = torch.device(spec)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise MasterkeyError(f"device '{spec}': only {torch.cuda.device_count()} CUDA device(s) visible")
        return device
    if spec != "cpu":
        raise MasterkeyError(f"device '{spec}': expected auto, cpu, cuda or cuda:N")
    return torch.device("cpu")


def init_distributed(device: str = "auto") -> tuple[Distributed, torch.device]:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1 (nccl for CUDA, gloo for CPU); pick the device.

    A process group that already exists (e.g. created by the caller) is reused and left for the caller to
    destroy.
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    dev = resolve_device(device, local_rank)
    if world <= 1:
        return Distributed(), dev
    if not 0 <= rank < world:
        raise MasterkeyError(f"RANK={rank} is outside 0..{world - 1} (WORLD_SIZE={world})")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    owns = False
    if not dist.is_initialized():
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if name not in os.environ:
                raise MasterkeyError(f"WORLD_SIZE={world} but {name} is not set: launch with torchrun")
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
        owns = True
    else:
        backend = dist.get_backend()
    return Distributed(rank, world, local_rank, backend, owns), dev


def shutdown(info: Distributed) -> None:
    """Leave the process group if :func:`init_distributed` created it."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: Distributed) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_sum(tensor: Tensor, info: Distributed) -> Tensor:
    """Sum ``tensor`` over ranks, in place (a no-op in one process)."""
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj: Any, info: Distributed) -> Any:
    """Rank 0's ``obj`` on every rank (errors raised on rank 0 are passed on this way)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def run_on_main(info: Distributed, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 and hand its result (or its :class:`MasterkeyError`) to every rank, so that an error
    on rank 0 stops all ranks instead of leaving them waiting. ``fn``'s result must be picklable."""
    result: Any = None
    error: str | None = None
    if info.is_main:
        try:
            result = fn()
        except MasterkeyError as exc:
            if not info.enabled:
                raise
            error = str(exc)
    error, result = broadcast_object((error, result), info)
    if error is not None:
        raise MasterkeyError(error)
    return result


def gather_objects(obj: Any, info: Distributed) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` in one process)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out
