import pytest
import torch

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
