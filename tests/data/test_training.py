"""Training data: layout checks, class-balanced subsets, (seed, epoch)-derived order and on-device augmentation."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from masterkey.data import training as T
from masterkey.data.preprocessing import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN
from masterkey.errors import MasterkeyError


def test_cifar_subsets_are_class_balanced_and_fixed(cifar: Path) -> None:
    data = T.load_train_data(cifar, max_train_images=45, max_test_images=20)
    assert len(data.train) == 45 and len(data.test) == 20
    assert data.classes[:3] == ["airplane", "automobile", "bird"]
    counts = torch.bincount(data.train.labels, minlength=10)
    assert int(counts.max() - counts.min()) <= 1
    assert torch.bincount(data.test.labels, minlength=10).tolist() == [2] * 10
    assert data.image_shape == (3, 32, 32) and data.train.images.dtype == torch.uint8
    assert (data.mean, data.std) == (CIFAR10_MEAN, CIFAR10_STD)
    again = T.load_train_data(cifar, max_train_images=45, max_test_images=20)
    assert torch.equal(again.train.images, data.train.images)


def test_dataset_normalisation_matches_a_direct_computation(cifar: Path) -> None:
    data = T.load_train_data(cifar, max_train_images=20, max_test_images=10, normalize="dataset")
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
        T.find_splits(tmp_path / "absent")
    # One split's class folders given instead of the folder holding train/ and test/.
    with pytest.raises(MasterkeyError, match=r"missing train/.*found sub-folders: airplane.*point data at"):
        T.find_splits(cifar / "train")
    only_train = _tree(tmp_path / "a", cifar, {"train": ["cat", "dog"]})
    with pytest.raises(MasterkeyError, match=r"missing test/ \(or val/\)"):
        T.find_splits(only_train)
    with_val = _tree(tmp_path / "b", cifar, {"train": ["cat", "dog"], "val": ["cat", "dog"]})
    assert T.find_splits(with_val)[1].name == "val"
    data = T.load_train_data(with_val)
    assert data.mean == IMAGENET_MEAN  # not a CIFAR folder: ImageNet statistics
    mismatch = _tree(tmp_path / "c", cifar, {"train": ["cat", "dog"], "test": ["cat", "frog"]})
    with pytest.raises(MasterkeyError, match=r"different classes.*only in train: \['dog'\].*only in test: \['frog'\]"):
        T.load_train_data(mismatch)
    empty = tmp_path / "d"
    (empty / "train" / "cat").mkdir(parents=True)
    (empty / "test").mkdir()
    with pytest.raises(MasterkeyError, match="ImageFolder layout"):
        T.load_train_data(empty)
