"""Image files: which files of a folder are images, and how one is decoded.

- :func:`list_image_folder`: the files, labels and classes of an ImageFolder tree (``ROOT/CLASS/IMAGE``; classes sort
  to their standard index: CIFAR-10, ImageNet wnids). Only regular files are images: a FIFO, a device or a folder
  named ``x.jpg`` is refused by name (opening a FIFO would block forever).
- :func:`open_rgb`: one image decoded to RGB, with PIL's decompression-bomb limit as a clean error.
- :func:`decode_image`: the one definition of the deterministic geometry (resize of the shorter side, centre crop),
  shared by the in-memory and streamed paths, so that both give the same pixels.
"""

from __future__ import annotations

import os
import stat
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import Tensor

from masterkey.errors import MasterkeyError, option

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff"}

#: The most DataLoader processes (or decoding threads) any path starts: each holds its own copy of the decoder
#: state, and thousands of them exhaust memory before a single batch arrives.
MAX_WORKERS = 64


def check_workers(workers: int | None, name: str = "workers") -> int | None:
    """``workers`` if it is None or in ``0 ..`` :data:`MAX_WORKERS`; otherwise :class:`MasterkeyError` naming the
    option ``name``."""
    if workers is None:
        return None
    if isinstance(workers, bool) or not isinstance(workers, int) or not 0 <= workers <= MAX_WORKERS:
        raise MasterkeyError(f"{option(name, workers)}: expected a number of worker processes from 0 to {MAX_WORKERS}")
    return workers


class DifferentSizes(MasterkeyError):
    """Images of one set decode to different sizes; the caller adds which option gives them one size."""


def different_sizes(root: str, shapes: set[tuple[int, ...]], hint: str = "") -> DifferentSizes:
    """The error for a set of ``root`` whose images decode to several ``shapes``, with the caller's ``hint``."""
    shown = ", ".join(map(str, sorted(shapes)[:2]))
    hint = hint or "resize and centre-crop them to one size"
    return DifferentSizes(f"{root}: images have different sizes ({len(shapes)} shapes, e.g. {shown}); {hint}")


def is_image_name(path: Path) -> bool:
    """Whether ``path`` has an image suffix (and is not hidden)."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def check_regular_file(path: Path) -> None:
    """Raise :class:`MasterkeyError` unless ``path`` is a regular file (symbolic links followed): a FIFO would block
    the reader forever, a device could be endless."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise MasterkeyError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(mode):
        what = (
            "a FIFO"
            if stat.S_ISFIFO(mode)
            else "a folder"
            if stat.S_ISDIR(mode)
            else "a device"
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a socket"
            if stat.S_ISSOCK(mode)
            else "not a regular file"
        )
        raise MasterkeyError(f"{path}: {what}, not an image file (images must be regular files)")


def image_files(folder: Path) -> list[Path]:
    """The image files of one folder (sorted, not recursive); anything named like an image that is not a regular
    file is refused (:func:`check_regular_file`)."""
    names = []
    with os.scandir(folder) as entries:
        for e in entries:
            if os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES and not e.name.startswith("."):
                if not e.is_file():  # the directory entry's type, no stat call for plain files
                    check_regular_file(folder / e.name)
                names.append(e.name)
    # Names sorted as strings (the order of sorted paths within one folder), far faster than sorting paths.
    return [folder / name for name in sorted(names)]


#: Listings of image folders by (root, every folder's ctime): a process that trains several runs on one data set
#: (an experiment, a test session) lists its 60,000 files once.
_LISTINGS: dict[tuple[str, tuple[tuple[str, int], ...]], tuple[list[Path], list[int], list[str]]] = {}
#: A listing is reused only when no folder of it changed within this many nanoseconds: a change within the clock's
#: granularity of the last one would leave the stamp as it was.
RACY_NS = 2_000_000_000


def list_image_folder(root: str | Path) -> tuple[list[Path], list[int], list[str]]:
    """Files, labels and class names of an ImageFolder tree; clear errors for a wrong layout."""
    root = Path(root)
    if not root.is_dir():
        raise MasterkeyError(f"{root}: {'a file, not a' if root.exists() else 'no such'} data folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    # A folder's ctime moves to the present whenever a file is added, removed or renamed in it (and no program can
    # set it back, unlike the mtime), so the same stamps mean the same names.
    stamps = tuple((name, (root / name).stat().st_ctime_ns) for name in ["", *classes])
    key = (str(root.resolve()), stamps)
    if key in _LISTINGS:
        files, labels, classes = _LISTINGS[key]
        return list(files), list(labels), list(classes)
    files: list[Path] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        imgs = image_files(root / cls)
        files.extend(imgs)
        labels.extend([label] * len(imgs))
    if not files:
        loose = [p.name for p in root.iterdir() if is_image_name(p)][:1]
        hint = " (images lie directly in it: put them in one sub-folder per class)" if loose else ""
        raise MasterkeyError(
            f"{root}: expected ImageFolder layout ROOT/CLASS/IMAGE, found no class folders with images{hint}"
        )
    if time.time_ns() - max(stamp for _, stamp in stamps) > RACY_NS:
        if len(_LISTINGS) >= 8:  # a handful of data sets per process; never an unbounded cache
            _LISTINGS.clear()
        _LISTINGS[key] = (files, labels, classes)
    return list(files), list(labels), list(classes)


def _open(source: str | Path | BinaryIO, label: str) -> Any:
    """``PIL.Image.open`` of a regular file or an open binary file, with images above PIL's decompression-bomb
    limit (``Image.MAX_IMAGE_PIXELS``) refused before they are decoded."""
    from PIL import Image

    if isinstance(source, (str, Path)):
        check_regular_file(Path(source))
    with warnings.catch_warnings():
        # PIL only warns between 1x and 2x its limit; masterkey refuses every image above it.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return Image.open(source)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise MasterkeyError(
                f"{label}: image too large to decode safely ({str(exc).splitlines()[0][:160]}); a decompression "
                "bomb, or raise PIL.Image.MAX_IMAGE_PIXELS from Python if it is a real image"
            ) from None


def open_rgb(source: str | Path | BinaryIO | Any, name: str | None = None) -> Any:
    """A decoded RGB PIL image from a path, an open binary file (a tar member) or a PIL image (torchvision data
    sets yield those); an unreadable one raises :class:`MasterkeyError` naming ``name`` (or the path)."""
    from PIL import Image, UnidentifiedImageError

    label = name or str(source)
    try:
        if isinstance(source, Image.Image):
            return source.convert("RGB")
        with _open(source, label) as raw:
            return raw.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise MasterkeyError(f"{label}: cannot decode image ({str(exc).splitlines()[0][:120]})") from None


def image_size(source: str | Path | BinaryIO | Any, name: str | None = None) -> tuple[int, int]:
    """``(height, width)`` of an image, read from its header (nothing is decoded)."""
    from PIL import Image

    label = name or str(source)
    if isinstance(source, Image.Image):
        return source.height, source.width
    try:
        with _open(source, label) as img:
            return img.height, img.width
    except (OSError, ValueError, SyntaxError) as exc:
        raise MasterkeyError(f"{label}: cannot read image ({str(exc).splitlines()[0][:120]})") from None


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
