"""BatchNorm recalibration after a swap."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import timm
import torch

from masterkey.data.evaluate import evaluate
from masterkey.data.memory import ImageSet
from masterkey.data.preprocessing import CIFAR10, IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from masterkey.data.selection import calibration_images, load_eval_images
from masterkey.data.stream import StreamedImages
from masterkey.errors import MasterkeyError
from masterkey.networks.models import create_model
from masterkey.networks.recalibrate import batchnorm_layers, has_batchnorm, recalibrate_batchnorm
from masterkey.networks.surgery import swap_depthwise

SMALL = Preprocessing(146, 128, "bilinear", IMAGENET_MEAN, IMAGENET_STD)


def _images(n: int, size: int = 64, seed: int = 0) -> ImageSet:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), generator=gen, dtype=torch.uint8)
    return ImageSet(images, torch.zeros(n, dtype=torch.long), ["x"], "random")


def test_recalibration_re_estimates_statistics_and_nothing_else() -> None:
    model = timm.create_model("test_efficientnet", num_classes=4).eval()
    bns = batchnorm_layers(model)
    assert bns and has_batchnorm(model)
    momenta = [bn.momentum for _, bn in bns]
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    before = {name: bn.running_var.clone() for name, bn in bns}
    report = recalibrate_batchnorm(model, _images(20), SMALL, batch_size=10, progress=False)
    assert report.n_images == 20 and report.n_batchnorm == len(bns)
    assert not model.training and all(not m.training for m in model.modules())
    assert [bn.momentum for _, bn in bns] == momenta
    assert all(not torch.allclose(bn.running_var, before[name]) for name, bn in bns)
    for key, value in model.state_dict().items():
        if key in weights:
            assert torch.equal(value, weights[key]), key
    # The first BatchNorm sees fixed inputs: its cumulative average over two batches of 10 is the mean over 20.
    stats = {name: bn.running_mean.clone() for name, bn in bns}
    recalibrate_batchnorm(model, _images(20), SMALL, batch_size=20, progress=False)
    first = bns[0][1]
    torch.testing.assert_close(first.running_mean, stats[bns[0][0]], rtol=1e-4, atol=1e-5)


def test_first_layer_statistics_are_the_batch_statistics() -> None:
    """For the first BatchNorm (after a fixed conv) the estimate equals the exact mean / variance of its input."""
    model = timm.create_model("test_efficientnet", num_classes=4).eval()
    images = _images(16)
    recalibrate_batchnorm(model, images, SMALL, batch_size=16, progress=False)
    x = (images.images.float() / 255 - torch.tensor(SMALL.mean).view(1, 3, 1, 1)) / torch.tensor(SMALL.std).view(
        1, 3, 1, 1
    )
    with torch.no_grad():
        stem = model.conv_stem(x)
    torch.testing.assert_close(model.bn1.running_mean, stem.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.bn1.running_var, stem.var(dim=(0, 2, 3), unbiased=True), rtol=1e-3, atol=1e-5)


@pytest.mark.accuracy
def test_recalibration_recovers_accuracy_after_a_swap(models_dir: Path, shared: Path) -> None:
    """MobileNetV2 with paper8 (3x3 crop): recalibrating on other ImageNet images recovers accuracy measurably.

    Small input (128 px) to keep it cheap: 48 evaluation images, 64 calibration images, disjoint classes."""
    model = create_model("torchvision:mobilenet_v2", weights=models_dir / "mobilenet_v2_imagenet.pth")
    images = load_eval_images(shared / "data" / "imagenet-samples" / "val", SMALL, max_images=112, seed=1)
    evaluation, calibration = images.subset(range(48)), images.subset(range(48, 112))
    swap_depthwise(model, "paper8", resize=True)
    swapped = evaluate(model, evaluation, SMALL, progress=False)
    recalibrate_batchnorm(model, calibration, SMALL, batch_size=32, progress=False)
    recalibrated = evaluate(model, evaluation, SMALL, progress=False)
    # Measured: top-1 4.2% -> 14.6%, top-5 8.3% -> 41.7% (unswapped: 79.2% / 95.8%).
    assert swapped["top1"] <= 10
    assert recalibrated["top1"] >= swapped["top1"] + 6
    assert recalibrated["top5"] >= swapped["top5"] + 20


def test_bad_calibration_inputs(shared: Path, cifar_convnexts) -> None:
    convnext = create_model(weights=cifar_convnexts[0])
    assert not has_batchnorm(convnext)
    with pytest.raises(MasterkeyError, match="no BatchNorm layer"):
        recalibrate_batchnorm(convnext, _images(4, 32), CIFAR10, progress=False)
    test_dir = shared / "data" / "cifar10" / "test"
    with pytest.raises(MasterkeyError, match="calibration images are the evaluation images"):
        calibration_images(test_dir, CIFAR10, 10, exclude=test_dir)
    with pytest.raises(MasterkeyError, match="at least 1"):
        calibration_images(test_dir, CIFAR10, 0)
    model = copy.deepcopy(timm.create_model("test_efficientnet", num_classes=4))
    with pytest.raises(MasterkeyError, match="at least 2 images"):
        recalibrate_batchnorm(model, _images(1), SMALL, progress=False)
    picked = calibration_images(shared / "data" / "cifar10" / "train", CIFAR10, 25, exclude=test_dir)
    assert len(picked) == 25 and len(set(picked.labels.tolist())) == 10


def test_streamed_calibration_images_give_the_statistics_of_in_memory_ones(shared: Path) -> None:
    """The same 21 real training images, in memory and streamed by 2 workers (last batch of 1 folded in): equal
    running statistics, bit for bit."""
    train_dir = shared / "data" / "imagenette-128" / "train"
    memory = calibration_images(train_dir, SMALL, 21, seed=3)
    streamed = calibration_images(train_dir, SMALL, 21, seed=3, data_mode="stream")
    assert isinstance(streamed, StreamedImages) and torch.equal(streamed.labels, memory.labels)
    stats = []
    for images, workers in ((memory, None), (streamed, 2)):
        torch.manual_seed(0)  # the same random model both times
        model = timm.create_model("test_efficientnet", num_classes=10).eval()
        recalibrate_batchnorm(model, images, SMALL, batch_size=10, progress=False, workers=workers)
        stats.append([bn.running_var.clone() for _, bn in batchnorm_layers(model)])
    assert all(torch.equal(a, b) for a, b in zip(*stats, strict=True))
