"""The one evaluation of a classifier on images: logits, top-1 / top-5 in percent, loss, and the class check.

Every stage evaluates through :func:`evaluate` (swap, training's test after each epoch, explain and discover through
:func:`predict_logits`): the same normalisation (:func:`~masterkey.data.preprocessing.normalize_images`), the same
batches over in-memory or streamed images (:func:`~masterkey.data.stream.image_batches`), one unit — percent, as
timm reports it (:data:`masterkey.runformats.ACCURACY_UNIT`). :func:`check_class_count` is the one check that a
model and a data set have the same classes, used by every stage before it evaluates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from masterkey.data.preprocessing import Preprocessing, normalization_tensors, normalize_images
from masterkey.data.stream import Images, image_batches, ranges
from masterkey.errors import MasterkeyError
from masterkey.progress import progress_bar


def percent(count: float, n: float) -> float:
    """``count`` of ``n`` in percent: ``100 * count / n`` (the one formula every accuracy goes through)."""
    return 100 * float(count) / n


@dataclass(frozen=True)
class Evaluation:
    """How :func:`evaluate` runs the model: batch size, device, streaming ``workers``, ``amp_dtype`` (autocast,
    None for float32), memory format of the inputs, and whether to move the model to ``device`` in that format
    (evaluations of a pretrained model do; training evaluates its model where it is)."""

    batch_size: int = 256
    device: str | torch.device = "cpu"
    workers: int | None = None
    amp_dtype: torch.dtype | None = None
    memory_format: torch.memory_format = torch.channels_last
    place_model: bool = True


def _logit_batches(
    model: nn.Module,
    images: Images,
    prep: Preprocessing,
    batches: list,
    how: Evaluation,
    progress: bool = False,
    desc: str = "evaluate",
) -> Iterator[tuple[Tensor, Tensor]]:
    """float32 logits and labels on the device, one pair per index batch, the model in eval mode."""
    device = torch.device(how.device)
    if how.place_model:
        # channels_last is markedly faster for depthwise convs on CPU (oneDNN) and on GPU tensor cores.
        model.to(device, memory_format=how.memory_format)
    mean, std = normalization_tensors(prep, device)
    bar = progress_bar(total=len(batches), desc=desc, unit="batch", enabled=progress)
    for x, y in image_batches(images, batches, device, workers=how.workers):
        x = normalize_images(x, mean, std).contiguous(memory_format=how.memory_format)
        with torch.autocast(device.type, dtype=how.amp_dtype or torch.bfloat16, enabled=how.amp_dtype is not None):
            logits = model(x)
        yield logits.float(), y
        bar.update()
    bar.close()


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: Images,
    prep: Preprocessing,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: bool = False,
    workers: int | None = None,
    desc: str = "evaluate",
) -> Tensor:
    """Logits [N, classes] (on the CPU) of ``model`` (in eval mode, moved to ``device``) over ``images`` (in memory,
    or streamed by ``workers`` DataLoader processes: the same batches, the same numbers). ``progress``: a bar per
    batch named ``desc``."""
    model.eval()
    how = Evaluation(batch_size, device, workers)
    batches = ranges(len(images), batch_size)
    out = [logits.cpu() for logits, _ in _logit_batches(model, images, prep, batches, how, progress, desc)]
    return torch.cat(out) if out else torch.empty(0)


def accuracy(logits: Tensor, labels: Tensor) -> dict[str, float]:
    """Top-1 and top-5 accuracy (percent) and the number of images."""
    if logits.shape[0] != labels.shape[0]:
        raise ValueError("logits and labels differ in length")
    counts = _counts(logits, labels)
    n = len(labels)
    return {"top1": percent(counts[0], max(1, n)), "top5": percent(counts[1], max(1, n)), "n": n}


def _counts(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices
    return (top[:, 0] == labels).sum(), (top == labels[:, None]).any(dim=1).sum()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    images: Images,
    prep: Preprocessing,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: bool = False,
    workers: int | None = None,
    desc: str = "evaluate",
    *,
    how: Evaluation | None = None,
    index: Tensor | None = None,
    reduce: Callable[[Tensor], Tensor] | None = None,
    check_classes: bool = True,
) -> dict[str, float]:
    """Top-1 / top-5 accuracy in percent, mean cross-entropy ``loss`` and the number ``n`` of images, of ``model``
    on ``images`` normalised with ``prep``'s mean and std.

    ``how`` overrides ``batch_size`` / ``device`` / ``workers`` (and sets autocast, memory format, placement).
    ``index`` evaluates those positions only and ``reduce`` sums the counts across processes (DDP: each rank
    evaluates a disjoint shard, every rank calls ``reduce``, the numbers are exact). ``check_classes``: first check,
    on one image, that the model predicts as many classes as the data has (:func:`check_class_count`). The model
    is left in the mode it was in.
    """
    how = how or Evaluation(batch_size, device, workers)
    if check_classes:
        check_class_count(model, images, prep, how=how)
    was_training = model.training
    model.eval()
    batches = list(index.split(how.batch_size)) if index is not None else ranges(len(images), how.batch_size)
    sums = torch.zeros(4, dtype=torch.float64, device=how.device)  # loss, top1, top5, count
    for logits, y in _logit_batches(model, images, prep, batches, how, progress, desc):
        top1, top5 = _counts(logits, y)
        sums[0] += F.cross_entropy(logits, y, reduction="sum").double()
        sums[1] += top1
        sums[2] += top5
        sums[3] += len(y)
    if reduce is not None:
        reduce(sums)  # a rank with no images left still joins
    model.train(was_training)
    n = max(1.0, float(sums[3]))
    return {
        "loss": float(sums[0]) / n,
        "top1": percent(sums[1], n),
        "top5": percent(sums[2], n),
        "n": int(sums[3]),
    }


@torch.no_grad()
def check_class_count(
    model: nn.Module,
    images: Images,
    prep: Preprocessing,
    device: str | torch.device = "cpu",
    *,
    how: Evaluation | None = None,
) -> int:
    """The number of classes ``model`` predicts, found on one image; :class:`MasterkeyError` when it differs from
    the data's, or when the model cannot take the data's image size at all (e.g. 1x1 images). ``how``: where and
    how the model runs (by default moved to ``device``); the model is left in the mode it was in."""
    if len(images) == 0:
        raise MasterkeyError(f"{images.root}: no images to evaluate")
    how = replace(how or Evaluation(device=device), batch_size=1, workers=0)
    first = images.subset([0])
    was_training = model.training
    model.eval()
    try:
        ((logits, _),) = list(_logit_batches(model, first, prep, [range(0, 1)], how))
    except RuntimeError as exc:
        if "out of memory" in str(exc).lower():
            raise
        x, _ = next(image_batches(first, [range(0, 1)], "cpu", workers=0))
        size = "x".join(map(str, x.shape[-2:]))
        raise MasterkeyError(
            f"{images.root}: the model cannot take images of {size} pixels ({str(exc).splitlines()[0][:120]}); "
            "evaluate it at the size it was trained on"
        ) from None
    finally:
        model.train(was_training)
    n_out = int(logits.shape[1])
    n_classes = len(images.classes)
    if n_out != n_classes:
        raise MasterkeyError(
            f"{images.root}: class-count mismatch: the data has {n_classes} classes, the model predicts {n_out}"
        )
    return n_out
