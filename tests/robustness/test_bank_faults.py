"""Fault injection for harvesting and fitting: kill -9, concurrent writers, full / unwritable outputs, bad weights,
determinism."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from masterkey.bank import FilterBank
from masterkey.cli import main


def _cli(*argv: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "masterkey", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _sources(models_dir: Path) -> list[str]:
    cifar = sorted((models_dir / "cifar10-convnext").glob("*.safetensors"))
    return [
        str(models_dir / "mobilenet_v2_imagenet.pth"),
        str(models_dir / "efficientnet_lite0_imagenet.pth"),
        *[f"timm:{p.name.split('_s')[0]}@{p}" for p in cifar],
    ]


@pytest.mark.kill
def test_kill_9_during_harvest_leaves_no_bank_and_the_rerun_resumes(tmp_path, models_dir, capsys):
    """The killed harvest is a process of its own; the rerun runs in the test's process."""
    out = tmp_path / "bank"
    partial = tmp_path / ".bank.partial"
    proc = _cli("harvest", *_sources(models_dir), "-o", str(out))
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and len(list(partial.glob("*.safetensors"))) < 2:
        time.sleep(0.01)
    assert proc.poll() is None, "harvest finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "a killed harvest must not leave a bank behind"
    done = len(list(partial.glob("*.safetensors")))
    assert done >= 2
    code = main(["harvest", *_sources(models_dir), "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"{done} of 7 sources were already harvested" in err
    bank = FilterBank.open(out)
    assert bank.counts_by_kernel() == {3: 9760, 5: 6336, 7: 9568}
    assert not partial.exists()


def test_two_processes_writing_one_bank_are_safe(tmp_path, models_dir):
    out = tmp_path / "bank"
    src = str(models_dir / "efficientnet_lite0_imagenet.pth")
    procs = [_cli("harvest", src, "-o", str(out)) for _ in range(2)]
    results = [(*p.communicate(timeout=300), p.returncode) for p in procs]
    codes = sorted(r[2] for r in results)
    assert codes[0] == 0
    if codes[1] != 0:
        loser = next(r for r in results if r[2] != 0)
        assert "being written by another process" in loser[1] or "already exists" in loser[1]
    assert FilterBank.open(out, verify=True).counts_by_kernel() == {3: 2624, 5: 6336}
    assert not list(tmp_path.glob(".bank.*"))  # no temporary folder, no lock file


def test_bad_weights_are_flagged_counted_and_excluded(tmp_path, capsys):
    w = torch.randn(16, 1, 3, 3)
    w[0, 0, 1, 1] = float("nan")
    w[1, 0, 0, 0] = float("inf")
    w[2] = 0.0
    w[3] = 0.5
    save_file(
        {"blocks.0.conv_dw.weight": w, "blocks.1.conv_dw.weight": torch.randn(8, 1, 3, 3)},
        str(tmp_path / "w.safetensors"),
    )
    assert main(["harvest", str(tmp_path / "w.safetensors"), "-o", str(tmp_path / "b"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["counts_by_kernel"] == {"3": 24}
    assert info["excluded"] == {"nonfinite": 2, "zero": 1, "constant": 1}
    assert main(["fit", str(tmp_path / "b"), "--keys", "paper8", "--resize-keys", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_fitted"] == 20 and report["excluded"]["nonfinite"] == 2
    assert 0 <= report["overall"]["mean_cos2"] <= 1


def test_unwritable_and_full_outputs_fail_cleanly(tmp_path, capsys, models_dir, monkeypatch):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    src = str(models_dir / "mobilenet_v2_imagenet.pth")
    assert main(["harvest", src, "-o", str(blocker / "bank")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write" in err[0]

    real_replace = os.replace

    def full_disk(a, b):
        if str(b).endswith("bank"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(a, b)

    monkeypatch.setattr(os, "replace", full_disk)
    assert main(["harvest", src, "-o", str(tmp_path / "bank")]) == 2
    assert "no space left on device" in capsys.readouterr().err
    monkeypatch.undo()
    # nothing is left: no bank, no lock file, and no harvested sources taking the space the rerun needs
    assert [p.name for p in tmp_path.iterdir()] == ["not_a_dir"]
    assert main(["harvest", src, "-o", str(tmp_path / "bank")]) == 0
    assert "already harvested" not in capsys.readouterr().err


def test_same_inputs_give_bitwise_identical_banks_and_fits(tmp_path, models_dir):
    src = str(models_dir / "cifar10-convnext" / "convnext_atto_s0_e20.safetensors")
    for run in ("a", "b"):
        assert main(["harvest", src, "-o", str(tmp_path / f"bank_{run}")]) == 0
        assert main(["fit", str(tmp_path / f"bank_{run}"), "--keys", "paper8", "-o", str(tmp_path / f"fit_{run}")]) == 0
    for name in ("filters_k7.safetensors", "metadata.parquet", "manifest.json"):
        assert (tmp_path / "bank_a" / name).read_bytes() == (tmp_path / "bank_b" / name).read_bytes()
    for name in ("fits.parquet", "keys_k7.safetensors"):
        assert (tmp_path / "fit_a" / name).read_bytes() == (tmp_path / "fit_b" / name).read_bytes()


@pytest.mark.parametrize("damage", ["truncate", "flip", "drop_rows"])
def test_damaged_banks_are_refused_by_every_reader(tmp_path, capsys, damage):
    import pyarrow.parquet as pq

    bank_dir = tmp_path / "b"
    save_file({"a.weight": torch.randn(32, 1, 5, 5)}, str(tmp_path / "w.safetensors"))
    assert main(["harvest", str(tmp_path / "w.safetensors"), "-o", str(bank_dir)]) == 0
    target = bank_dir / ("metadata.parquet" if damage == "drop_rows" else "filters_k5.safetensors")
    data = target.read_bytes()
    if damage == "truncate":
        target.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        target.write_bytes(data[:-20] + bytes(b ^ 0x55 for b in data[-20:]))
    else:
        pq.write_table(pq.read_table(target).slice(0, 10), target)
    capsys.readouterr()
    for argv in (
        ["bank", "info", str(bank_dir)],
        ["fit", str(bank_dir), "--keys", "random:4"],
        ["bank", "verify", str(bank_dir)],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and target.name in err[0], err
