"""Faults, not bad input: a full disk under every writing command, unreadable files, a closed output pipe, a bug, an
out-of-memory error, a resumed run with a stale temporary checkpoint, and byte-identical outputs of identical runs."""

from __future__ import annotations

import builtins
import errno
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from masterkey.cli import main

from .conftest import assert_clean_failure, full_disk, read_only, run_cli, snapshot

M = "{ws}/model.safetensors"
TINY_TRAIN = [
    "--model",
    "convnext_atto",
    "--model-kwargs",
    "num_classes=10,patch_size=1",
    "--data",
    "{ws}/data",
    "--epochs",
    "1",
    "--batch-size",
    "2",
    "--eval-batch-size",
    "8",
    "--threads",
    "1",
    "--no-progress",
]

# command, output (under the full disk), KiB of the tmpfs, KiB of the file-size limit used without root
DISK_FULL = [
    ("harvest", ["harvest", M, "-o", "{full}/new/bank"], 500, 100),
    ("bank-query", ["bank", "query", "{ws}/bank", "stage >= 1", "-o", "{full}/bank"], 100, 100),
    ("keys-convert", ["keys", "convert", "random:1000", "-o", "{full}/keys.safetensors"], 64, 64),
    ("fit", ["fit", "{ws}/bank", "--keys", "paper8", "-o", "{full}/new/sub/fit"], 64, 16),
    (
        "discover",
        [
            *["discover", "{ws}/bank", "-k", "2", "--candidates", "8", "--rounds", "1", "--ae-steps", "60"],
            *["--baselines", "kmeans", "--compare-k", "2", "--no-progress", "-o", "{full}/new/disc"],
        ],
        16,
        16,
    ),
    (
        "swap",
        ["swap", "--weights", M, "--keys", "paper8", "--data", "{ws}/data/test", "-o", "{full}/swap"],
        8,
        1,
    ),
    ("train", ["train", *TINY_TRAIN, "-o", "{full}/new/train"], 1024, 1024),
    ("report", ["report", "{ws}/fit", "--samples", "2", "-o", "{full}/new/report"], 64, 64),
    (
        "explain",
        ["explain", "--images", "camera", "--max-patches", "500", "--seeds", "1", "--stride", "8", "-o", "{full}/ex"],
        32,
        8,
    ),
]


@pytest.mark.parametrize(("argv", "tmpfs_kib", "limit_kib"), [c[1:] for c in DISK_FULL], ids=[c[0] for c in DISK_FULL])
def test_a_full_disk_fails_cleanly_and_leaves_nothing(
    workspace, tmp_path, capsys, one_thread, argv, tmpfs_kib, limit_kib
):
    full = tmp_path / "full"
    before = snapshot(workspace)
    args = [a.format(ws=workspace, full=full) for a in argv]
    with full_disk(full, tmpfs_kib if _tmpfs() else limit_kib) as method:
        outcome = run_cli(capsys, args)
        left = sorted(p.name for p in full.iterdir())
    reason = "no space left on device" if method == "tmpfs" else "file too large"
    assert_clean_failure(outcome, reason)
    assert left == [], left
    assert snapshot(workspace) == before


def _tmpfs() -> bool:
    from .conftest import tmpfs_available

    return tmpfs_available()


@pytest.mark.parametrize(
    "argv",
    [
        ["harvest", M, "-o", "{ro}/bank"],
        ["fit", "{ws}/bank", "--keys", "paper8", "-o", "{ro}/fit"],
        ["keys", "convert", "paper8", "-o", "{ro}/k.safetensors"],
        ["discover", "{ws}/bank", "-o", "{ro}/sub/disc"],
    ],
    ids=["harvest", "fit", "keys-convert", "discover"],
)
def test_an_unwritable_output_folder_is_refused_before_any_work(workspace, tmp_path, capsys, argv):
    before = snapshot(workspace)
    with read_only(tmp_path / "ro"):
        outcome = run_cli(capsys, [a.format(ws=workspace, ro=tmp_path / "ro") for a in argv])
        left = list((tmp_path / "ro").iterdir())
    assert_clean_failure(outcome, f"the folder {tmp_path / 'ro'} is not writable")
    assert left == [] and snapshot(workspace) == before


def test_a_failed_harvest_keeps_nothing_so_the_rerun_succeeds(workspace, tmp_path, capsys, monkeypatch):
    """The disk fills while the bank is written, after the source was harvested: the harvested source is not kept
    (it would take the space the rerun needs), so the rerun on the freed disk completes."""
    import masterkey.bank as bank_module

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "bank"
    args = ["harvest", str(workspace / "model.safetensors"), "-o", str(out)]
    with monkeypatch.context() as patch:
        patch.setattr(bank_module.pq, "write_table", full)
        assert_clean_failure(run_cli(capsys, args), f"cannot write {out}: no space left on device")
    assert list(tmp_path.iterdir()) == []  # neither the bank nor the harvested sources nor a lock file
    assert run_cli(capsys, args).code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank"]


def test_an_unreadable_file_is_one_line_naming_it(workspace, capsys, monkeypatch):
    target = str(workspace / "bank" / "filters_k7.safetensors")
    real_open = builtins.open

    def guarded(file, *args, **kwargs):
        if str(file) == target:
            raise PermissionError(errno.EACCES, "Permission denied", target)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded)
    assert_clean_failure(
        run_cli(capsys, ["bank", "verify", str(workspace / "bank")]), f"cannot read {target}: permission denied"
    )


def test_an_os_error_anywhere_is_one_line_naming_the_file(capsys, monkeypatch):
    import masterkey.keys  # `keys show` imports its reader from here when it runs

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", "/data/keys.txt")

    monkeypatch.setattr(masterkey.keys, "load_key_values", denied)
    assert_clean_failure(run_cli(capsys, ["keys", "show", "x"]), "cannot access /data/keys.txt: permission denied")


def test_a_bug_shows_its_traceback_and_asks_for_a_report(capsys, monkeypatch):
    import masterkey.keys

    monkeypatch.setattr(masterkey.keys, "builtin_keysets", lambda: 1 / 0)
    outcome = run_cli(capsys, ["keys", "list"])
    assert outcome.code == 1
    assert "Traceback" in outcome.err and "ZeroDivisionError" in outcome.err
    assert outcome.err_lines[-1].startswith("masterkey: internal error: this is a bug")


@pytest.mark.parametrize(
    "failure",
    [MemoryError(), RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")],
    ids=["MemoryError", "torch-allocator"],
)
def test_running_out_of_memory_is_one_line(capsys, monkeypatch, failure):
    import masterkey.keys

    def exhausted(*args, **kwargs):
        raise failure

    monkeypatch.setattr(masterkey.keys, "load_key_values", exhausted)
    assert_clean_failure(run_cli(capsys, ["keys", "show", "paper8"]), "out of memory")


def test_a_closed_pipe_ends_quietly():
    """``masterkey keys list | head -0``: the reader is gone before masterkey writes; the output is small, so the
    failure comes at the final flush, where Python would print "Exception ignored ..." at exit."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "masterkey", "keys", "list"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert err == "", err


def test_a_pipe_closed_while_printing_ends_quietly(capsys, monkeypatch):
    class ClosedPipe:
        def write(self, text: str) -> int:
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

        def flush(self) -> None:
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

        def fileno(self) -> int:
            raise ValueError("no descriptor")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["keys", "show", "random:2000"]) == 141
    assert capsys.readouterr().err == ""


def test_resume_removes_a_stale_temporary_checkpoint(workspace, tmp_path, capsys, one_thread):
    from masterkey.train import TrainConfig, train
    from masterkey.train.loop import partial_dir

    out = tmp_path / "run"
    config = TrainConfig(
        model="convnext_atto",
        model_kwargs={"num_classes": 10, "patch_size": 1},
        data=str(workspace / "data"),
        epochs=2,
        batch_size=2,
        eval_batch_size=8,
        threads=1,
        progress=False,
    )

    def stop_in_epoch_two(epoch: int, step: int) -> None:
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, out, on_step=stop_in_epoch_two)
    partial = partial_dir(out)
    (partial / ".checkpoint.pt.x1y2z3.tmp").write_bytes(b"half a checkpoint, left by kill -9")
    argv = ["train", *[a.format(ws=workspace) for a in TINY_TRAIN], "--epochs", "2", "-o", str(out), "--resume"]
    outcome = run_cli(capsys, argv)
    assert outcome.code == 0, outcome.err
    assert not partial.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_identical_runs_write_identical_files(workspace, tmp_path, capsys, monkeypatch, one_thread):
    """Key files, exported weights and reports (with SOURCE_DATE_EPOCH) compare equal with sha256sum."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")
    for run in ("a", "b"):
        out = tmp_path / run
        assert main(["keys", "convert", "scalespace8", "-o", str(out / "keys.safetensors")]) == 0
        assert main(["train", *[a.format(ws=workspace) for a in TINY_TRAIN], "-o", str(out / "train")]) == 0
        assert main(["report", str(workspace / "fit"), "--samples", "2", "-o", str(out / "report")]) == 0
    capsys.readouterr()
    for name in ("keys.safetensors", "train/model.safetensors", "report/report.html", "report/report.md"):
        assert _sha(tmp_path / "a" / name) == _sha(tmp_path / "b" / name), name
    assert not [p for p in tmp_path.rglob(".*")], "no lock or temporary file is left beside outputs"
