"""Training data: layout checks, class-balanced subsets, (seed, epoch)-derived order and on-device augmentation."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from masterkey.errors import MasterkeyError
from masterkey.images import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN
from masterkey.train import data as D


def test_cifar_subsets_are_class_balanced_and_fixed(cifar: Path) -> None:
    data = D.load_train_data(cifar, max_train_images=45, max_test_images=20)
    assert len(data.train) == 45 and len(data.test) == 20
    assert data.classes[:3] == ["airplane", "automobile", "bird"]
    counts = torch.bincount(data.train.labels, minlength=10)
    assert int(counts.max() - counts.min()) <= 1
    assert torch.bincount(data.test.labels, minlength=10).tolist() == [2] * 10
    assert data.image_shape == (3, 32, 32) and data.train.images.dtype == torch.uint8
    assert (data.mean, data.std) == (CIFAR10_MEAN, CIFAR10_STD)
    again = D.load_train_data(cifar, max_train_images=45, max_test_images=20)
    assert torch.equal(again.train.images, data.train.images)


def test_dataset_normalisation_matches_a_direct_computation(cifar: Path) -> None:
    data = D.load_train_data(cifar, max_train_images=20, max_test_images=10, normalize="dataset")
    x = data.train.images.double() / 255
    torch.testing.assert_close(torch.tensor(data.mean, dtype=torch.float64), x.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(torch.tensor(data.std, dtype=torch.float64), x.std(dim=(0, 2, 3), unbiased=False))


def _tree(root: Path, cifar: Path, splits: dict[str, list[str]], per_class: int = 2) -> Path:
    for split, classes in splits.items():
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
            for img in sorted((cifar / "train" / cls).iterdir())[:per_class]:
                shutil.copy(img, root / split / cls / img.name)
    return root


def test_wrong_layouts_give_clear_errors(tmp_path: Path, cifar: Path) -> None:
    with pytest.raises(MasterkeyError, match="no such data folder"):
        D.find_splits(tmp_path / "absent")
    # One split's class folders given instead of the folder holding train/ and test/.
    with pytest.raises(MasterkeyError, match=r"missing train/.*found sub-folders: airplane.*point data at"):
        D.find_splits(cifar / "train")
    only_train = _tree(tmp_path / "a", cifar, {"train": ["cat", "dog"]})
    with pytest.raises(MasterkeyError, match=r"missing test/ \(or val/\)"):
        D.find_splits(only_train)
    with_val = _tree(tmp_path / "b", cifar, {"train": ["cat", "dog"], "val": ["cat", "dog"]})
    assert D.find_splits(with_val)[1].name == "val"
    data = D.load_train_data(with_val)
    assert data.mean == IMAGENET_MEAN  # not a CIFAR folder: ImageNet statistics
    mismatch = _tree(tmp_path / "c", cifar, {"train": ["cat", "dog"], "test": ["cat", "frog"]})
    with pytest.raises(MasterkeyError, match=r"different classes.*only in train: \['dog'\].*only in test: \['frog'\]"):
        D.load_train_data(mismatch)
    empty = tmp_path / "d"
    (empty / "train" / "cat").mkdir(parents=True)
    (empty / "test").mkdir()
    with pytest.raises(MasterkeyError, match="ImageFolder layout"):
        D.load_train_data(empty)


def test_epoch_order_depends_only_on_seed_and_epoch() -> None:
    a = D.epoch_order(100, seed=3, epoch=2)
    assert torch.equal(a, D.epoch_order(100, seed=3, epoch=2))
    assert sorted(a.tolist()) == list(range(100))
    assert not torch.equal(a, D.epoch_order(100, seed=3, epoch=3))
    assert not torch.equal(a, D.epoch_order(100, seed=4, epoch=2))
    assert D.steps_per_epoch(100, 30) == 3
    with pytest.raises(MasterkeyError, match="exceeds the 10 training images"):
        D.steps_per_epoch(10, 20)


def test_crop_flip_matches_a_per_image_reference() -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 8, 9), dtype=torch.uint8, generator=gen)
    mean, std = torch.tensor([0.4, 0.5, 0.6]), torch.tensor([0.2, 0.25, 0.3])
    x = D.normalize_images(images, mean, std)
    torch.testing.assert_close(x, (images.float() / 255 - mean[:, None, None]) / std[:, None, None])
    params = D.crop_flip_params(6, 2, True, seed=1, epoch=0, step=5)
    assert params.flip.any() and not params.flip.all()  # both cases occur with this seed
    out = D.random_crop_flip(x, 2, params)
    for i in range(6):
        padded = F.pad(x[i : i + 1], (2, 2, 2, 2), mode="reflect")[0]
        dy, dx = int(params.dy[i]), int(params.dx[i])
        ref = padded[:, dy : dy + 8, dx : dx + 9]
        if params.flip[i]:
            ref = ref.flip(-1)
        assert torch.equal(out[i], ref)
    assert torch.equal(D.random_crop_flip(x, 0, D.crop_flip_params(6, 0, False, 0, 0, 0)), x)


def test_crop_flip_parameters_are_those_of_the_global_batch() -> None:
    whole = D.crop_flip_params(8, 4, True, seed=0, epoch=1, step=2)
    part = whole.slice(4, 8)
    assert torch.equal(part.dy, whole.dy[4:]) and torch.equal(part.flip, whole.flip[4:])
    assert int(whole.dy.max()) <= 8 and int(whole.dx.min()) >= 0


def test_soft_targets_and_mixing() -> None:
    labels = torch.tensor([0, 1, 2, 3])
    t = D.soft_targets(labels, 4, 0.1)
    torch.testing.assert_close(t.sum(dim=1), torch.ones(4))
    assert float(t[0, 0]) == pytest.approx(0.925) and float(t[0, 1]) == pytest.approx(0.025)
    x = torch.randn(4, 3, 8, 8)
    mixed, targets = D.mix_batch(x, t, mixup=0.8, cutmix=0.0, seed=0, epoch=0, step=0, rank=0)
    lam = float(targets[0, 0] - t[3, 0]) / float(t[0, 0] - t[3, 0])
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x.flip(0))
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(4))
    cut, targets = D.mix_batch(x, t, mixup=0.0, cutmix=1.0, seed=0, epoch=0, step=1, rank=0)
    from_partner = (cut != x).any(dim=1)[0].float().mean()  # fraction of pixels pasted from the partner
    lam = float(targets[0, 0] - t[3, 0]) / float(t[0, 0] - t[3, 0])
    assert float(from_partner) == pytest.approx(1 - lam, abs=1e-6)
    assert D.mix_batch(x, t, 0.0, 0.0, 0, 0, 0, 0)[0] is x


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 1000), st.integers(0, 50), st.integers(0, 50))
def test_derived_seeds_are_stable_and_distinct(seed: int, epoch: int, step: int) -> None:
    assert D.derive_seed(seed, epoch, step) == D.derive_seed(seed, epoch, step)
    assert D.derive_seed(seed, epoch, step) != D.derive_seed(seed, epoch, step + 1)
    assert 0 <= D.derive_seed(seed, epoch, step) < 2**63
