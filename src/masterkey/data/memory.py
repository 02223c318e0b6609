"""Image data sets decoded once and cached as uint8 tensors (no JPEG decoding every epoch).

Any ImageFolder layout (``ROOT/CLASS/IMAGE``) is read; classes sort to their standard index (CIFAR-10, ImageNet
wnids). The deterministic geometric part of a preprocessing (resize of the shorter side, centre crop) is applied
before caching; normalisation and augmentation happen later, on the device.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import Tensor

from masterkey.errors import MasterkeyError
from masterkey.files import atomic_write
from masterkey.progress import progress_bar

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff"}
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


def default_cache_dir() -> Path:
    """``$MASTERKEY_CACHE`` or ``~/.cache/masterkey``."""
    return Path(os.environ.get("MASTERKEY_CACHE", Path.home() / ".cache" / "masterkey"))


def list_image_folder(root: str | Path) -> tuple[list[Path], list[int], list[str]]:
    """Files, labels and class names of an ImageFolder tree; clear errors for a wrong layout."""
    root = Path(root)
    if not root.is_dir():
        raise MasterkeyError(f"{root}: {'a file, not a' if root.exists() else 'no such'} data folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files: list[Path] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        imgs = sorted(p for p in (root / cls).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        files.extend(imgs)
        labels.extend([label] * len(imgs))
    if not files:
        loose = [p.name for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES][:1]
        hint = " (images lie directly in it: put them in one sub-folder per class)" if loose else ""
        raise MasterkeyError(
            f"{root}: expected ImageFolder layout ROOT/CLASS/IMAGE, found no class folders with images{hint}"
        )
    return files, labels, classes


def open_rgb(source: str | Path | BinaryIO | Any, name: str | None = None) -> Any:
    """A decoded RGB PIL image from a path, an open binary file (a tar member) or a PIL image (torchvision data
    sets yield those); an unreadable one raises :class:`MasterkeyError` naming ``name`` (or the path)."""
    from PIL import Image, UnidentifiedImageError

    try:
        if isinstance(source, Image.Image):
            return source.convert("RGB")
        with Image.open(source) as raw:
            return raw.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        label = name or str(source)
        raise MasterkeyError(f"{label}: cannot decode image ({str(exc).splitlines()[0][:120]})") from None


def decode_image(
    source: str | Path | BinaryIO | Any,
    resize: int | None,
    crop: int | None,
    interpolation: str = "bilinear",
    name: str | None = None,
) -> Tensor:
    """One image as uint8 ``[3, H, W]``: decoded to RGB (:func:`open_rgb`), the shorter side resized to
    ``resize``, centre-cropped to ``crop`` (either may be None). The one definition of the deterministic geometry,
    shared by the in-memory and streamed paths, so that both give the same pixels."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    img = open_rgb(source, name)
    # PIL resizing, as torchvision's reference evaluation transforms do, so published accuracies reproduce.
    if resize:
        img = F.resize(img, [resize], interpolation=InterpolationMode(interpolation), antialias=True)
    if crop:
        img = F.center_crop(img, [crop, crop])
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def first_per_class(labels: Sequence[int], max_per_class: int | None) -> list[int]:
    """Positions of the first ``max_per_class`` items of each label, in order (all when None)."""
    if max_per_class is None:
        return list(range(len(labels)))
    keep: list[int] = []
    seen: dict[int, int] = {}
    for i, lab in enumerate(labels):
        if seen.get(lab, 0) < max_per_class:
            keep.append(i)
            seen[lab] = seen.get(lab, 0) + 1
    return keep


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
) -> ImageSet:
    """Decode an ImageFolder tree into one uint8 tensor, cached on disk by content (paths, sizes, mtimes, options).

    ``resize`` scales the shorter side, ``crop`` centre-crops a square; both are needed when image sizes differ.
    ``max_per_class`` keeps the first N files of each class (sorted), for small, reproducible subsets.
    ``progress``: a bar while decoding (a cached set loads at once).
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
    cache = Path(cache_dir or default_cache_dir()) / "images" / f"{key.hexdigest()[:24]}.safetensors"
    if use_cache and cache.is_file():
        try:
            from safetensors.torch import load_file

            data = load_file(str(cache))
            return ImageSet(data["images"], data["labels"], classes, str(root))
        except Exception:
            pass  # a damaged cache entry is rebuilt below
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        work = pool.map(lambda f: decode_image(f, resize, crop, interpolation), files)
        decoded = list(progress_bar(work, total=len(files), desc=f"decode {root}", unit="image", enabled=progress))
    shapes = {tuple(img.shape) for img in decoded}
    if len(shapes) > 1:
        raise MasterkeyError(
            f"{root}: images have different sizes ({len(shapes)} shapes, e.g. {sorted(shapes)[:2]}); "
            "give resize and crop to make them equal"
        )
    images = torch.stack(decoded).contiguous()
    result = ImageSet(images, torch.tensor(labels, dtype=torch.long), classes, str(root))
    if use_cache:
        try:
            from safetensors.torch import save

            blob = save({"images": images, "labels": result.labels})
            with atomic_write(cache) as fh:
                fh.write(blob)
        except MasterkeyError:
            pass  # caching is an optimisation; an unwritable cache must not fail the run
    return result


def stratified_split(labels: Tensor, held_out: float | int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Indices ``(keep, held_out)`` with the same class proportions in both; ``held_out`` is a fraction or a count.

    Deterministic for a seed. Use the held-out part of a *training* set for any selection (never the test set).
    """
    labels = torch.as_tensor(labels)
    n = len(labels)
    n_out = round(held_out * n) if isinstance(held_out, float) else int(held_out)
    if not 0 < n_out < n:
        raise MasterkeyError(f"held-out size {held_out!r} must leave both parts non-empty (of {n} images)")
    gen = torch.Generator().manual_seed(seed)
    classes, counts = torch.unique(labels, return_counts=True)
    # Largest-remainder allocation: every class gets floor or ceil of its exact share of n_out.
    share = counts.double() * n_out / n
    quota = share.floor().long()
    remainder = share - quota
    tiebreak = torch.rand(len(classes), generator=gen, dtype=torch.float64) * 1e-9
    extra = torch.argsort(remainder + tiebreak, descending=True)[: n_out - int(quota.sum())]
    quota[extra] += 1
    out = []
    for c, q in zip(classes.tolist(), quota.tolist(), strict=True):
        idx = torch.nonzero(labels == c)[:, 0]
        out.append(idx[torch.randperm(len(idx), generator=gen)[:q]])
    held = torch.sort(torch.cat(out)).values
    mask = torch.ones(n, dtype=torch.bool)
    mask[held] = False
    return torch.nonzero(mask)[:, 0], held
