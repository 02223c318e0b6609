"""Training augmentation, every random choice drawn from a generator seeded by ``(seed, epoch, step, ...)``.

- on the device, per global batch (the in-memory path, and the streamed path without per-image transforms): random
  crop with reflect padding and horizontal flip (:func:`device_augment`), mixup / cutmix (:func:`mix_batch`), label
  smoothing (:func:`soft_targets`); the parameters are drawn for the global batch and sliced per rank, so an image's
  augmentation does not depend on how many processes share the batch;
- in DataLoader workers, per image: timm's training transform (:func:`worker_transform`: RandomResizedCrop,
  RandAugment / AutoAugment, random erasing) under :func:`seeded` generators keyed by ``(seed, epoch, image)``.

An epoch replayed after a crash is therefore bitwise the same.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from masterkey.errors import MasterkeyError, option


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts (stable across processes and Python versions)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generator(*parts: object) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


@dataclass
class CropFlip:
    """Per-image crop offsets (into the padded image) and flips for one global batch."""

    dy: Tensor
    dx: Tensor
    flip: Tensor

    def slice(self, start: int, stop: int) -> CropFlip:
        return CropFlip(self.dy[start:stop], self.dx[start:stop], self.flip[start:stop])

    def select(self, keep: Tensor) -> CropFlip:
        """The parameters of the images ``keep`` (a boolean mask) leaves, for a batch that lost unreadable images."""
        return CropFlip(self.dy[keep], self.dx[keep], self.flip[keep])


def crop_flip_params(batch_size: int, padding: int, hflip: bool, seed: int, epoch: int, step: int) -> CropFlip:
    """Crop offsets in ``[0, 2 * padding]`` and flips for a global batch, drawn from ``(seed, epoch, step)``."""
    gen = generator(seed, epoch, step, "cropflip")
    dy = torch.randint(0, 2 * padding + 1, (batch_size,), generator=gen)
    dx = torch.randint(0, 2 * padding + 1, (batch_size,), generator=gen)
    flip = torch.rand(batch_size, generator=gen) < 0.5
    if not hflip:
        flip = torch.zeros_like(flip)
    return CropFlip(dy, dx, flip)


def random_crop_flip(x: Tensor, padding: int, params: CropFlip) -> Tensor:
    """Random crop with reflect padding plus horizontal flip of a float batch, in one gather on the device.

    The result is laid out channels-last in memory (call ``.contiguous()`` for NCHW).
    """
    b, _, h, w = x.shape
    if padding:
        x = F.pad(x, (padding, padding, padding, padding), mode="reflect")
    dev = x.device
    dy, dx, flip = params.dy.to(dev), params.dx.to(dev), params.flip.to(dev)
    rows = dy[:, None] + torch.arange(h, device=dev)
    cols = dx[:, None] + torch.arange(w, device=dev)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(b, device=dev)[:, None, None]
    out = x.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    return out.permute(0, 3, 1, 2)


def soft_targets(labels: Tensor, n_classes: int, smoothing: float) -> Tensor:
    """One-hot targets with label smoothing: ``1 - s + s / C`` on the label, ``s / C`` elsewhere."""
    out = torch.full((len(labels), n_classes), smoothing / n_classes, device=labels.device)
    return out.scatter_(1, labels[:, None], 1 - smoothing + smoothing / n_classes)


def mix_batch(
    x: Tensor, targets: Tensor, mixup: float, cutmix: float, seed: int, epoch: int, step: int, rank: int
) -> tuple[Tensor, Tensor]:
    """Mixup (``mixup`` = Beta alpha) or cutmix (``cutmix`` = Beta alpha) with the reversed batch; when both are
    on, each batch takes one of them with probability 1/2. Returns mixed images and soft targets."""
    if not (mixup > 0 or cutmix > 0) or len(x) < 2:
        return x, targets
    rng = np.random.default_rng(derive_seed(seed, epoch, step, rank, "mix"))
    use_cutmix = cutmix > 0 and (mixup <= 0 or rng.random() < 0.5)
    alpha = cutmix if use_cutmix else mixup
    lam = float(rng.beta(alpha, alpha))
    partner = x.flip(0)
    if use_cutmix:
        h, w = x.shape[-2:]
        ratio = math.sqrt(1 - lam)
        ch, cw = int(h * ratio), int(w * ratio)
        cy, cx = int(rng.integers(h)), int(rng.integers(w))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        x = x.clone()
        x[:, :, y0:y1, x0:x1] = partner[:, :, y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    else:
        x = x.mul(lam).add_(partner, alpha=1 - lam)
    return x, targets.mul(lam).add_(targets.flip(0), alpha=1 - lam)


def device_augment(
    x: Tensor, config: Any, epoch: int, step: int, rank: int, per_rank: int, keep: Tensor | None = None
) -> Tensor:
    """The per-batch crop and flip of a normalised batch on its device: the parameters are drawn for the global
    batch from ``(seed, epoch, step)`` and this rank's slice is taken (``keep`` drops the images a streamed batch
    lost), so every image gets the same crop and flip whatever the number of processes and the data path."""
    if not (config.crop_padding > 0 or config.hflip):
        return x
    params = crop_flip_params(config.batch_size, config.crop_padding, config.hflip, config.seed, epoch, step)
    params = params.slice(rank * per_rank, (rank + 1) * per_rank)
    if keep is not None:
        params = params.select(keep)
    return random_crop_flip(x, config.crop_padding, params)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed Python's, numpy's and torch's global generators (which timm's transforms draw from) for one image. In the
    main process (``workers=0``) the previous states are put back afterwards, so that loading leaves the training
    RNG alone; a worker process owns its generators (and skips numpy's costly state round trip)."""
    in_main = torch.utils.data.get_worker_info() is None
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state()) if in_main else None
    random.seed(seed)
    np.random.seed(seed % 2**32)
    # The CPU generator alone: torch.manual_seed would also queue a lazy CUDA seeding (with a formatted stack
    # trace, milliseconds) for every image.
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        if states is not None:
            random.setstate(states[0])
            np.random.set_state(states[1])
            torch.set_rng_state(states[2])


def check_auto_augment(policy: str | None) -> None:
    """Raise :class:`MasterkeyError` naming the ``auto_augment`` option unless timm can build ``policy``
    (``rand-m9-mstd0.5-inc1``, ``augmix-m5-w4-d2``, ``original``, ``v0`` ...): timm answers a bad name with a bare
    AssertionError deep inside its transform factory."""
    if not policy:
        return
    from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform

    hparams = {"translate_const": 100, "img_mean": (124, 116, 104)}
    try:
        if policy.startswith("rand"):
            rand_augment_transform(policy, hparams)
        elif policy.startswith("augmix"):
            augment_and_mix_transform(policy, hparams)
        else:
            auto_augment_transform(policy, hparams)
    except (AssertionError, ValueError, KeyError, IndexError, TypeError) as exc:
        detail = str(exc).splitlines()[0][:120] if str(exc) else "unknown policy or section"
        raise MasterkeyError(
            f"{option('auto_augment', policy)}: not a timm augmentation policy ({detail}); expected e.g. "
            "rand-m9-mstd0.5-inc1 (RandAugment), augmix-m5-w4-d2, original or v0 (AutoAugment)"
        ) from None


def worker_transform(config: Any, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> Any:
    """timm's training transform (``create_transform(is_training=True)``): RandomResizedCrop to ``size`` (or, for
    ``train_crop='pad'``, a random crop with reflect padding of the fixed-geometry image), flip, the
    ``auto_augment`` policy, normalisation and random erasing (per-pixel noise)."""
    from timm.data import create_transform
    from torchvision import transforms

    check_auto_augment(config.auto_augment)
    transform = create_transform(
        input_size=size,
        is_training=True,
        hflip=0.5 if config.hflip else 0.0,
        auto_augment=config.auto_augment,
        interpolation=config.interpolation,
        mean=mean,
        std=std,
        re_prob=config.re_prob,
        re_mode="pixel",
        re_count=1,
    )
    if config.train_crop == "pad":  # as ConvNeXt-V2's datasets.py does for 32-pixel images
        if config.crop_padding > 0:
            transform.transforms[0] = transforms.RandomCrop(size, padding=config.crop_padding, padding_mode="reflect")
        else:
            transform.transforms.pop(0)
    return pillow_safe_posterize(transform)


def _posterize(img: Any, bits_to_keep: int, **_: Any) -> Any:
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:  # what ImageOps.posterize did for 0 bits before Pillow refused it: every value to 0
        return img.point([0] * 256 * len(img.getbands()))
    from PIL import ImageOps

    return ImageOps.posterize(img, bits_to_keep)


def pillow_safe_posterize(transform: Any) -> Any:
    """``transform`` with the posterize of its RandAugment / AutoAugment ops made safe for current Pillow.

    At the top magnitude (10, reached by ``rand-m9-mstd0.5``'s noise on about 2% of its draws) timm's
    PosterizeIncreasing asks Pillow to keep 0 bits, which Pillow used to answer with a black image and now refuses
    ("bits must be between or equal to 1 and 8"), killing the loader worker. The old answer is restored for the ops
    of this transform only."""
    from timm.data import auto_augment

    for t in getattr(transform, "transforms", [transform]):
        for op in getattr(t, "ops", []):
            if getattr(op, "aug_fn", None) is auto_augment.posterize:
                op.aug_fn = _posterize
    return transform
