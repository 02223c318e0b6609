import os

import pytest
import torch

from masterkey.data import decode
from masterkey.data.decode import list_image_folder
from masterkey.data.memory import load_image_folder
from masterkey.errors import MasterkeyError


def test_cifar_subset_decodes_and_caches(shared, tmp_path):
    root = shared / "data" / "cifar10" / "test"
    first = load_image_folder(root, max_per_class=3, cache_dir=tmp_path)
    assert first.images.shape == (30, 3, 32, 32) and first.images.dtype == torch.uint8
    assert first.classes[0] == "airplane" and first.labels.tolist() == sorted(first.labels.tolist())
    assert len(list((tmp_path / "images").glob("*.safetensors"))) == 1
    again = load_image_folder(root, max_per_class=3, cache_dir=tmp_path)
    assert torch.equal(again.images, first.images)


def test_varied_sizes_need_resize_and_crop(shared, tmp_path):
    root = shared / "data" / "imagenet-samples" / "val"
    with pytest.raises(MasterkeyError, match="different sizes"):
        load_image_folder(root, max_per_class=1, cache_dir=tmp_path, use_cache=False, workers=2)
    sub = tmp_path / "few"
    for cls in sorted(root.iterdir())[:4]:
        (sub / cls.name).mkdir(parents=True)
        for img in cls.iterdir():
            (sub / cls.name / img.name).write_bytes(img.read_bytes())
    imgs = load_image_folder(sub, resize=256, crop=224, cache_dir=tmp_path)
    assert imgs.images.shape == (4, 3, 224, 224)


def test_layout_errors(tmp_path):
    with pytest.raises(MasterkeyError, match="no such data folder"):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.jpg").write_bytes(b"x")
    with pytest.raises(MasterkeyError, match="one sub-folder per class"):
        load_image_folder(tmp_path / "flat")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(MasterkeyError, match="ROOT/CLASS/IMAGE"):
        load_image_folder(tmp_path / "empty")


def test_a_folder_listing_is_reused_only_while_no_folder_changed(tmp_path, monkeypatch):
    """Listings are cached by every folder's ctime: a file added, removed or renamed in any class folder is seen,
    even when the folder's mtime is set back; a folder changed within the last seconds is listed afresh."""
    root = tmp_path / "tree"
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in (2, 0, 10, 1):
            (root / cls / f"{i}.png").write_bytes(b"")
    (root / "dog" / "notes.txt").write_bytes(b"")
    monkeypatch.setattr(decode, "_LISTINGS", {})  # this process's own listings are none of this test's business
    cached = 0
    files, labels, classes = list_image_folder(root)
    assert [f.relative_to(root).as_posix() for f in files[:4]] == ["cat/0.png", "cat/1.png", "cat/10.png", "cat/2.png"]
    assert labels == [0] * 4 + [1] * 4 and classes == ["cat", "dog"]
    assert len(decode._LISTINGS) == cached  # just written: not reused

    monkeypatch.setattr(decode, "RACY_NS", 0)
    list_image_folder(root)
    assert len(decode._LISTINGS) == cached + 1
    files = list_image_folder(root)[0]  # the cached listing
    files.append(root / "mutated")  # the caller's list is its own
    assert list_image_folder(root)[0] == files[:-1]
    stamp = (root / "dog").stat()
    (root / "dog" / "3.png").write_bytes(b"")
    os.utime(root / "dog", ns=(stamp.st_atime_ns, stamp.st_mtime_ns))  # the mtime as it was
    assert len(list_image_folder(root)[0]) == 9
    (root / "cat" / "0.png").rename(root / "cat" / "0.txt")
    files, labels, _ = list_image_folder(root)
    assert len(files) == 8 and labels.count(0) == 3
