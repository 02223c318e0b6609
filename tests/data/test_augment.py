"""Training order and augmentation: (seed, epoch)-derived order, crop / flip against a per-image reference, global
batch parameters, mixup / cutmix, derived seeds."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from masterkey.data import augment as A
from masterkey.data import batches as B
from masterkey.data import preprocessing as P
from masterkey.errors import MasterkeyError


def test_epoch_order_depends_only_on_seed_and_epoch() -> None:
    a = B.epoch_order(100, seed=3, epoch=2)
    assert torch.equal(a, B.epoch_order(100, seed=3, epoch=2))
    assert sorted(a.tolist()) == list(range(100))
    assert not torch.equal(a, B.epoch_order(100, seed=3, epoch=3))
    assert not torch.equal(a, B.epoch_order(100, seed=4, epoch=2))
    assert B.steps_per_epoch(100, 30) == 3
    with pytest.raises(MasterkeyError, match="exceeds the 10 training images"):
        B.steps_per_epoch(10, 20)


def test_crop_flip_matches_a_per_image_reference() -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 8, 9), dtype=torch.uint8, generator=gen)
    mean, std = torch.tensor([0.4, 0.5, 0.6]), torch.tensor([0.2, 0.25, 0.3])
    x = P.normalize_images(images, mean, std)
    torch.testing.assert_close(x, (images.float() / 255 - mean[:, None, None]) / std[:, None, None])
    params = A.crop_flip_params(6, 2, True, seed=1, epoch=0, step=5)
    assert params.flip.any() and not params.flip.all()  # both cases occur with this seed
    out = A.random_crop_flip(x, 2, params)
    for i in range(6):
        padded = F.pad(x[i : i + 1], (2, 2, 2, 2), mode="reflect")[0]
        dy, dx = int(params.dy[i]), int(params.dx[i])
        ref = padded[:, dy : dy + 8, dx : dx + 9]
        if params.flip[i]:
            ref = ref.flip(-1)
        assert torch.equal(out[i], ref)
    assert torch.equal(A.random_crop_flip(x, 0, A.crop_flip_params(6, 0, False, 0, 0, 0)), x)


def test_crop_flip_parameters_are_those_of_the_global_batch() -> None:
    whole = A.crop_flip_params(8, 4, True, seed=0, epoch=1, step=2)
    part = whole.slice(4, 8)
    assert torch.equal(part.dy, whole.dy[4:]) and torch.equal(part.flip, whole.flip[4:])
    assert int(whole.dy.max()) <= 8 and int(whole.dx.min()) >= 0


def test_soft_targets_and_mixing() -> None:
    labels = torch.tensor([0, 1, 2, 3])
    t = A.soft_targets(labels, 4, 0.1)
    torch.testing.assert_close(t.sum(dim=1), torch.ones(4))
    assert float(t[0, 0]) == pytest.approx(0.925) and float(t[0, 1]) == pytest.approx(0.025)
    x = torch.randn(4, 3, 8, 8)
    mixed, targets = A.mix_batch(x, t, mixup=0.8, cutmix=0.0, seed=0, epoch=0, step=0, rank=0)
    lam = float(targets[0, 0] - t[3, 0]) / float(t[0, 0] - t[3, 0])
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x.flip(0))
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(4))
    cut, targets = A.mix_batch(x, t, mixup=0.0, cutmix=1.0, seed=0, epoch=0, step=1, rank=0)
    from_partner = (cut != x).any(dim=1)[0].float().mean()  # fraction of pixels pasted from the partner
    lam = float(targets[0, 0] - t[3, 0]) / float(t[0, 0] - t[3, 0])
    assert float(from_partner) == pytest.approx(1 - lam, abs=1e-6)
    assert A.mix_batch(x, t, 0.0, 0.0, 0, 0, 0, 0)[0] is x


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 1000), st.integers(0, 50), st.integers(0, 50))
def test_derived_seeds_are_stable_and_distinct(seed: int, epoch: int, step: int) -> None:
    assert A.derive_seed(seed, epoch, step) == A.derive_seed(seed, epoch, step)
    assert A.derive_seed(seed, epoch, step) != A.derive_seed(seed, epoch, step + 1)
    assert 0 <= A.derive_seed(seed, epoch, step) < 2**63
