import warnings

import pytest
import torch
import torchvision

from masterkey.errors import MasterkeyError
from masterkey.normalize import center_norm
from masterkey.sources import harvest

onnx = pytest.importorskip("onnx")


def test_onnx_export_of_mobilenet_v2_has_bn_folded_filters_equal_up_to_scale(tmp_path, models_dir):
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(models_dir / "mobilenet_v2_imagenet.pth", weights_only=True))
    model.eval()
    path = tmp_path / "mnv2.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, 64, 64),), str(path), dynamo=False)
    src = harvest(path)
    raw = harvest(models_dir / "mobilenet_v2_imagenet.pth")
    assert src.kind == "onnx" and src.counts_by_kernel() == {3: 7136} and len(src.layers) == 17
    assert sum(layer.stride > 1 for layer in src.layers) == 4
    # BatchNorm folding rescales each filter by gamma / sqrt(var + eps): the normalised filters agree up to sign
    for a, b in zip(src.layers, raw.layers, strict=True):
        keep = b.weight.flatten(1).std(1) > 1e-3
        na = center_norm(a.weight[keep, 0])
        nb = center_norm(b.weight[keep, 0])
        cos = (na * nb).flatten(1).sum(1).abs()
        assert cos.min() > 0.999


def test_bad_onnx(tmp_path):
    (tmp_path / "x.onnx").write_bytes(b"\x08\x07garbage")
    with pytest.raises(MasterkeyError, match=r"x.onnx: not a readable ONNX model|x.onnx: no depthwise Conv"):
        harvest(tmp_path / "x.onnx")
    dense = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(dense, (torch.randn(1, 3, 8, 8),), str(tmp_path / "dense.onnx"), dynamo=False)
    with pytest.raises(MasterkeyError, match=r"dense.onnx: no depthwise Conv node"):
        harvest(tmp_path / "dense.onnx")
