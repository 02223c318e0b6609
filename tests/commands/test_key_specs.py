"""One key-spec grammar for every command that takes keys: a built-in, a key file, a discover run directory (one
folder per kernel size, as the real ``discover`` writes it) and ``DIR:METHOD`` (its baseline keys)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from masterkey.cli import main
from masterkey.errors import MasterkeyError
from masterkey.keys import key_spec_label, load_keys

FORMS = ["builtin", "file", "run", "run-method"]


@pytest.fixture
def spec(request: pytest.FixtureRequest, discover_run: Path, shared: Path) -> tuple[str, str]:
    """(key spec, the key-set name it must load at 7x7) for the form ``request.param``."""
    return {
        "builtin": ("paper8", "paper8"),
        "file": (str(shared / "keys" / "paper8_7x7.txt"), "paper8_7x7"),
        "run": (str(discover_run), "discovered4-7x7"),
        "run-method": (f"{discover_run}:kmeans", "kmeans4"),
    }[request.param]


def test_the_discover_run_is_one_folder_per_kernel_size(discover_run: Path) -> None:
    assert not (discover_run / "keys.safetensors").exists()
    assert (discover_run / "k3" / "keys.safetensors").is_file() and (discover_run / "k7" / "keys.safetensors").is_file()


@pytest.mark.parametrize("spec", FORMS, indirect=True)
def test_keys_show_draws_every_form(spec: tuple[str, str], tmp_path: Path, capsys) -> None:
    keys, name = spec
    png = tmp_path / "keys.png"
    assert main(["keys", "show", keys, "--png", str(png)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"{name}: ") and f"wrote {png}" in err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5_000


@pytest.mark.parametrize("spec", FORMS, indirect=True)
def test_fit_takes_every_form(spec: tuple[str, str], capsys) -> None:
    keys, name = spec
    assert main(["fit", "--keys", keys, "--resize-keys", "--reference", "none", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    names = {int(k): v["name"] for k, v in report["keys"].items()}
    assert sorted(names) == [3, 5, 7] and names[7] == name
    if name.startswith(("discovered", "kmeans")):  # a discover run gives its own 3x3 keys; 5x5: the nearest, padded
        own3 = name.replace("7x7", "3x3")
        assert names[3] == own3 and names[5] == f"{own3}@5x5"
        assert load_keys(keys, kernel_size=3).provenance["kernel_size"] == 3
    else:
        assert names[3] == f"{name}@3x3" and names[5] == f"{name}@5x5"


@pytest.mark.parametrize("spec", FORMS, indirect=True)
def test_explain_takes_every_form(spec: tuple[str, str], capsys) -> None:
    keys, name = spec
    args = ["explain", keys, "--images", "camera", "--seeds", "1", "--max-patches", "500", "--stride", "8", "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["keys"] == name and summary["kernel_size"] == 7  # a run with several sizes: its largest keys


@pytest.mark.parametrize("spec", FORMS, indirect=True)
def test_swap_takes_every_form(spec: tuple[str, str], cifar_convnexts: list[Path], shared: Path, capsys) -> None:
    keys, name = spec
    data = shared / "data" / "cifar10" / "test"
    args = ["swap", "--weights", str(cifar_convnexts[0]), "--keys", keys, "--data", str(data), "--max-images", "20"]
    assert main([*args, "--batch-size", "20"]) == 0
    out = capsys.readouterr().out
    row = re.search(rf"^{re.escape(keys)}\s+(\d+)\s+no\s+1\s", out, re.MULTILINE)
    assert row and int(row.group(1)) == len(load_keys(keys, kernel_size=7)) == (8 if "paper8" in name else 4)
    assert "accuracy (one seed per key set, no CI):" in out and "Δtop1: percentage points against" in out


@pytest.mark.parametrize("spec", FORMS, indirect=True)
def test_train_takes_every_form(spec: tuple[str, str], shared: Path, tmp_path: Path, capsys) -> None:
    keys, name = spec
    data = tmp_path / "data"
    for split in ("train", "test"):
        for cls in sorted(p.name for p in (shared / "data" / "cifar10" / split).iterdir())[:2]:
            (data / split / cls).mkdir(parents=True)
            for image in sorted((shared / "data" / "cifar10" / split / cls).iterdir())[:2]:
                shutil.copy(image, data / split / cls / image.name)
    args = ["train", "--model", "convnext_atto", "--model-kwargs", "num_classes=2,patch_size=1", "--data", str(data)]
    args += ["--mode", "frozen", "--keys", keys, "--assignment", "uniform", "--epochs", "1"]
    args += ["--batch-size", "2", "--eval-batch-size", "4"]
    if keys.endswith(":kmeans"):  # one seed as an experiment: its table, arm named without the path
        assert main([*args, "--threads", "1", "--no-progress", "--seeds", "0", "-o", str(tmp_path / "run")]) == 0
        out, err = capsys.readouterr()
        header, _, row = out.splitlines()[:3]
        assert "  top1 %  top1 ±95% CI  top5 %  " in header and header.split()[:4] == ["arm", "mode", "keys", "n"]
        assert row.split()[:4] == [f"frozen-{Path(keys.rpartition(':')[0]).name}-kmeans", "frozen", name, "1"]
        assert "test top-1 / top-5 in percent" in err
        return
    assert main([*args, "--threads", "1", "--no-progress", "--json", "-o", str(tmp_path / "run")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["keys"] == name and summary["mode"] == "frozen"


def test_load_keys_picks_a_runs_keys_by_kernel_size(discover_run: Path) -> None:
    run = str(discover_run)
    assert load_keys(run).name == "discovered4-7x7"  # no size asked for: the largest
    assert load_keys(run, kernel_size=3).name == "discovered4-3x3"
    with pytest.raises(MasterkeyError, match=r"no 5x5 keys \(the run has 3x3, 7x7\); pass resize=True"):
        load_keys(run, kernel_size=5)
    assert load_keys(run, kernel_size=5, resize=True).name == "discovered4-3x3@5x5"
    assert len(load_keys(f"{run}:pca", kernel_size=3)) == 4
    with pytest.raises(MasterkeyError, match="its methods: impulse, kmeans, paper8, pca, random"):
        load_keys(f"{run}:nope")
    assert key_spec_label(run) == "run" and key_spec_label(f"{run}:kmeans") == "run-kmeans"
    assert key_spec_label("random:8:1") == "random-8-1"


def test_a_folder_that_is_no_run_gets_one_clear_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "notes").mkdir()
    assert main(["explain", str(tmp_path / "notes")]) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith(
            f"keys '{tmp_path / 'notes'}': the folder {tmp_path / 'notes'} is not a discover run nor a key file "
            "(no keys.safetensors, nor k*/keys.safetensors)"
        )
    )


def test_a_built_in_wins_over_a_folder_of_the_same_name(discover_run: Path, tmp_path: Path, monkeypatch) -> None:
    shutil.copytree(discover_run, tmp_path / "paper8")
    monkeypatch.chdir(tmp_path)
    assert load_keys("paper8").name == "paper8" and load_keys("random:3:1").name == "random:3:1"
    assert load_keys("./paper8").name == "discovered4-7x7"
