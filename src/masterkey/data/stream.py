"""Images decoded on the fly by DataLoader worker processes, for data sets too large to hold decoded in memory.

- :class:`StreamedImages`: evaluation images with fixed geometry (resize, centre crop; the very
  :func:`~masterkey.data.decode.decode_image` of the in-memory path), interchangeable with an in-memory
  :class:`~masterkey.data.memory.ImageSet` wherever images are evaluated (``labels``, ``classes``, ``root``,
  ``len``, ``subset``).
- :func:`image_batches`: the one loop over uint8 batches that every evaluation uses, for either kind of images.
- :func:`choose_data_mode`: ``auto`` / ``memory`` / ``stream``, decided from the decoded size and a memory budget.
- :func:`check_workers`: the bound on every worker count.

An evaluation never drops an image: an unreadable one stops it with the file named.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from masterkey.data.decode import check_workers, decode_image, different_sizes
from masterkey.data.memory import ImageSet
from masterkey.data.samples import Samples, worker_init
from masterkey.errors import MasterkeyError, option
from masterkey.progress import progress_bar

log = logging.getLogger("masterkey")
DATA_MODES = ("auto", "memory", "stream")


# ---------------------------------------------------------------------- evaluation images
class StreamedImages(torch.utils.data.Dataset):
    """Evaluation images decoded when read: sample ``i`` is ``decode_image(file i, resize, crop, interpolation)``,
    exactly the uint8 pixels the in-memory :class:`~masterkey.data.memory.ImageSet` would hold. ``size_hint``: what
    the error for images of different sizes advises (which option gives them one size)."""

    def __init__(
        self,
        samples: Samples,
        resize: int | None,
        crop: int | None,
        interpolation: str = "bilinear",
        size_hint: str = "",
    ) -> None:
        self.samples = samples
        self.resize, self.crop, self.interpolation = resize, crop, interpolation
        self.size_hint = size_hint

    @property
    def labels(self) -> Tensor:
        return self.samples.labels

    @property
    def classes(self) -> list[str]:
        return self.samples.classes

    @property
    def root(self) -> str:
        return self.samples.root

    def __len__(self) -> int:
        return len(self.samples)

    def subset(self, index: Tensor | np.ndarray | Sequence[int]) -> StreamedImages:
        return StreamedImages(self.samples.subset(index), self.resize, self.crop, self.interpolation, self.size_hint)

    def __getitem__(self, i: int) -> tuple[Tensor | None, int, str]:
        label = int(self.samples.labels[i])
        try:
            image = decode_image(
                self.samples.open(i), self.resize, self.crop, self.interpolation, name=self.samples.name(i)
            )
        except MasterkeyError as exc:
            return None, label, str(exc)
        return image, label, ""

    def image_shape(self) -> tuple[int, int, int]:
        """``(3, H, W)`` of the decoded images (from the geometry, or the first image's header)."""
        if self.crop:
            return 3, self.crop, self.crop
        h, w = self.samples.first_image_size()
        if self.resize:
            short = min(h, w)
            h, w = round(h * self.resize / short), round(w * self.resize / short)
        return 3, h, w


#: Images an evaluation reads: decoded in memory, or streamed.
Images = ImageSet | StreamedImages


def default_workers() -> int:
    """DataLoader worker processes: the CPUs this process may use, shared by the ranks of this node, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(1, min(8, cpus // local))


def _collate(items: list[tuple[Tensor | None, int, str]]) -> tuple[Tensor | None, Tensor, list[str], set]:
    """``(images, labels, errors, shapes)``: a batch, or the decoding errors, or the several shapes it holds."""
    errors = [err for _, _, err in items if err]
    labels = torch.tensor([lab for _, lab, _ in items])
    if errors:
        return None, labels, errors, set()
    images = [img for img, _, _ in items]
    shapes = {tuple(img.shape) for img in images if img is not None}
    if len(shapes) > 1:
        return None, labels, [], shapes
    return torch.stack(images), labels, [], shapes


def image_batches(
    images: Images,
    batches: Iterable[Tensor | range | Sequence[int]],
    device: str | torch.device = "cpu",
    *,
    workers: int | None = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """uint8 ``[B, 3, H, W]`` images and labels on ``device``, one pair per index batch of ``batches``.

    In-memory images are sliced (ranges) or gathered; streamed ones are decoded by ``workers`` DataLoader processes
    (default :func:`default_workers`), with pinned memory and non-blocking copies on CUDA. An image that cannot be
    decoded stops the evaluation with its file named: evaluations never drop images.
    """
    device = torch.device(device)
    if isinstance(images, ImageSet):
        for idx in batches:
            if isinstance(idx, range) and idx.step == 1:
                x, y = images.images[idx.start : idx.stop], images.labels[idx.start : idx.stop]
            else:
                index = torch.as_tensor(idx, dtype=torch.long, device=images.images.device)
                x, y = images.images[index], images.labels[index.to(images.labels.device)]
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        return
    index_lists = [list(map(int, idx)) for idx in batches]
    if not index_lists:
        return
    n_workers = default_workers() if check_workers(workers) is None else workers
    loader = torch.utils.data.DataLoader(
        images,
        batch_sampler=index_lists,
        num_workers=n_workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
        worker_init_fn=worker_init if n_workers else None,
        generator=torch.Generator().manual_seed(0),  # not the global RNG: evaluating must not change training
    )
    for x, y, errors, shapes in loader:
        if errors:
            raise MasterkeyError(
                f"{errors[0]}; the evaluation stops (it counts every image: remove or repair the file)"
            )
        if x is None:
            raise different_sizes(images.root, shapes, images.size_hint)
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    if n_workers == 0:
        images.samples.worker_init()


def decode_all(
    images: StreamedImages, workers: int | None = None, batch_size: int = 256, progress: bool = False
) -> ImageSet:
    """Decode every image of ``images`` into one uint8 tensor (an in-memory :class:`ImageSet`); ``progress``: a
    bar counting the images decoded."""
    if len(images) == 0:
        raise MasterkeyError(f"{images.root}: no images")
    parts = []
    with progress_bar(total=len(images), desc=f"decode {images.root}", unit="image", enabled=progress) as bar:
        for x, _ in image_batches(images, ranges(len(images), batch_size), workers=workers):
            parts.append(x)
            bar.update(len(x))
    return ImageSet(torch.cat(parts).contiguous(), images.labels.clone(), images.classes, images.root)


def ranges(n: int, batch_size: int) -> list[range]:
    """``range(0, b), range(b, 2b), ...`` covering ``n`` items."""
    return [range(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


# ---------------------------------------------------------------------- memory or stream
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)


def parse_size(text: str, what: str | None = None) -> int:
    """``"8G"``, ``"512M"``, ``"1.5GiB"``, ``"1000000"`` → bytes (K/M/G/T are powers of 1024); ``what`` names the
    value in errors (by default the ``memory_budget`` option)."""
    what = what or option("memory_budget")
    m = _SIZE.match(str(text))
    if not m:
        raise MasterkeyError(f"{what} {text!r}: expected a size such as 16G, 512M or a number of bytes")
    value = float(m.group(1)) * 1024 ** "_kmgt".index(m.group(2).lower() or "_")
    if value < 1:
        raise MasterkeyError(f"{what} {text!r}: must be at least one byte")
    return int(value)


def format_bytes(n: float) -> str:
    """Bytes in binary units: ``"3.0 GiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def memory_budget(budget: str | int | None = None) -> tuple[int, str]:
    """Bytes the decoded images may take in host memory, and where the number comes from: ``budget`` (a size), else
    ``$MASTERKEY_MEMORY_BUDGET``, else half of the memory available now (``MemAvailable`` of /proc/meminfo)."""
    if budget is not None:
        return (budget if isinstance(budget, int) else parse_size(budget)), option("memory_budget")
    env = os.environ.get("MASTERKEY_MEMORY_BUDGET")
    if env:
        return parse_size(env, "MASTERKEY_MEMORY_BUDGET"), "MASTERKEY_MEMORY_BUDGET"
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            available = 8 * 1024**3
    return available // 2, "half of the available memory"


@dataclass(frozen=True)
class DataMode:
    """The data path chosen (``memory`` or ``stream``) and one line saying why."""

    mode: str
    reason: str

    @property
    def stream(self) -> bool:
        return self.mode == "stream"


def choose_data_mode(
    requested: str,
    n_images: int,
    image_shape: tuple[int, int, int],
    *,
    what: str,
    budget: str | int | None = None,
    device: torch.device | None = None,
    needs_stream: str | None = None,
) -> DataMode:
    """``auto``: memory when the decoded images (``n_images`` x ``image_shape`` uint8 bytes) fit the host memory
    budget (:func:`memory_budget`) and, when they are to live on a CUDA ``device``, half of its free memory;
    stream otherwise. ``memory`` on images that do not fit is refused (before anything is decoded).
    ``needs_stream`` names a reason only the streamed path serves (per-image augmentation in workers)."""
    if requested not in DATA_MODES:
        raise MasterkeyError(f"{option('data_mode', repr(requested))}: expected auto, memory or stream")
    size = n_images * math.prod(image_shape)
    shape = "x".join(map(str, image_shape))
    decoded = f"{n_images:,} images of {what} decode to {format_bytes(size)} at {shape}"
    if requested == "stream":
        return DataMode("stream", f"stream (asked for; {decoded})")
    if needs_stream:
        if requested == "memory":
            raise MasterkeyError(
                f"{option('data_mode', 'memory')}: {needs_stream}; use {option('data_mode', 'stream')} (or auto)"
            )
        return DataMode("stream", f"stream: {needs_stream}")
    limit, source = memory_budget(budget)
    limits = [(limit, f"the memory budget {format_bytes(limit)} ({source})")]
    if device is not None and device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        limits.append((free // 2, f"half of the free memory of {device} ({format_bytes(free // 2)})"))
    over = next(((lim, text) for lim, text in limits if size > lim), None)
    if over is None:
        return DataMode("memory", f"memory: {decoded}, within {' and '.join(t for _, t in limits)}")
    if requested == "memory":
        raise MasterkeyError(
            f"{option('data_mode', 'memory')}: {decoded}, above {over[1]}; use {option('data_mode', 'stream')} (or "
            f"auto), or raise the budget with {option('memory_budget', 'SIZE')} / MASTERKEY_MEMORY_BUDGET"
        )
    return DataMode("stream", f"stream: {decoded}, above {over[1]}")
