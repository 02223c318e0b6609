"""Re-estimate BatchNorm running statistics after a swap (docs/design.md, pipeline step 5: non-LayerNorm networks).

A BatchNorm after a depthwise conv normalises with the mean and variance the *trained* filter produced; once the
filter is swapped for ``a * key + b`` those statistics are stale. Re-estimating them on a few hundred training
images (no labels, no gradients, no weight change) removes that mismatch. LayerNorm networks (ConvNeXt) normalise
with per-image statistics and need nothing of the kind.

The estimate is the cumulative average over batches (``momentum=None``) of the per-batch statistics, with only
the BatchNorm layers in training mode (dropout and the rest stay in eval mode).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from masterkey.errors import MasterkeyError, option
from masterkey.images import stratified_split
from masterkey.networks.evaluate import Preprocessing, load_eval_images
from masterkey.progress import progress_bar
from masterkey.stream import Images, image_batches, list_samples


@dataclass(frozen=True)
class RecalibrationReport:
    """What :func:`recalibrate_batchnorm` did."""

    n_images: int
    n_batchnorm: int
    batch_size: int
    seconds: float
    data: str


def batchnorm_layers(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """The BatchNorm layers of ``model`` that keep running statistics (timm's BatchNormAct2d included)."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


def has_batchnorm(model: nn.Module) -> bool:
    """True when ``model`` has BatchNorm layers with running statistics to re-estimate."""
    return bool(batchnorm_layers(model))


def calibration_images(
    root: str | Path,
    prep: Preprocessing,
    n_images: int,
    seed: int = 0,
    exclude: str | Path | None = None,
    data_mode: str = "memory",
    memory_budget: str | int | None = None,
    progress: bool = False,
) -> Images:
    """``n_images`` images of the ImageFolder ``root`` (same number per class as far as possible), with the
    evaluation geometry of ``prep``, in memory or streamed (``data_mode``, see
    :func:`~masterkey.networks.evaluate.load_eval_images`). ``exclude`` names the evaluation folder, which must not
    be used for calibration too."""
    if n_images < 1:
        raise MasterkeyError(
            f"{option('n_images', n_images, flag='--recalibrate')}: the number of calibration images must be at least 1"
        )
    if exclude is not None and Path(root).resolve() == Path(exclude).resolve():
        raise MasterkeyError(
            f"{root}: the calibration images are the evaluation images; calibrate on training data (give "
            f"{option('root', 'DIR', flag='--calib-data')})"
        )
    per_class = math.ceil(n_images / len(list_samples(root).classes))
    images = load_eval_images(
        root, prep, max_per_class=per_class, data_mode=data_mode, memory_budget=memory_budget, progress=progress
    )
    if len(images) > n_images:
        _, keep = stratified_split(images.labels, held_out=n_images, seed=seed)
        images = images.subset(keep)
    return images


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module,
    images: Images,
    prep: Preprocessing,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    progress: bool = False,
    workers: int | None = None,
    desc: str = "recalibrate",
) -> RecalibrationReport:
    """Reset and re-estimate, in place, the running mean / variance of every BatchNorm layer of ``model`` on
    ``images`` (in memory or streamed; labels unused). The model is left in eval mode with its momenta as they
    were. ``progress``: a bar per batch named ``desc``."""
    bns = batchnorm_layers(model)
    if not bns:
        raise MasterkeyError(
            f"{type(model).__name__}: the model has no BatchNorm layer to recalibrate (LayerNorm networks such as "
            "ConvNeXt normalise per image and keep no running statistics)"
        )
    if len(images) == 0:
        raise MasterkeyError(f"{images.root}: no calibration images")
    if len(images) < 2 or batch_size < 2:
        raise MasterkeyError("recalibration needs at least 2 images per batch (a variance of one image is zero)")
    start = time.perf_counter()
    device = torch.device(device)
    model.eval().to(device, memory_format=torch.channels_last)
    momenta = [bn.momentum for _, bn in bns]
    mean = torch.tensor(prep.mean, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(prep.std, device=device).view(1, 3, 1, 1) * 255
    # A last batch of one image cannot give a variance: fold it into the previous batch.
    starts = list(range(0, len(images), batch_size))
    if len(starts) > 1 and len(images) - starts[-1] < 2:
        starts.pop()
    batches = [range(s, starts[i + 1] if i + 1 < len(starts) else len(images)) for i, s in enumerate(starts)]
    try:
        for _, bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative moving average: every batch counts equally
            bn.train()
        bar = progress_bar(total=len(batches), desc=desc, unit="batch", enabled=progress)
        for x, _ in image_batches(images, batches, device, workers=workers):
            model(((x.float() - mean) / std).contiguous(memory_format=torch.channels_last))
            bar.update()
        bar.close()
    finally:
        for (_, bn), momentum in zip(bns, momenta, strict=True):
            bn.momentum = momentum
        model.eval()
    return RecalibrationReport(len(images), len(bns), batch_size, time.perf_counter() - start, str(images.root))


def crossfit_folds(
    labels: torch.Tensor, n_folds: int, n_calib: int | None = None, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(calibration, evaluation)`` index pairs for cross-fitted recalibration on one labelled set.

    The images are dealt into ``n_folds`` folds, class by class (so every fold has about the same classes, even
    with one image per class); fold ``f`` is evaluated after recalibrating on ``n_calib`` images (all, by default)
    of the other folds. No image is ever used to calibrate the model that classifies it.
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
