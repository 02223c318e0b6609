"""Which images a stage reads: evaluation subsets, calibration subsets, held-out splits, training subsets.

Every selection is deterministic for its seed and class-stratified:

- :func:`select_eval_samples` / :func:`load_eval_images`: the evaluation images (the first N of each class, then a
  stratified random subset), decoded with a preprocessing's geometry, in memory or streamed;
- :func:`calibration_images`: BatchNorm recalibration images from *training* data (never the evaluation folder);
- :func:`crossfit_folds`: cross-fitted recalibration on the evaluation set itself, which uses the evaluation
  distribution (:data:`CROSSFIT_NOTE`): no image calibrates the model that classifies it, but the statistics come
  from the images being judged;
- :func:`stratified_split`: a held-out part of a training set (discover's accuracy objective);
- :func:`subset_positions`: the class-balanced training subset both training data paths use.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from torch import Tensor

from masterkey.data.decode import first_per_class
from masterkey.data.memory import load_image_folder
from masterkey.data.preprocessing import Preprocessing
from masterkey.data.samples import Samples, list_samples
from masterkey.data.stream import Images, StreamedImages, choose_data_mode, decode_all
from masterkey.errors import MasterkeyError, option

log = logging.getLogger("masterkey")
#: What cross-fitted recalibration is, said wherever its numbers are shown.
CROSSFIT_NOTE = "uses the evaluation distribution"


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


def subset_positions(labels: Tensor, n_classes: int, max_images: int | None) -> Tensor | None:
    """The class-balanced subset :func:`load_train_data` keeps (positions into ``labels``), or None for all: the
    first ``ceil(max / classes)`` of each class, then an even trim (seed 0). The streamed path uses it so that
    both paths train on the same images."""
    if max_images is None:
        return None
    keep = torch.tensor(first_per_class(labels.tolist(), math.ceil(max_images / n_classes)), dtype=torch.long)
    if len(keep) > max_images:
        kept, _ = stratified_split(labels[keep], len(keep) - max_images, seed=0)
        keep = keep[kept]
    return keep


def select_eval_samples(
    root: str | Path, max_per_class: int | None = None, max_images: int | None = None, seed: int = 0
) -> Samples:
    """The samples of ``root`` an evaluation reads: the first ``max_per_class`` of each class, then a
    class-stratified random subset of ``max_images`` (seeded). Nothing is decoded."""
    if max_images is not None and max_images < 1:
        raise MasterkeyError(f"max_images={max_images}: must be at least 1")
    samples = list_samples(root)
    if max_per_class is not None:
        samples = samples.subset(first_per_class(samples.labels.tolist(), max_per_class))
    if max_images is not None and max_images < len(samples):
        _, keep = stratified_split(samples.labels, held_out=max_images, seed=seed)
        samples = samples.subset(keep)
    return samples


def load_eval_images(
    root: str | Path,
    prep: Preprocessing,
    max_per_class: int | None = None,
    max_images: int | None = None,
    seed: int = 0,
    data_mode: str = "memory",
    memory_budget: str | int | None = None,
    workers: int | None = None,
    progress: bool = False,
    size_hint: str = "",
) -> Images:
    """The images of ``root`` (an ImageFolder tree or tar shards of one) with the geometry of ``prep`` applied.

    ``max_per_class`` keeps the first N files of each class; ``max_images`` then a class-stratified random subset
    of N images (seeded), decoding only those (handy for the 1000-class imagenet-samples with one image a class).
    ``data_mode``: ``memory`` decodes them once (an ImageFolder without ``max_images`` through the disk cache) into
    an :class:`ImageSet`; ``stream`` returns :class:`~masterkey.data.stream.StreamedImages` decoded batch by batch
    when evaluated (the same pixels); ``auto`` streams when the decoded set exceeds the memory budget (see
    :func:`masterkey.data.stream.choose_data_mode`) and logs which path it took. ``progress``: a bar while decoding.
    ``size_hint``: what the error for images of different sizes advises.
    """
    samples = select_eval_samples(root, max_per_class, max_images, seed)
    streamed = StreamedImages(samples, prep.resize, prep.crop, prep.interpolation, size_hint)
    choice = choose_data_mode(data_mode, len(samples), streamed.image_shape(), what=str(root), budget=memory_budget)
    if data_mode == "auto":
        log.info(f"data: {choice.reason}")
    if choice.stream:
        return streamed
    if max_images is None and samples.from_folder:
        return load_image_folder(
            root,
            resize=prep.resize,
            crop=prep.crop,
            interpolation=prep.interpolation,
            max_per_class=max_per_class,
            workers=workers,
            progress=progress,
            size_hint=size_hint,
        )
    return decode_all(streamed, workers=workers, progress=progress)


def calibration_images(
    root: str | Path,
    prep: Preprocessing,
    n_images: int,
    seed: int = 0,
    exclude: str | Path | None = None,
    data_mode: str = "memory",
    memory_budget: str | int | None = None,
    workers: int | None = None,
    progress: bool = False,
) -> Images:
    """``n_images`` training images of ``root`` (an ImageFolder tree or tar shards), a class-stratified random
    subset drawn with ``seed`` from the whole split, with the evaluation geometry of ``prep``, in memory or streamed
    (``data_mode``, see :func:`load_eval_images`). ``exclude`` names the evaluation folder, which must not be used
    for calibration too."""
    if n_images < 1:
        raise MasterkeyError(
            f"{option('n_images', n_images, flag='--recalibrate')}: the number of calibration images must be at least 1"
        )
    if exclude is not None and Path(root).resolve() == Path(exclude).resolve():
        raise MasterkeyError(
            f"{root}: the calibration images are the evaluation images; calibrate on training data (give "
            f"{option('root', 'DIR', flag='--calib-data')})"
        )
    return load_eval_images(
        root,
        prep,
        max_images=n_images,
        seed=seed,
        data_mode=data_mode,
        memory_budget=memory_budget,
        workers=workers,
        progress=progress,
    )


def crossfit_folds(
    labels: torch.Tensor, n_folds: int, n_calib: int | None = None, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(calibration, evaluation)`` index pairs for cross-fitted recalibration on one labelled set.

    The images are dealt into ``n_folds`` folds, class by class (so every fold has about the same classes, even
    with one image per class); fold ``f`` is evaluated after recalibrating on ``n_calib`` images (all, by default)
    of the other folds. No image is ever used to calibrate the model that classifies it, but the statistics come
    from the distribution being evaluated (transductive: :data:`CROSSFIT_NOTE`); calibrate on training images
    (:func:`calibration_images`) for numbers that hold on unseen data.
    """
    labels = torch.as_tensor(labels)
    n = len(labels)
    if n_folds < 2 or n_folds > n:
        raise MasterkeyError(
            f"{option('n_folds', n_folds, flag='--crossfit')}: need 2 <= folds <= the number of images ({n})"
        )
    gen = torch.Generator().manual_seed(seed)
    fold = torch.empty(n, dtype=torch.long)
    offset = 0
    classes = torch.unique(labels)
    for c in classes[torch.randperm(len(classes), generator=gen)].tolist():
        idx = torch.nonzero(labels == c)[:, 0]
        idx = idx[torch.randperm(len(idx), generator=gen)]
        # Continuing the round-robin across classes keeps folds equal in size when classes are small.
        fold[idx] = (torch.arange(len(idx)) + offset) % n_folds
        offset += len(idx)
    pairs = []
    for f in range(n_folds):
        evaluation = torch.nonzero(fold == f)[:, 0]
        calibration = torch.nonzero(fold != f)[:, 0]
        if n_calib is not None and n_calib < len(calibration):
            pick = torch.randperm(len(calibration), generator=gen)[:n_calib]
            calibration = torch.sort(calibration[pick]).values
        pairs.append((calibration, evaluation))
    return pairs
