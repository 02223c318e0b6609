import pytest
import torch
from safetensors.torch import save_file

from masterkey.errors import MasterkeyError
from masterkey.sources import harvest


def test_mobilenet_v2_state_dict(models_dir):
    src = harvest(models_dir / "mobilenet_v2_imagenet.pth")
    assert src.kind == "state_dict"
    assert len(src.layers) == 17
    assert src.counts_by_kernel() == {3: 7136}
    assert src.layers[0].name == "features.1.conv.0.0"
    assert len(src.sha256) == 64


def test_efficientnet_lite0_state_dict(models_dir):
    src = harvest(models_dir / "efficientnet_lite0_imagenet.pth")
    assert len(src.layers) == 16
    assert src.counts_by_kernel() == {3: 2624, 5: 6336}


def test_cifar_convnexts_raw(cifar_convnexts):
    for path in cifar_convnexts:
        src = harvest(path)
        expected = 2208 if "femto" in path.name else 1840
        assert src.counts_by_kernel() == {7: expected}, path.name
        assert src.model and src.model.startswith("convnext")  # from the file's metadata


def test_wrapped_and_prefixed_checkpoints(tmp_path):
    state = {"module.block.dw.weight": torch.randn(8, 1, 3, 3), "module.block.pw.weight": torch.randn(8, 8, 1, 1)}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ckpt.pth")
    src = harvest(tmp_path / "ckpt.pth")
    assert [layer.name for layer in src.layers] == ["block.dw"]


def test_1x1_and_non_square_are_skipped_with_a_note(tmp_path):
    save_file(
        {
            "a.weight": torch.randn(4, 1, 1, 1),
            "b.weight": torch.randn(4, 1, 3, 5),
            "c.weight": torch.randn(4, 1, 5, 5),
        },
        str(tmp_path / "w.safetensors"),
    )
    src = harvest(tmp_path / "w.safetensors")
    assert [layer.name for layer in src.layers] == ["c"]
    reasons = {s["layer"]: s["reason"] for s in src.skipped}
    assert "1x1" in reasons["a"] and "non-square 3x5" in reasons["b"]


def test_bad_files(tmp_path, models_dir):
    (tmp_path / "notes.pth").write_text("this is not a model")
    with pytest.raises(MasterkeyError, match=r"notes.pth: not a readable PyTorch state_dict"):
        harvest(tmp_path / "notes.pth")
    save_file({"fc.weight": torch.randn(10, 4)}, str(tmp_path / "mlp.safetensors"))
    with pytest.raises(MasterkeyError, match=r"mlp.safetensors: no depthwise conv weights found"):
        harvest(tmp_path / "mlp.safetensors")
    data = (models_dir / "cifar10-convnext" / "convnext_atto_s0_e20.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(MasterkeyError, match=r"cut.safetensors: not a readable safetensors file"):
        harvest(tmp_path / "cut.safetensors")
    with pytest.raises(MasterkeyError, match="no such file"):
        harvest(tmp_path / "missing.pth")
