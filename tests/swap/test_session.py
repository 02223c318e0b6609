"""Swap sessions (evaluate / swap / recalibrate / restore), key specs, results, and the `masterkey swap` command."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from masterkey.cli import main
from masterkey.data.preprocessing import CIFAR10, IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from masterkey.data.selection import load_eval_images
from masterkey.errors import MasterkeyError
from masterkey.keys import KeySet, load_keys, resolve_key_spec
from masterkey.networks.models import create_model
from masterkey.networks.surgery import filters_as_keys
from masterkey.swap import (
    Calibration,
    SwapSession,
    expand_seeds,
    spec_group,
)

CONTRACT_COLUMNS = {"keys", "n_keys", "recalibrated", "top1", "top5", "mean_cos2"}


@pytest.fixture(scope="module")
def weights(cifar_convnexts) -> Path:
    return next(p for p in cifar_convnexts if "convnext_atto_s2" in p.name)


@pytest.fixture(scope="module")
def convnext(weights: Path) -> nn.Module:
    return create_model(weights=weights)


@pytest.fixture(scope="module")
def cifar_images(shared: Path):
    return load_eval_images(shared / "data" / "cifar10" / "test", CIFAR10, max_per_class=4)


# ---------------------------------------------------------------------- key specs and statistics


def test_resolve_key_spec_reads_discover_runs(tmp_path: Path) -> None:
    assert resolve_key_spec("paper8") == "paper8"
    single = tmp_path / "single"
    load_keys("random:4:0", kernel_size=7).save(single / "keys.safetensors")
    load_keys("random:5:0", kernel_size=7).save(single / "baseline_keys" / "kmeans.safetensors")
    assert resolve_key_spec(str(single)) == str(single / "keys.safetensors")
    assert resolve_key_spec(f"{single}:kmeans") == str(single / "baseline_keys" / "kmeans.safetensors")
    multi = tmp_path / "multi"
    for k in (3, 5):
        load_keys("random:3:1", kernel_size=k).save(multi / f"k{k}" / "keys.safetensors")
    assert resolve_key_spec(str(multi)) == {
        3: str(multi / "k3" / "keys.safetensors"),
        5: str(multi / "k5" / "keys.safetensors"),
    }
    with pytest.raises(MasterkeyError, match="not a discover run with pca baseline keys"):
        resolve_key_spec(f"{multi}:pca")
    with pytest.raises(MasterkeyError, match="is not a discover run"):
        resolve_key_spec(str(tmp_path))


def test_seed_expansion_and_groups() -> None:
    assert expand_seeds(["paper8", "random:8", "random:4:7"], 3) == [
        "paper8",
        "random:8:0",
        "random:8:1",
        "random:8:2",
        "random:4:7",
    ]
    assert expand_seeds(["random:8"], 1) == ["random:8"]
    assert spec_group("random:8:2") == ("random:8", 2)
    assert spec_group("paper8") == ("paper8", None)


# ---------------------------------------------------------------------- sessions


def test_sweep_rows_identity_and_restore(convnext: nn.Module, cifar_images) -> None:
    model = copy.deepcopy(convnext)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    own = filters_as_keys(model)[7]
    session = SwapSession(model, cifar_images, CIFAR10, progress=False)
    results = session.sweep(["paper8", own, "random:8:0", "random:8:1"])
    frame = results.frame()
    assert frame["keys"].tolist() == ["none", "paper8", own.name, "random:8:0", "random:8:1"]
    assert not frame["recalibrated"].any()
    base = frame.iloc[0]
    assert base["n_images"] == 40 and base["mean_cos2"] == 1.0
    identity = frame.iloc[2]
    assert identity["top1"] == base["top1"] and identity["mean_cos2"] == pytest.approx(1.0, abs=1e-5)
    paper = frame.iloc[1]
    assert paper["top1"] < base["top1"] - 15 and paper["n_filters"] == 1840 and paper["n_layers"] == 12
    assert paper["delta_top1"] == pytest.approx(paper["top1"] - base["top1"])
    for key, value in model.state_dict().items():
        assert torch.equal(value, original[key]), key
    summary = results.summary()
    pooled = summary[summary["keys"] == "random:8"].iloc[0]
    assert pooled["n_seeds"] == 2
    assert pooled["top1"] == pytest.approx(frame["top1"].iloc[3:].mean())
    assert set(results.per_stage["keys"]) == {"paper8", own.name, "random:8:0", "random:8:1"}
    assert "| paper8 | 8 | no |" in results.to_markdown()
    text = json.dumps(results.to_dict(), allow_nan=False)
    assert json.loads(text)["results"][1]["seed"] is None


def test_sensitivity_by_stage_and_layer(convnext: nn.Module, cifar_images) -> None:
    session = SwapSession(copy.deepcopy(convnext), cifar_images.subset(range(0, 40, 4)), CIFAR10, progress=False)
    base = session.baseline()["top1"]
    by_stage = session.sensitivity("paper8", by="stage")
    assert by_stage["name"].tolist() == ["0", "1", "2", "3"]
    assert by_stage["n_layers"].tolist() == [2, 2, 6, 2]
    assert by_stage["drop"].tolist() == pytest.approx((base - by_stage["top1"]).tolist(), abs=1e-9)
    few = SwapSession(copy.deepcopy(convnext), cifar_images.subset(range(0, 40, 8)), CIFAR10, progress=False)
    by_layer = few.sensitivity(load_keys("paper8"), by="layer")
    assert len(by_layer) == 12 and (by_layer["n_layers"] == 1).all()
    with pytest.raises(MasterkeyError, match="expected 'stage' or 'layer'"):
        session.sensitivity("paper8", by="block")


def test_crossfit_recalibration_rows(models_dir: Path, shared: Path) -> None:
    small = Preprocessing(146, 128, "bilinear", IMAGENET_MEAN, IMAGENET_STD)
    model = create_model("torchvision:mobilenet_v2", weights=models_dir / "mobilenet_v2_imagenet.pth")
    images = load_eval_images(shared / "data" / "imagenet-samples" / "val", small, max_images=24, seed=2)
    calibration = Calibration(crossfit=2, n_images=8, seed=0)
    session = SwapSession(model, images, small, calibration=calibration, progress=False)
    rows = session.baseline_rows(recalibrate=True)
    assert [r["recalibrated"] for r in rows] == [False, True]
    assert rows[1]["calib_images"] == 8 and rows[1]["n_images"] == 24
    assert "crossfit 2 folds" in rows[1]["calibration"]
    # Restored: the BatchNorm statistics are the pretrained ones again.
    assert torch.equal(model.features[1].conv[0][1].running_var, session.original["features.1.conv.0.1.running_var"])
    with pytest.raises(MasterkeyError, match="cross-fitting needs at least 2 folds"):
        Calibration(crossfit=1)


def test_session_errors(convnext: nn.Module, cifar_images) -> None:
    with pytest.raises(MasterkeyError, match="no depthwise convolution"):
        SwapSession(nn.Sequential(nn.Conv2d(3, 4, 3)), cifar_images, CIFAR10)
    with pytest.raises(MasterkeyError, match="no BatchNorm layer"):
        SwapSession(convnext, cifar_images, CIFAR10, calibration=cifar_images)
    session = SwapSession(convnext, cifar_images, CIFAR10, progress=False)
    with pytest.raises(MasterkeyError, match="neither a key file nor a built-in"):
        session.sweep(["paper9"])
    with pytest.raises(MasterkeyError, match="has no calibration images"):
        session.run("paper8", recalibrate=True)
    with pytest.raises(MasterkeyError, match="resize=True"):
        session.sweep([KeySet("three", torch.randn(2, 3, 3))])


# ---------------------------------------------------------------------- the command


def test_cli_writes_a_swap_run(weights: Path, shared: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    argv = ["swap", "--weights", str(weights), "--keys", "paper8", "--keys", "random:8", "--seeds", "2"]
    argv += ["--data", str(shared / "data" / "cifar10" / "test"), "--max-per-class", "2", "--layers", "stage:0-1"]
    argv += ["--sensitivity", "stage", "--progress", "-o", str(out), "--json"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    # --progress draws bars on stderr even when it is not a terminal, each naming what it measures.
    for bar in ("key sets:", "sensitivity by stage:", "unswapped model: evaluate:", "random:8:1: evaluate:"):
        assert bar in captured.err, bar
    assert f"masterkey: wrote {out}/ (" in captured.err and "results.csv" in captured.err
    assert [r["keys"] for r in printed["results"]] == ["none", "paper8", "random:8:0", "random:8:1"]
    assert printed["info"]["model"] == "convnext_atto" and printed["info"]["n_images"] == 20
    results = pd.read_csv(out / "results.csv")
    assert set(results.columns) >= CONTRACT_COLUMNS
    assert (results["n_layers"].iloc[1:] == 4).all()  # --layers stage:0-1: 2 + 2 layers
    assert {"stage", "n_filters", "mean_cos2"} <= set(pd.read_csv(out / "per_stage.csv").columns)
    sens = pd.read_csv(out / "sensitivity.csv")
    assert {"name", "top1", "drop"} <= set(sens.columns) and len(sens) == 4
    run = json.loads((out / "run.json").read_text())
    assert run["kind"] == "swap" and run["config"]["model"] == "convnext_atto"
    assert (out / "summary.md").read_text().startswith("# Swap: convnext_atto")
    assert main(argv[:-1]) == 2  # the run directory exists: refused without --overwrite
    assert "already exists" in capsys.readouterr().err


def _error(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    assert main(argv) == 2
    # The data-path note (--data-mode auto says which path it took) may precede the one error line.
    err = "".join(line for line in capsys.readouterr().err.splitlines(True) if not line.startswith("masterkey: data:"))
    assert err.startswith("masterkey: error: ") and err.count("\n") == 1
    return err


def test_cli_bad_inputs(weights: Path, models_dir: Path, shared: Path, tmp_path: Path, capsys) -> None:
    test_dir = str(shared / "data" / "cifar10" / "test")
    base = ["swap", "--weights", str(weights), "--keys", "paper8"]
    assert "no such data folder" in _error([*base, "--data", str(tmp_path / "none")], capsys)
    (tmp_path / "empty").mkdir()
    assert "ImageFolder layout" in _error([*base, "--data", str(tmp_path / "empty")], capsys)
    three = tmp_path / "three"
    for cls in ("airplane", "cat", "dog"):
        (three / cls).mkdir(parents=True)
        shutil.copy(next((shared / "data" / "cifar10" / "test" / cls).iterdir()), three / cls)
    assert "class-count mismatch" in _error([*base, "--data", str(three)], capsys)
    mnv2 = str(models_dir / "mobilenet_v2_imagenet.pth")
    err = _error(
        ["swap", "--model", "convnext_atto", "--weights", mnv2, "--keys", "paper8", "--data", test_dir], capsys
    )
    assert "missing keys" in err and "unexpected keys (features.0.0.weight" in err
    assert "neither a key file nor a built-in" in _error([*base[:-1], "nokeys", "--data", test_dir], capsys)
    assert "matches no depthwise layer" in _error([*base, "--data", test_dir, "--layers", "stages.7.*"], capsys)
    recal = [*base, "--data", test_dir, "--recalibrate", "10"]
    assert "needs --calib-data" in _error(recal, capsys)
    assert "no BatchNorm layer" in _error([*recal, "--calib-data", str(shared / "data" / "cifar10" / "train")], capsys)
    resnet = tmp_path / "resnet.safetensors"
    import timm
    from safetensors.torch import save_file

    save_file(timm.create_model("test_resnet", num_classes=10).state_dict(), str(resnet))
    err = _error(
        [
            "swap",
            "--model",
            "test_resnet",
            "--model-kwargs",
            "num_classes=10",
            "--weights",
            str(resnet),
            "--keys",
            "paper8",
            "--data",
            test_dir,
        ],
        capsys,
    )
    assert "no depthwise convolution" in err


def test_cli_calibration_must_not_be_the_eval_set(models_dir: Path, shared: Path, capsys) -> None:
    samples = str(shared / "data" / "imagenet-samples" / "val")
    argv = ["swap", "--weights", str(models_dir / "mobilenet_v2_imagenet.pth"), "--keys", "paper8", "--resize-keys"]
    argv += ["--data", samples, "--max-images", "4", "--recalibrate", "8", "--calib-data", samples]
    assert "the calibration images are the evaluation images" in _error(argv, capsys)
    assert "exclude each other" in _error([*argv, "--crossfit", "2"], capsys)


def test_cli_streams_the_evaluation_images(weights: Path, shared: Path, capsys, monkeypatch) -> None:
    """--data-mode stream: evaluation images decoded batch by batch, the same numbers as in memory (streamed
    --calib-data recalibration: tests/networks/test_recalibrate.py); --data-mode memory on images that do not fit:
    one line, nothing evaluated."""
    argv = ["swap", "--weights", str(weights), "--keys", "paper8", "--json"]
    argv += ["--data", str(shared / "data" / "cifar10" / "test"), "--max-per-class", "3"]
    results = {}
    for mode in ("memory", "stream"):
        assert main([*argv, "--data-mode", mode, "--workers", "2"]) == 0
        printed = json.loads(capsys.readouterr().out)
        assert printed["info"]["data_mode"] == mode
        results[mode] = [(r["keys"], r["top1"], r["top5"], r["mean_cos2"]) for r in printed["results"]]
    assert results["stream"] == results["memory"] and len(results["memory"]) == 2
    monkeypatch.setenv("MASTERKEY_MEMORY_BUDGET", "10K")
    err = _error([*argv, "--data-mode", "memory"], capsys)
    assert "--data-mode memory: 30 images of" in err and "above the memory budget 10.0 KiB" in err
