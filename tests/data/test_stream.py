"""Streaming: sample lists (ImageFolder trees, tar shards written here from real images, timm schemes), streamed
images equal to the in-memory ones pixel for pixel, evaluations that stop on an unreadable image, and the choice
between memory and streaming."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
import torch

from masterkey.data.decode import list_image_folder
from masterkey.data.memory import load_image_folder
from masterkey.data.samples import list_samples, write_tar_shards
from masterkey.data.stream import (
    StreamedImages,
    choose_data_mode,
    decode_all,
    format_bytes,
    image_batches,
    memory_budget,
    parse_size,
    ranges,
)
from masterkey.errors import MasterkeyError


@pytest.fixture(scope="module")
def imagenette(shared: Path) -> Path:
    return shared / "data" / "imagenette-128"


def test_folder_samples_are_listed_as_the_in_memory_path_lists_them(
    small_tree, imagenette: Path, tmp_path: Path
) -> None:
    tree = small_tree(tmp_path / "tree", imagenette / "val")
    files, labels, classes = list_image_folder(tree)
    samples = list_samples(tree)
    assert samples.classes == classes and samples.labels.tolist() == labels
    assert [samples.name(i) for i in range(len(samples))] == [str(f) for f in files]
    sub = samples.subset([5, 0])
    assert sub.labels.tolist() == [labels[5], labels[0]] and sub.name(0) == str(files[5])


def test_streamed_images_are_the_in_memory_pixels(small_tree, imagenette: Path, tmp_path: Path) -> None:
    tree = small_tree(tmp_path / "tree", imagenette / "val")
    memory = load_image_folder(tree, resize=73, crop=64, interpolation="bicubic", use_cache=False)
    streamed = StreamedImages(list_samples(tree), 73, 64, "bicubic")
    assert len(streamed) == len(memory) == 12 and streamed.image_shape() == (3, 64, 64)
    for workers in (0, 2):
        batches = list(image_batches(streamed, ranges(len(streamed), 5), workers=workers))
        assert [len(x) for x, _ in batches] == [5, 5, 2]
        assert torch.equal(torch.cat([x for x, _ in batches]), memory.images)
        assert torch.equal(torch.cat([y for _, y in batches]), memory.labels)
    assert torch.equal(decode_all(streamed, workers=0).images, memory.images)
    # An in-memory set goes through the same loop; ranges are slices, index lists gather.
    (x, _), (x2, _) = image_batches(memory, [range(2, 4), [7, 1]])
    assert torch.equal(x, memory.images[2:4]) and torch.equal(x2, memory.images[[7, 1]])
    assert StreamedImages(list_samples(tree), None, None).image_shape() == (3, 128, 128)  # from the header


def test_tar_shards_read_like_the_folder_they_were_written_from(small_tree, imagenette: Path, tmp_path: Path) -> None:
    tree = small_tree(tmp_path / "tree", imagenette / "val")
    shards = tmp_path / "shards"
    write_tar_shards(tree, shards, 2)
    samples = list_samples(shards)
    folder = list_samples(tree)
    assert samples.classes == folder.classes and len(samples) == len(folder)
    assert "shards: n0" in samples.name(0)
    by_name = {Path(folder.name(i)).name: i for i in range(len(folder))}
    pixels = decode_all(StreamedImages(samples, 73, 64), workers=2)
    reference = decode_all(StreamedImages(folder, 73, 64), workers=0)
    for i in range(len(samples)):
        j = by_name[Path(samples.name(i)).name]
        assert int(samples.labels[i]) == int(folder.labels[j])
        assert torch.equal(pixels.images[i], reference.images[j])
    single = tmp_path / "val.tar"
    with tarfile.open(single, "w") as tf:
        for f in sorted(tree.rglob("*.JPEG")):
            tf.add(f, arcname=f"{f.parent.name}/{f.name}")
    assert len(list_samples(single)) == 12


def test_bad_shards_give_clear_errors(small_tree, imagenette: Path, tmp_path: Path) -> None:
    tree = small_tree(tmp_path / "tree", imagenette / "val", classes=2, per_class=2)
    shards = tmp_path / "shards"
    write_tar_shards(tree, shards, 1)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "shard-000.tar").write_bytes(b"")
    with pytest.raises(MasterkeyError, match=r"shard-000.tar: empty tar shard \(0 bytes\)"):
        list_samples(empty)
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "shard-000.tar").write_bytes((shards / "shard-000.tar").read_bytes()[:3000])
    with pytest.raises(MasterkeyError, match=r"truncated/shard-000.tar: not a readable tar file"):
        list_samples(truncated)
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "a.tar").write_bytes(b"not a tar file at all" * 40)
    with pytest.raises(MasterkeyError, match=r"garbage/a.tar: not a readable tar file"):
        list_samples(garbage)
    no_images = tmp_path / "no-images"
    no_images.mkdir()
    with tarfile.open(no_images / "a.tar", "w") as tf:
        info = tarfile.TarInfo("cls/readme.txt")
        info.size = 5
        tf.addfile(info, io.BytesIO(b"hello"))
    with pytest.raises(MasterkeyError, match="the tar shards hold no images"):
        list_samples(no_images)
    with pytest.raises(MasterkeyError, match="no such data folder or tar file"):
        list_samples(tmp_path / "absent")


def test_an_unreadable_image_stops_an_evaluation_with_its_file_named(
    small_tree, imagenette: Path, tmp_path: Path
) -> None:
    tree = small_tree(tmp_path / "tree", imagenette / "val", classes=2, per_class=3)
    victim = sorted((tree / sorted(p.name for p in tree.iterdir())[1]).iterdir())[1]
    victim.write_bytes(victim.read_bytes()[:300])  # a truncated JPEG in the middle of the set
    streamed = StreamedImages(list_samples(tree), 73, 64)
    for workers in (0, 2):
        with pytest.raises(MasterkeyError, match=rf"{victim.name}: cannot decode image .*the evaluation stops"):
            list(image_batches(streamed, ranges(len(streamed), 2), workers=workers))
    # In a tar shard the member is named.
    shards = tmp_path / "shards"
    write_tar_shards(tree, shards, 1)
    with pytest.raises(MasterkeyError, match=rf"shard-000.tar.*{victim.name}: cannot decode image|{victim.name}"):
        list(image_batches(StreamedImages(list_samples(shards), 73, 64), ranges(6, 6), workers=0))


def test_timm_schemes_that_only_iterate_or_cannot_be_read_are_refused(tmp_path: Path) -> None:
    with pytest.raises(MasterkeyError, match="'wds/' data sets only as a stream"):
        list_samples(tmp_path, "wds/imagenet")
    with pytest.raises(MasterkeyError, match=r"dataset=torch/cifar10 path=.*timm cannot read it"):
        list_samples(tmp_path, "torch/cifar10")


def test_sizes_and_the_memory_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_size("16G") == 16 * 1024**3 and parse_size("512m") == 512 * 1024**2
    assert parse_size("1.5GiB") == int(1.5 * 1024**3) and parse_size("1000") == 1000
    for bad in ("lots", "-1G", "0"):
        with pytest.raises(MasterkeyError, match="expected a size such as 16G|at least one byte"):
            parse_size(bad)
    assert format_bytes(3 * 1024**3) == "3.0 GiB"
    monkeypatch.setenv("MASTERKEY_MEMORY_BUDGET", "100M")
    assert memory_budget() == (100 * 1024**2, "MASTERKEY_MEMORY_BUDGET")
    assert memory_budget("2G") == (2 * 1024**3, "memory_budget")
    monkeypatch.delenv("MASTERKEY_MEMORY_BUDGET")
    budget, source = memory_budget()
    assert budget > 0 and source == "half of the available memory"


def test_auto_keeps_memory_when_the_set_fits_and_streams_when_it_does_not() -> None:
    # ImageNet-1k at 224 px: 1,331,167 images, 186.6 GiB decoded.
    imagenet = choose_data_mode("auto", 1_331_167, (3, 224, 224), what="imagenet", budget="64G")
    assert imagenet.stream and "186.6 GiB at 3x224x224, above the memory budget 64.0 GiB (memory_budget)" in (
        imagenet.reason
    )
    cifar = choose_data_mode("auto", 60_000, (3, 32, 32), what="cifar10", budget="64G")
    assert not cifar.stream and cifar.reason.startswith("memory: 60,000 images of cifar10 decode to 175.8 MiB")
    assert choose_data_mode("stream", 10, (3, 8, 8), what="x").reason.startswith("stream (asked for")
    with pytest.raises(MasterkeyError, match=r"data_mode=memory: 1,331,167 images of imagenet decode to 186.6 GiB.*"
                       "above the memory budget 64.0 GiB"):  # fmt: skip
        choose_data_mode("memory", 1_331_167, (3, 224, 224), what="imagenet", budget="64G")
    needs = "the per-image augmentation (RandAugment) runs in DataLoader workers"
    assert choose_data_mode("auto", 10, (3, 8, 8), what="x", needs_stream=needs).reason == f"stream: {needs}"
    with pytest.raises(MasterkeyError, match="data_mode=memory: the per-image augmentation"):
        choose_data_mode("memory", 10, (3, 8, 8), what="x", needs_stream=needs)
    with pytest.raises(MasterkeyError, match="expected auto, memory or stream"):
        choose_data_mode("disk", 10, (3, 8, 8), what="x")
