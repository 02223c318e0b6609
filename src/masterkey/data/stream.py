"""Images decoded on the fly by DataLoader worker processes, for data sets too large to hold decoded in memory.

- :func:`list_samples`: what a split holds, without pixels — an ImageFolder tree (listed exactly as
  :func:`masterkey.images.list_image_folder` lists it, so sample ``i`` is the same image in both paths), tar shards
  of one (timm's map-style tar reader: a ``.tar`` file or a folder of ``.tar`` files holding ``CLASS/IMAGE``
  members), or any map-style data set timm's ``create_dataset`` names (``torch/cifar10``, ``hfds/NAME`` ...).
- :class:`StreamedImages`: evaluation images with fixed geometry (resize, centre crop; the very
  :func:`~masterkey.images.decode_image` of the in-memory path), interchangeable with an in-memory
  :class:`~masterkey.images.ImageSet` wherever images are evaluated (``labels``, ``classes``, ``root``, ``len``,
  ``subset``).
- :func:`image_batches`: the one loop over uint8 batches that every evaluation uses, for either kind of images.
- :func:`choose_data_mode`: ``auto`` / ``memory`` / ``stream``, decided from the decoded size and a memory budget.

An evaluation never drops an image: an unreadable one stops it with the file named.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from masterkey.errors import MasterkeyError, option
from masterkey.images import ImageSet, decode_image, list_image_folder
from masterkey.progress import progress_bar

log = logging.getLogger("masterkey")
DATA_MODES = ("auto", "memory", "stream")
#: Names of timm data set schemes that only iterate (no random access): refused, see :func:`list_samples`.
ITERABLE_SCHEMES = ("wds", "tfds", "hfids")


# ---------------------------------------------------------------------- samples
class Samples:
    """The samples of one split without their pixels: labels, class names, and how to open sample ``i``.

    Paths are held in one numpy byte array (not a list of Python objects), so DataLoader workers forked from the
    main process share them without copying, whatever the number of images.
    """

    def __init__(
        self,
        root: str,
        classes: list[str],
        labels: Tensor,
        *,
        paths: np.ndarray | None = None,
        dataset: Any = None,
        positions: np.ndarray | None = None,
    ) -> None:
        self.root = root
        self.classes = classes
        self.labels = labels
        self._paths = paths
        self._dataset = dataset  # a timm reader (reader[i] -> (file, target)) or a torchvision-style data set
        self._positions = positions if positions is not None else np.arange(len(labels))

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def from_folder(self) -> bool:
        """True for an ImageFolder tree (files on disk, which the in-memory path's cache can read)."""
        return self._paths is not None

    def subset(self, index: Tensor | np.ndarray | Sequence[int]) -> Samples:
        idx = torch.as_tensor(np.asarray(index), dtype=torch.long)
        positions = self._positions[idx.numpy()]
        paths, dataset = self._paths, self._dataset
        return Samples(self.root, self.classes, self.labels[idx], paths=paths, dataset=dataset, positions=positions)

    def name(self, i: int) -> str:
        """The sample's file (or ``root[index]`` inside a data set) for messages."""
        pos = int(self._positions[i])
        if self._paths is not None:
            return os.fsdecode(self._paths[pos])
        filename = getattr(self._dataset, "filename", None)
        if callable(filename):
            return f"{self.root}: {filename(pos)}"
        return f"{self.root}[{pos}]"

    def open(self, i: int) -> Any:
        """Something :func:`masterkey.images.decode_image` decodes: a path, an open file or a PIL image."""
        pos = int(self._positions[i])
        if self._paths is not None:
            return os.fsdecode(self._paths[pos])
        item = self._dataset[pos]
        return item[0]

    def first_image_size(self) -> tuple[int, int]:
        """``(height, width)`` of sample 0, read from its header (nothing is decoded)."""
        from PIL import Image

        source = self.open(0)
        try:
            if isinstance(source, Image.Image):
                return source.height, source.width
            with Image.open(source) as img:
                return img.height, img.width
        except OSError as exc:
            raise MasterkeyError(f"{self.name(0)}: cannot read image ({str(exc).splitlines()[0][:120]})") from None
        finally:
            reset_handles(self)

    def worker_init(self) -> None:
        """Run in each DataLoader worker: open files anew (a tar handle shared with the parent would race)."""
        reset_handles(self)


def reset_handles(samples: Samples) -> None:
    """Forget open tar handles of a timm tar reader, so that the next read opens its own."""
    reader = getattr(samples._dataset, "reader", samples._dataset)
    state = getattr(reader, "tar_state", None)
    states = state.values() if isinstance(state, dict) else [state] if state is not None else []
    for st in states:
        st.reset()
        for child in getattr(st, "children", {}).values():
            child.reset()
    if hasattr(reader, "tarfile"):
        reader.tarfile = None


def _is_tar_split(path: Path) -> bool:
    if path.is_file():
        return path.suffix.lower() == ".tar"
    return path.is_dir() and any(p.suffix.lower() == ".tar" for p in path.iterdir()) and not _has_class_folders(path)


def _has_class_folders(path: Path) -> bool:
    return any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir())


def list_samples(path: str | Path, dataset: str = "", split: str = "train") -> Samples:
    """The samples of one split.

    ``dataset`` empty: ``path`` is an ImageFolder tree, a ``.tar`` file of ``CLASS/IMAGE`` members, or a folder of
    such ``.tar`` shards (read with timm's tar reader, which indexes members for random access). Otherwise
    ``dataset`` is a timm data set name with a scheme (``torch/cifar10``, ``hfds/NAME`` ...) read from ``path`` by
    ``timm.data.create_dataset`` with ``split``; nothing is downloaded. Iterable-only schemes (``wds/``, ``tfds/``,
    ``hfids/``) are refused: exact resume and world-size independent batches need random access.
    """
    path = Path(path)
    if dataset:
        return _timm_samples(path, dataset, split)
    if not path.exists():
        raise MasterkeyError(f"{path}: no such data folder or tar file")
    if _is_tar_split(path):
        return _tar_samples(path)
    files, labels, classes = list_image_folder(path)
    paths = np.array([os.fsencode(str(f)) for f in files])
    return Samples(str(path), classes, torch.tensor(labels, dtype=torch.long), paths=paths)


def _tar_samples(path: Path) -> Samples:
    from timm.data.readers.reader_image_in_tar import ReaderImageInTar

    shards = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix.lower() == ".tar")
    for shard in shards:
        if shard.stat().st_size == 0:
            raise MasterkeyError(f"{shard}: empty tar shard (0 bytes)")
    try:
        reader = ReaderImageInTar(str(path), cache_tarinfo=False)
    except ValueError as exc:  # timm unpacks an empty sample list
        if "not enough values to unpack" in str(exc):
            raise MasterkeyError(
                f"{path}: the tar shards hold no images (expected members CLASS/IMAGE.jpg, one folder per class)"
            ) from None
        raise MasterkeyError(f"{path}: cannot read the tar shards ({_first_line(exc)})") from None
    except Exception as exc:
        raise MasterkeyError(f"{_bad_shard(shards) or path}: not a readable tar file ({_first_line(exc)})") from None
    name_to_index = getattr(reader, "class_name_to_idx", {})
    classes = [name for name, _ in sorted(name_to_index.items(), key=lambda kv: kv[1])]
    if len(classes) < 2 and classes[:1] == [""]:
        raise MasterkeyError(f"{path}: tar members must lie in class folders (CLASS/IMAGE.jpg); found loose images")
    labels = torch.as_tensor(np.asarray(reader.targets, dtype=np.int64))
    reset_handles(Samples(str(path), classes, labels, dataset=reader))
    return Samples(str(path), classes, labels, dataset=reader)


def _bad_shard(shards: Sequence[Path]) -> Path | None:
    import tarfile

    for shard in shards:
        try:
            with tarfile.open(shard) as tf:
                tf.getmembers()
        except (tarfile.TarError, OSError, EOFError):
            return shard
    return None


def _timm_samples(path: Path, dataset: str, split: str) -> Samples:
    from timm.data import create_dataset

    scheme = dataset.partition("/")[0].lower() if "/" in dataset else ""
    if scheme in ITERABLE_SCHEMES:
        raise MasterkeyError(
            f"{option('dataset', dataset)}: timm reads '{scheme}/' data sets only as a stream (no random access), so "
            "the deterministic per-(seed, epoch) order, world-size independent batches and exact mid-epoch resume "
            "cannot hold; use an ImageFolder tree or tar shards of one (timm's tar reader gives random access)"
        )
    try:
        ds = create_dataset(dataset, root=str(path), split=split, download=False)
    except ImportError as exc:
        raise MasterkeyError(f"{option('dataset', dataset)}: needs a package that is not installed ({exc})") from None
    except (AssertionError, RuntimeError, OSError, ValueError, KeyError) as exc:
        raise MasterkeyError(
            f"{option('dataset', dataset)} {option('path', path, flag='--data')} (split {split}): timm cannot read "
            f"it ({_first_line(exc)})"
        ) from None
    if isinstance(ds, torch.utils.data.IterableDataset):
        raise MasterkeyError(
            f"{option('dataset', dataset)}: an iterable data set; masterkey needs random access (see docs)"
        )
    reader = getattr(ds, "reader", None)
    if reader is not None:
        targets = getattr(reader, "targets", None)
        if targets is None:
            targets = [reader.samples[i][1] for i in range(len(reader))]
        mapping = getattr(reader, "class_to_idx", None) or getattr(reader, "class_name_to_idx", {})
        classes = [name for name, _ in sorted(mapping.items(), key=lambda kv: kv[1])]
        return Samples(str(path), classes, torch.as_tensor(np.asarray(targets, dtype=np.int64)), dataset=reader)
    targets = getattr(ds, "targets", None)
    if targets is None:
        raise MasterkeyError(
            f"{option('dataset', dataset)}: the data set lists no targets; masterkey needs labelled images"
        )
    classes = [str(c) for c in getattr(ds, "classes", sorted(set(map(int, targets))))]
    return Samples(str(path), classes, torch.as_tensor(np.asarray(targets, dtype=np.int64)), dataset=ds)


def write_tar_shards(folder: str | Path, out: str | Path, n_shards: int = 1) -> list[Path]:
    """Write the ImageFolder tree ``folder`` as ``n_shards`` tar files ``out/shard-000.tar`` ... (members
    ``CLASS/IMAGE``, images dealt round-robin), which :func:`list_samples` (timm's tar reader) reads back."""
    import tarfile

    files, _, _ = list_image_folder(folder)
    if n_shards < 1:
        raise MasterkeyError(f"n_shards={n_shards}: expected at least one shard")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"shard-{i:03d}.tar" for i in range(n_shards)]
    with contextlib.ExitStack() as stack:
        tars = [stack.enter_context(tarfile.open(p, "w")) for p in paths]
        for i, f in enumerate(files):
            tars[i % n_shards].add(f, arcname=f"{f.parent.name}/{f.name}")
    return paths


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:160]


# ---------------------------------------------------------------------- evaluation images
class StreamedImages(torch.utils.data.Dataset):
    """Evaluation images decoded when read: sample ``i`` is ``decode_image(file i, resize, crop, interpolation)``,
    exactly the uint8 pixels the in-memory :class:`~masterkey.images.ImageSet` would hold."""

    def __init__(self, samples: Samples, resize: int | None, crop: int | None, interpolation: str = "bilinear"):
        self.samples = samples
        self.resize, self.crop, self.interpolation = resize, crop, interpolation

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
        return StreamedImages(self.samples.subset(index), self.resize, self.crop, self.interpolation)

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


Images = ImageSet | StreamedImages


def default_workers() -> int:
    """DataLoader worker processes: the CPUs this process may use, shared by the ranks of this node, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(1, min(8, cpus // local))


def _collate(items: list[tuple[Tensor | None, int, str]]) -> tuple[Tensor | None, Tensor, list[str]]:
    errors = [err for _, _, err in items if err]
    if errors:
        return None, torch.tensor([lab for _, lab, _ in items]), errors
    images = [img for img, _, _ in items]
    shapes = {tuple(img.shape) for img in images if img is not None}
    if len(shapes) > 1:
        return None, torch.tensor([]), [f"images have different sizes ({', '.join(map(str, sorted(shapes)[:2]))})"]
    return torch.stack(images), torch.tensor([lab for _, lab, _ in items]), []


def _worker_init(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    if info is not None:
        torch.set_num_threads(1)
        samples = getattr(info.dataset, "samples", None)
        if isinstance(samples, Samples):
            samples.worker_init()


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
    n_workers = default_workers() if workers is None else workers
    loader = torch.utils.data.DataLoader(
        images,
        batch_sampler=index_lists,
        num_workers=n_workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
        worker_init_fn=_worker_init if n_workers else None,
        generator=torch.Generator().manual_seed(0),  # not the global RNG: evaluating must not change training
    )
    for x, y, errors in loader:
        if errors:
            raise MasterkeyError(
                f"{errors[0]}; the evaluation stops (it counts every image: remove or repair the file)"
                if "cannot decode" in errors[0]
                else f"{images.root}: {errors[0]}; give a resize and crop ({option('image_size', 'N')}) to make them "
                "equal"
            )
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
