"""Image data sets decoded once and held as uint8 tensors, cached on disk (no JPEG decoding every epoch).

The deterministic geometric part of a preprocessing (resize of the shorter side, centre crop) is applied before
caching; normalisation (:func:`masterkey.data.preprocessing.normalize_images`) and augmentation happen later, on the
device. Cache entries (:mod:`masterkey.data.cache`) carry the sha256 of their tensors: an entry that does not match
(edited, truncated, written by another version) is named in a warning and rebuilt, never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from masterkey import jsonio
from masterkey.data.cache import CACHE_FORMAT, CACHE_VERSION, entry_path
from masterkey.data.decode import check_workers, decode_image, different_sizes, first_per_class, list_image_folder
from masterkey.errors import MasterkeyError
from masterkey.files import atomic_write
from masterkey.progress import progress_bar

log = logging.getLogger("masterkey")


@dataclass
class ImageSet:
    """Decoded images ``[N, 3, H, W]`` uint8, integer ``labels`` [N], and the class names (folder names)."""

    images: Tensor
    labels: Tensor
    classes: list[str]
    root: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: Tensor | np.ndarray | Sequence[int]) -> ImageSet:
        idx = torch.as_tensor(np.asarray(index), dtype=torch.long)
        return ImageSet(self.images[idx], self.labels[idx], self.classes, self.root)


def tensor_digest(images: Tensor, labels: Tensor) -> str:
    """sha256 of the bytes of ``images`` and ``labels`` (both contiguous, on the CPU)."""
    h = hashlib.sha256()
    for t in (images, labels):
        h.update(memoryview(t.contiguous().numpy()).cast("B"))
    return h.hexdigest()


def _read_entry(path: Path) -> tuple[Tensor, Tensor] | None:
    """The tensors of a cache entry, or None (with a warning when it exists but does not match its checksum)."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != CACHE_FORMAT or meta.get("version") != CACHE_VERSION:
                log.info(f"data: cache entry {path} is from another masterkey version; rebuilding it")
                return None
            images, labels = f.get_tensor("images"), f.get_tensor("labels")
    except Exception as exc:  # safetensors raises its own error types for damaged files
        log.warning(f"warning: cache entry {path} is unreadable ({str(exc).splitlines()[0][:120]}); rebuilding it")
        return None
    if meta.get("sha256") != tensor_digest(images, labels):
        log.warning(f"warning: cache entry {path} does not match its checksum (changed on disk); rebuilding it")
        return None
    return images, labels


def _write_entry(path: Path, images: Tensor, labels: Tensor, described: dict[str, object]) -> None:
    from safetensors.torch import save

    meta = {k: jsonio.dumps(v, indent=None) if not isinstance(v, str) else v for k, v in described.items()}
    meta.update(format=CACHE_FORMAT, version=CACHE_VERSION, sha256=tensor_digest(images, labels))
    try:
        blob = save({"images": images, "labels": labels}, metadata=meta)
        with atomic_write(path) as fh:
            fh.write(blob)
    except MasterkeyError:
        pass  # caching is an optimisation; an unwritable cache must not fail the run


def load_image_folder(
    root: str | Path,
    *,
    resize: int | None = None,
    crop: int | None = None,
    interpolation: str = "bilinear",
    max_per_class: int | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    workers: int | None = None,
    progress: bool = False,
    size_hint: str = "",
) -> ImageSet:
    """Decode an ImageFolder tree into one uint8 tensor, cached on disk by content (paths, sizes, mtimes, options).

    ``resize`` scales the shorter side, ``crop`` centre-crops a square; both are needed when image sizes differ.
    ``max_per_class`` keeps the first N files of each class (sorted), for small, reproducible subsets.
    ``workers``: decoding threads (default: the CPUs, at most 8). ``progress``: a bar while decoding (a cached set
    loads at once). ``size_hint``: what the error for images of different sizes advises (which option to give).
    """
    files, labels, classes = list_image_folder(root)
    if max_per_class is not None:
        keep = first_per_class(labels, max_per_class)
        files = [files[i] for i in keep]
        labels = [labels[i] for i in keep]
    key = hashlib.sha256()
    key.update(json.dumps(["pil-1", str(Path(root).resolve()), resize, crop, interpolation, classes]).encode())
    for f in files:
        st = f.stat()
        key.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    cache = entry_path(cache_dir, key.hexdigest())
    if use_cache:
        cached = _read_entry(cache)
        if cached is not None:
            return ImageSet(cached[0], cached[1], classes, str(root))
    n_threads = check_workers(workers, "workers") or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=n_threads) as pool:
        work = pool.map(lambda f: decode_image(f, resize, crop, interpolation), files)
        decoded = list(progress_bar(work, total=len(files), desc=f"decode {root}", unit="image", enabled=progress))
    shapes = {tuple(img.shape) for img in decoded}
    if len(shapes) > 1:
        raise different_sizes(str(root), shapes, size_hint)
    images = torch.stack(decoded).contiguous()
    result = ImageSet(images, torch.tensor(labels, dtype=torch.long), classes, str(root))
    if use_cache:
        described = {
            "root": str(root),
            "resolved_root": str(Path(root).resolve()),
            "resize": resize,
            "crop": crop,
            "interpolation": interpolation,
            "max_per_class": max_per_class,
            "classes": len(classes),
        }
        _write_entry(cache, images, result.labels, described)
    return result
