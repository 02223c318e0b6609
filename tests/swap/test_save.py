"""The network a swap built, saved: plain weights the original architecture loads strictly with the accuracy swap
reported, recalibrated statistics included, and an ONNX graph that onnxruntime runs as PyTorch does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from safetensors import safe_open
from safetensors.torch import load_file

from masterkey.cli import main
from masterkey.data.evaluate import evaluate
from masterkey.data.preprocessing import CIFAR10, IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from masterkey.data.selection import load_eval_images
from masterkey.networks.models import create_model
from masterkey.swap import Calibration, SwapSession, save_swapped


@pytest.fixture(scope="module")
def weights(cifar_convnexts) -> Path:
    return next(p for p in cifar_convnexts if "convnext_atto_s2" in p.name)


@pytest.mark.slow
def test_saved_weights_reload_into_timm_with_the_accuracy_swap_reported(
    weights: Path, shared: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = shared / "data" / "cifar10" / "test"
    saved, onnx = tmp_path / "atto-paper8.safetensors", tmp_path / "atto-paper8.onnx"
    argv = ["swap", "--weights", str(weights), "--keys", "paper8", "--data", str(data), "--max-images", "100"]
    # In its own process, as a user runs it: torch.export leaves autograd unable to run in processes forked later
    # (the DDP tests fork from the test process).
    done = subprocess.run(
        [sys.executable, "-m", "masterkey", *argv, "--save-weights", str(saved), "--onnx", str(onnx), "--json"],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    row = next(r for r in printed["results"] if r["keys"] == "paper8")
    with safe_open(str(saved), "pt") as f:
        meta = f.metadata()
    assert meta["arch"] == "convnext_atto" and meta["keys"] == "paper8" and meta["patch_size"] == "1"
    plain = timm.create_model("convnext_atto", num_classes=10, patch_size=1)
    plain.load_state_dict(load_file(saved), strict=True)  # the original architecture, strictly
    images = load_eval_images(data, CIFAR10, max_images=100)
    measured = evaluate(plain.eval(), images, CIFAR10)
    assert measured["n"] == row["n_images"] == 100
    assert (measured["top1"], measured["top5"]) == (row["top1"], row["top5"])
    assert row["top1"] < next(r for r in printed["results"] if r["keys"] == "none")["top1"]  # really swapped
    assert printed["saved"]["onnx_max_abs_diff"] < 1e-4 and printed["saved"]["checked_images"] == 8
    # swap reads the file back by itself: the architecture and preprocessing come from its metadata.
    again = ["swap", "--weights", str(saved), "--keys", "impulse", "--data", str(data), "--max-images", "100"]
    assert main([*again, "--json"]) == 0
    reread = json.loads(capsys.readouterr().out)
    assert (
        reread["info"]["model"] == "convnext_atto"
        and reread["info"]["preprocessing"] == printed["info"]["preprocessing"]
    )
    assert next(r for r in reread["results"] if r["keys"] == "none")["top1"] == row["top1"]


def test_the_recalibrated_network_is_saved_with_its_statistics(models_dir: Path, shared: Path, tmp_path: Path) -> None:
    small = Preprocessing(146, 128, "bilinear", IMAGENET_MEAN, IMAGENET_STD)
    model = create_model("torchvision:mobilenet_v2", weights=models_dir / "mobilenet_v2_imagenet.pth")
    images = load_eval_images(shared / "data" / "imagenet-samples" / "val", small, max_images=24, seed=2)
    calib = load_eval_images(shared / "data" / "imagenette-128" / "train", small, max_images=16, seed=1)
    session = SwapSession(model, images, small, calibration=Calibration(images=calib), progress=False)
    rows, _ = session.run("paper8", resize=True, recalibrate=True)
    recalibrated = rows[1]
    path = tmp_path / "mnv2.safetensors"
    saved = save_swapped(session, "paper8", weights=path, resize=True, calibration=session.calibrations[0])
    assert saved.calibration.startswith("16 images of") and "imagenette" in saved.render()
    state = load_file(path)
    bn = "features.1.conv.0.1.running_var"
    assert not torch.equal(state[bn], session.original[bn])  # the recalibrated statistics, not the pretrained ones
    assert torch.equal(model.state_dict()[bn], session.original[bn])  # and the session's model is restored
    plain = torchvision.models.mobilenet_v2()
    plain.load_state_dict(state, strict=True)
    measured = evaluate(plain.eval(), images, small)
    assert (measured["top1"], measured["top5"]) == (recalibrated["top1"], recalibrated["top5"])
    with pytest.raises(Exception, match="one network per fold"):
        save_swapped(session, "paper8", weights=tmp_path / "x.safetensors", calibration=Calibration(crossfit=2))


def test_what_cannot_be_saved_is_refused_before_any_work(weights: Path, shared: Path, tmp_path: Path, capsys) -> None:
    base = ["swap", "--weights", str(weights), "--data", str(shared / "data" / "cifar10" / "test")]
    out = str(tmp_path / "w.safetensors")

    def error(argv: list[str]) -> str:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("masterkey: error: ") and err.count("\n") == 1, err
        return err

    assert "saves one network: give one key set (got 3" in error(
        [*base, "--keys", "paper8", "--keys", "random:8", "--seeds", "2", "--save-weights", out]
    )
    crossfit = [*base, "--keys", "paper8", "--recalibrate", "8", "--crossfit", "2", "--onnx", str(tmp_path / "m.onnx")]
    assert "--crossfit K recalibrates one network per fold" in error(crossfit)
    same = [*base, "--keys", "paper8", "--save-weights", out, "--onnx", out]
    assert "name the same file" in error(same)
    mine = tmp_path / "mine.onnx"
    mine.write_bytes(b"a user's file")
    assert "not a masterkey output" in error([*base, "--keys", "paper8", "--onnx", str(mine), "--overwrite"])
    assert "is an input of this command" in error([*base, "--keys", "paper8", "--save-weights", str(weights)])
    assert mine.read_bytes() == b"a user's file" and not Path(out).exists()
