"""Which images a stage reads: stratified splits, cross-fitted folds, calibration images drawn by seed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from masterkey.data.preprocessing import CIFAR10
from masterkey.data.selection import CROSSFIT_NOTE, calibration_images, crossfit_folds, stratified_split
from masterkey.errors import MasterkeyError


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=4, max_size=200), st.floats(0.05, 0.9), st.integers(0, 1000))
def test_stratified_split_is_exact_disjoint_balanced_and_seeded(labels, fraction, seed):
    labels = torch.tensor(labels)
    n_out = round(fraction * len(labels))
    if not 0 < n_out < len(labels):
        with pytest.raises(MasterkeyError):
            stratified_split(labels, fraction, seed)
        return
    keep, out = stratified_split(labels, fraction, seed)
    assert len(out) == n_out and len(keep) + len(out) == len(labels)
    assert set(keep.tolist()).isdisjoint(out.tolist())
    for c in labels.unique():
        total = int((labels == c).sum())
        got = int((labels[out] == c).sum())
        assert abs(got - total * n_out / len(labels)) < 1.0
    again = stratified_split(labels, fraction, seed)
    assert torch.equal(again[1], out)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 60), st.integers(1, 7), st.integers(2, 5), st.integers(0, 99))
def test_crossfit_folds_never_calibrate_on_the_evaluated_images(n: int, n_classes: int, folds: int, seed: int) -> None:
    if folds > n:
        with pytest.raises(MasterkeyError, match="n_folds="):
            crossfit_folds(torch.arange(n) % n_classes, folds)
        return
    labels = torch.arange(n) % n_classes
    pairs = crossfit_folds(labels, folds, seed=seed)
    evaluated = torch.cat([ev for _, ev in pairs])
    assert sorted(evaluated.tolist()) == list(range(n))
    sizes = [len(ev) for _, ev in pairs]
    assert max(sizes) - min(sizes) <= 1
    for calib, ev in pairs:
        assert not set(calib.tolist()) & set(ev.tolist())
        assert len(calib) + len(ev) == n
    capped = crossfit_folds(labels, folds, n_calib=1, seed=seed)
    assert all(len(calib) == 1 for calib, _ in capped)


def test_calibration_images_are_a_seeded_stratified_draw_from_the_whole_training_split(cifar: Path) -> None:
    """Not the first files of each class: different seeds draw different images, every class equally often, and
    the same seed the same images."""
    train = cifar / "train"
    a = calibration_images(train, CIFAR10, 30, seed=0)
    b = calibration_images(train, CIFAR10, 30, seed=1)
    assert len(a) == len(b) == 30
    assert torch.bincount(a.labels, minlength=10).tolist() == [3] * 10
    assert not torch.equal(a.images, b.images)
    assert torch.equal(calibration_images(train, CIFAR10, 30, seed=0).images, a.images)
    from masterkey.data.memory import load_image_folder

    first = load_image_folder(train, max_per_class=3, use_cache=False)
    assert not torch.equal(
        torch.sort(a.images.flatten(1).sum(1)).values, torch.sort(first.images.flatten(1).sum(1)).values
    )


def test_the_crossfit_note_says_what_crossfitting_is() -> None:
    assert CROSSFIT_NOTE == "uses the evaluation distribution"
