"""What a split holds, without its pixels: :class:`Samples` and :func:`list_samples`.

A split is an ImageFolder tree (listed exactly as :func:`masterkey.data.decode.list_image_folder` lists it, so sample
``i`` is the same image in the in-memory and streamed paths), tar shards of one (timm's map-style tar reader: a
``.tar`` file or a folder of ``.tar`` files holding ``CLASS/IMAGE`` members), or any map-style data set timm's
``create_dataset`` names (``torch/cifar10``, ``hfds/NAME`` ...).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from masterkey.data.decode import image_size, list_image_folder
from masterkey.errors import MasterkeyError, option

#: Names of timm data set schemes that only iterate (no random access): refused, see :func:`list_samples`.
ITERABLE_SCHEMES = ("wds", "tfds", "hfids")


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
        """Something :func:`masterkey.data.decode.decode_image` decodes: a path, an open file or a PIL image."""
        pos = int(self._positions[i])
        if self._paths is not None:
            return os.fsdecode(self._paths[pos])
        item = self._dataset[pos]
        return item[0]

    def first_image_size(self) -> tuple[int, int]:
        """``(height, width)`` of sample 0, read from its header (nothing is decoded)."""
        try:
            return image_size(self.open(0), self.name(0))
        finally:
            reset_handles(self)

    def worker_init(self) -> None:
        """Run in each DataLoader worker: open files anew (a tar handle shared with the parent would race)."""
        reset_handles(self)


def worker_init(worker_id: int) -> None:
    """``worker_init_fn`` of every DataLoader over :class:`Samples` (a dataset with a ``samples`` attribute): one
    torch thread (a worker is a process of its own; the workers together use the cores) and files opened anew."""
    info = torch.utils.data.get_worker_info()
    torch.set_num_threads(1)
    samples = getattr(info.dataset, "samples", None) if info is not None else None
    if isinstance(samples, Samples):
        samples.worker_init()


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
