"""The examples run as a user would run them (on tiny data) and do what they say."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _run(script: str, args: list[str], cwd: Path) -> str:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args], cwd=cwd, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.slow
def test_training_with_frozen_keys_exports_a_plain_timm_model(shared: Path, tmp_path: Path) -> None:
    data = shared / "data" / "cifar10"
    args = ["--data", str(data), "--epochs", "1", "--per-class", "6", "--out", "m.st"]
    out = _run("train_frozen_keys.py", args, tmp_path)
    assert "keys in 12 layers (convnextv2-b assignment): [48, 70, 60, 66, 58, 116, 446, 976]" in out
    trained = float(re.search(r"epoch 1: .* test top-1 ([\d.]+)%", out).group(1))
    exported = float(re.search(r"the plain timm model scores ([\d.]+)%", out).group(1))
    assert trained == exported
    state = load_file(tmp_path / "m.st")
    plain = timm.create_model("convnext_atto", num_classes=10, patch_size=2)
    plain.load_state_dict(state, strict=True)
    # Frozen keys: every depthwise kernel is one of the 8 unit keys plus a constant (its trained offset).
    from masterkey.keys import load_keys

    keys = load_keys("paper8").keys.flatten(1)
    kernel = state["stages.0.blocks.0.conv_dw.weight"].flatten(1)
    centred = kernel - kernel.mean(dim=1, keepdim=True)
    assert float((centred[:, None] - keys[None]).abs().amax(dim=2).amin(dim=1).max()) < 1e-5


@pytest.mark.slow
def test_swap_and_export_writes_weights_and_an_onnx_graph_that_agree(models_dir: Path, shared: Path, tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    weights = models_dir / "cifar10-convnext" / "convnext_atto_s2_e55.safetensors"
    args = ["--weights", str(weights), "--data", str(shared / "data" / "cifar10" / "test"), "--images", "40"]
    out = _run("swap_and_export.py", [*args, "--out", "swapped"], tmp_path)
    before, after = map(float, re.search(r"([\d.]+)% before, ([\d.]+)% with keys", out).groups())
    assert after < before
    plain = timm.create_model("convnext_atto", num_classes=10, patch_size=1).eval()
    plain.load_state_dict(load_file(tmp_path / "swapped.safetensors"), strict=True)
    session = ort.InferenceSession(str(tmp_path / "swapped.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = plain(x).numpy()
    assert float(abs(session.run(None, {"images": x.numpy()})[0] - expected).max()) < 1e-4
