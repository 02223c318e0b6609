"""Evaluation: the model's own preprocessing, top-1 / top-5, clear errors for bad data."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from masterkey.data.evaluate import accuracy, check_class_count, evaluate, predict_logits
from masterkey.data.memory import ImageSet
from masterkey.data.preprocessing import CIFAR10, TORCHVISION_IMAGENET, preprocessing_for, preprocessing_named
from masterkey.data.selection import load_eval_images
from masterkey.data.stream import StreamedImages, image_batches, ranges
from masterkey.errors import MasterkeyError
from masterkey.networks.models import create_model


@pytest.fixture(scope="module")
def convnext(cifar_convnexts):
    return create_model(weights=next(p for p in cifar_convnexts if "convnext_atto_s2" in p.name))


def test_preprocessing_follows_the_model() -> None:
    import timm
    import torchvision

    tf_lite = preprocessing_for(timm.create_model("tf_efficientnet_lite0"))
    assert (tf_lite.resize, tf_lite.crop, tf_lite.interpolation) == (256, 224, "bicubic")
    assert tf_lite.mean == (0.5, 0.5, 0.5) and tf_lite.std == (0.5, 0.5, 0.5)
    assert preprocessing_for(torchvision.models.mobilenet_v2()) == TORCHVISION_IMAGENET
    assert preprocessing_for(torchvision.models.mobilenet_v2(), {"dataset": "cifar10-jpeg"}) == CIFAR10
    assert preprocessing_named("imagenet", torchvision.models.mobilenet_v2()) == TORCHVISION_IMAGENET
    with pytest.raises(MasterkeyError, match="expected auto, cifar10 or imagenet"):
        preprocessing_named("svhn", torchvision.models.mobilenet_v2())


def test_accuracy_counts_top1_and_top5() -> None:
    logits = torch.tensor([[0.0, 5, 1, 2, 3, 4, -1], [9.0, 0, 1, 2, 3, 4, 5], [0.0, 1, 2, 3, 4, 5, 6]])
    labels = torch.tensor([1, 6, 0])
    out = accuracy(logits, labels)
    assert out == {"top1": pytest.approx(100 / 3), "top5": pytest.approx(200 / 3), "n": 3}


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 40), st.integers(2, 12), st.integers(0, 1000))
def test_accuracy_matches_a_direct_count(n: int, classes: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=gen)
    labels = torch.randint(classes, (n,), generator=gen)
    out = accuracy(logits, labels)
    ranks = (logits > logits.gather(1, labels[:, None])).sum(dim=1)
    assert out["top1"] == pytest.approx(100 * float((ranks == 0).double().mean()))
    assert out["top5"] == pytest.approx(100 * float((ranks < 5).double().mean()))
    assert out["top1"] <= out["top5"]


@pytest.mark.accuracy
def test_cifar_convnext_accuracy_on_real_images(convnext, shared: Path) -> None:
    images = load_eval_images(shared / "data" / "cifar10" / "test", CIFAR10, max_per_class=10)
    assert len(images) == 100 and images.images.shape[1:] == (3, 32, 32)
    out = evaluate(convnext, images, CIFAR10, progress=False)
    # 85.1% on the full test set; 100 images leave several points of slack either way.
    assert 72 <= out["top1"] <= 97 and out["top5"] >= 95
    assert out["n"] == 100 and out["top1"] == round(out["top1"])  # a whole number of the 100 images, no float noise


def test_max_images_decodes_a_stratified_subset(shared: Path) -> None:
    images = load_eval_images(shared / "data" / "imagenet-samples" / "val", TORCHVISION_IMAGENET, max_images=12)
    assert len(images) == 12 and len(images.classes) == 1000
    assert images.images.shape[1:] == (3, 224, 224)
    assert len(set(images.labels.tolist())) == 12
    again = load_eval_images(shared / "data" / "imagenet-samples" / "val", TORCHVISION_IMAGENET, max_images=12)
    assert torch.equal(again.labels, images.labels)


def test_missing_and_empty_data_folders(tmp_path: Path) -> None:
    with pytest.raises(MasterkeyError, match="no such data folder"):
        load_eval_images(tmp_path / "nope", CIFAR10)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MasterkeyError, match="ImageFolder layout"):
        load_eval_images(tmp_path / "empty", CIFAR10)
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "x.png").write_bytes(b"")
    with pytest.raises(MasterkeyError, match="one sub-folder per class"):
        load_eval_images(tmp_path / "flat", CIFAR10)


def test_class_count_mismatch(convnext, shared: Path, tmp_path: Path) -> None:
    src = shared / "data" / "cifar10" / "test"
    for cls in ("airplane", "cat", "dog"):
        (tmp_path / cls).mkdir()
        for f in sorted((src / cls).iterdir())[:2]:
            shutil.copy(f, tmp_path / cls / f.name)
    images = load_eval_images(tmp_path, CIFAR10)
    with pytest.raises(MasterkeyError, match="class-count mismatch: the data has 3 classes, the model predicts 10"):
        evaluate(convnext, images, CIFAR10, progress=False)
    assert check_class_count(convnext, load_eval_images(src, CIFAR10, max_per_class=1), CIFAR10) == 10


@pytest.fixture(scope="module")
def mobilenet_v2(models_dir: Path):
    return create_model("torchvision:mobilenet_v2", weights=models_dir / "mobilenet_v2_imagenet.pth")


def test_streamed_and_in_memory_images_give_the_same_logits(mobilenet_v2, shared: Path) -> None:
    """24 ImageNet samples with the model's own preprocessing (resize 256, crop 224): decoded once, or streamed
    by 2 workers batch by batch — bitwise the same logits."""
    root = shared / "data" / "imagenet-samples" / "val"
    prep = preprocessing_for(mobilenet_v2)
    memory = load_eval_images(root, prep, max_images=24, seed=2)
    streamed = load_eval_images(root, prep, max_images=24, seed=2, data_mode="stream")
    assert isinstance(streamed, StreamedImages) and torch.equal(streamed.labels, memory.labels)
    a = predict_logits(mobilenet_v2, memory, prep, batch_size=10, progress=False)
    b = predict_logits(mobilenet_v2, streamed, prep, batch_size=10, progress=False, workers=2)
    assert torch.equal(a, b)


def test_the_data_mode_is_chosen_and_memory_that_does_not_fit_is_refused(
    shared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = shared / "data" / "imagenet-samples" / "val"
    monkeypatch.setenv("MASTERKEY_MEMORY_BUDGET", "1M")  # 12 images at 224 px: 1.7 MiB
    assert isinstance(load_eval_images(root, TORCHVISION_IMAGENET, max_images=12, data_mode="auto"), StreamedImages)
    with pytest.raises(MasterkeyError, match=r"data_mode=memory: 12 images of .*imagenet-samples/val decode to"):
        load_eval_images(root, TORCHVISION_IMAGENET, max_images=12, data_mode="memory")
    monkeypatch.setenv("MASTERKEY_MEMORY_BUDGET", "1G")
    assert not isinstance(load_eval_images(root, TORCHVISION_IMAGENET, max_images=12, data_mode="auto"), StreamedImages)


@pytest.mark.accuracy
@pytest.mark.slow
def test_mobilenet_v2_scores_82_3_percent_on_the_imagenet_samples_both_ways(mobilenet_v2, shared: Path) -> None:
    """The acceptance check of streaming: all 1,000 samples, in memory and streamed, 82.3% top-1 / 95.5% top-5
    each. The model runs once, on the images in memory: streamed, it gets the same batches bit for bit (checked
    here), and :func:`evaluate` feeds both kinds through one path, so the numbers are the same; a second pass of
    the model over the same tensors would only check torch, at twice the cost (about a minute of CPU)."""
    root = shared / "data" / "imagenet-samples" / "val"
    prep = preprocessing_for(mobilenet_v2)
    memory = load_eval_images(root, prep, data_mode="memory")
    streamed = load_eval_images(root, prep, data_mode="stream")
    assert isinstance(memory, ImageSet) and isinstance(streamed, StreamedImages)
    batches = ranges(len(streamed), 100)
    pairs = zip(image_batches(memory, batches), image_batches(streamed, batches, workers=2), strict=True)
    for (x_memory, y_memory), (x_streamed, y_streamed) in pairs:
        assert torch.equal(x_memory, x_streamed) and torch.equal(y_memory, y_streamed)
    out = evaluate(mobilenet_v2, memory, prep, batch_size=100, progress=False, workers=2)
    assert (out["n"], out["top1"], out["top5"]) == (1000, 82.3, 95.5)
