import errno
import json
import multiprocessing as mp
import os
import time

import pytest
import torch

import masterkey.files as files
from masterkey.errors import MasterkeyError
from masterkey.files import (
    atomic_directory,
    atomic_write,
    check_output,
    describe_os_error,
    output_file,
    output_kind,
    remove_stale_temporaries,
    safetensors_bytes,
    write_json,
    write_lock,
)


def _run_info(path, kind):
    """A ``run.json`` of the shape every writer gives it (masterkey.runs.write_run_info)."""
    write_json(path / "run.json", {"kind": kind, "config": {}, "environment": {}, "argv": ["masterkey", kind]})


def _run_dir(path, kind):
    path.mkdir(parents=True)
    _run_info(path, kind)
    return path


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(target, "w") as f:
        f.write("half")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    with pytest.raises(RuntimeError), atomic_write(tmp_path / "new" / "deeper" / "x", "w"):
        raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]  # the folders it made are gone too
    write_json(target, {"a": 1})
    assert target.read_text().strip().startswith("{")


def test_atomic_directory_builds_a_recognisable_output(tmp_path):
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "run", "fit") as tmp:
        (tmp / "x").write_text("partial")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []  # no output, no temporary folder, no lock file
    with atomic_directory(tmp_path / "run", "fit") as tmp:
        _run_info(tmp, "fit")
    with pytest.raises(MasterkeyError, match="already exists"), atomic_directory(tmp_path / "run", "fit"):
        pass
    with atomic_directory(tmp_path / "run", "fit", overwrite=True) as tmp:
        _run_info(tmp, "fit")
        (tmp / "summary.md").write_text("v2")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["run.json", "summary.md"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    with pytest.raises(RuntimeError, match="without its swap marker"), atomic_directory(tmp_path / "s", "swap") as tmp:
        (tmp / "results.csv").write_text("a,b\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_output_kinds_are_recognised(tmp_path):
    assert output_kind(_run_dir(tmp_path / "fit", "fit")) == "fit"
    from masterkey.bank import open_bank

    open_bank(None).query("source == 'convnext_atto_s0_e20' and layer_index == 0").save(tmp_path / "bank")
    assert output_kind(tmp_path / "bank") == "bank"
    (tmp_path / "old_report").mkdir()
    for name in ("report.html", "report.md", "fig.png"):
        (tmp_path / "old_report" / name).write_text("x")
    assert output_kind(tmp_path / "old_report") == "report"
    (tmp_path / "old_report" / "thesis.tex").write_text("mine")
    assert output_kind(tmp_path / "old_report") is None
    (tmp_path / "empty").mkdir()
    assert output_kind(tmp_path / "empty") == "empty"
    (tmp_path / "bad_run").mkdir()
    (tmp_path / "bad_run" / "run.json").write_text("{oops")
    assert output_kind(tmp_path / "bad_run") is None
    from masterkey.keys import load_keys

    load_keys("paper8").save(tmp_path / "k.safetensors")
    load_keys("paper8").save_text(tmp_path / "k.txt")
    assert output_kind(tmp_path / "k.safetensors") == output_kind(tmp_path / "k.txt") == "keys"
    (tmp_path / "weights.safetensors").write_bytes(safetensors_bytes({"w": torch.zeros(2)}, {"format": "pt"}))
    (tmp_path / "notes.txt").write_text("Filter 1:\n1 0\n0 -1\n")
    assert output_kind(tmp_path / "weights.safetensors") is None and output_kind(tmp_path / "notes.txt") is None
    (tmp_path / "link").symlink_to(tmp_path / "fit")
    assert output_kind(tmp_path / "link") is None
    assert output_kind(tmp_path / "nothing") is None


@pytest.mark.parametrize(
    ("out", "kind", "overwrite", "inputs", "message"),
    [
        ("fit", "fit", False, [], "already exists (pass overwrite=True"),
        ("fit", "fit", True, [], None),
        ("fit", "discover", True, [], "is a masterkey fit output; overwrite=True replaces only a discover output"),
        ("train", "experiment", True, [], None),
        ("user", "fit", True, [], "user is not a masterkey output"),
        ("user/new", "fit", False, ["user"], "lies inside the input"),
        ("user", "fit", True, ["user/data.csv"], "holds the input"),
        ("user/data.csv", "keys", True, ["user/data.csv"], "is an input of this command"),
        ("user/hardlink.csv", "keys", True, ["user/data.csv"], "is an input of this command"),
        ("fit", "fit", True, ["fit:kmeans"], "is an input of this command"),
        ("fit", "fit", True, ["convnext_atto@fit/run.json"], "holds the input"),
        ("empty", "bank", True, [], None),
        ("user/data.csv/x", "fit", False, [], "data.csv is a file, not a folder"),
        ("new/deep/out", "fit", False, ["paper8", "random:8", None], None),
        ("link", "fit", True, [], "link is not a masterkey output"),
    ],
)
def test_the_output_rule(tmp_path, monkeypatch, out, kind, overwrite, inputs, message):
    monkeypatch.chdir(tmp_path)
    _run_dir(tmp_path / "fit", "fit")
    _run_dir(tmp_path / "train", "experiment")
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "data.csv").write_text("1,2\n")
    os.link(tmp_path / "user" / "data.csv", tmp_path / "user" / "hardlink.csv")
    (tmp_path / "empty").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "fit")
    if message is None:
        assert check_output(out, kind, overwrite=overwrite, inputs=inputs) == tmp_path.joinpath(out).relative_to(
            tmp_path
        )
    else:
        with pytest.raises(MasterkeyError) as err:
            check_output(out, kind, overwrite=overwrite, inputs=inputs)
        assert message in str(err.value)


def test_output_file_replaces_only_its_own_kind(tmp_path):
    from masterkey.keys import load_keys

    target = tmp_path / "k.safetensors"
    with output_file(target, "keys") as f:
        f.write(load_keys("paper8").to_bytes())
    with pytest.raises(MasterkeyError, match="already exists"), output_file(target, "keys"):
        pass
    with output_file(target, "keys", overwrite=True) as f:
        f.write(load_keys("impulse").to_bytes())
    model = tmp_path / "model.safetensors"
    model.write_bytes(safetensors_bytes({"w": torch.ones(3)}))
    before = model.read_bytes()
    with pytest.raises(MasterkeyError, match="not a masterkey output"), output_file(model, "keys", overwrite=True):
        pass
    assert model.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.safetensors", "model.safetensors"]


def _hold(path, ready):
    with write_lock(path):
        ready.set()
        time.sleep(3)


def test_second_writer_is_refused_and_no_lock_file_stays(tmp_path):
    ready = mp.get_context("fork").Event()
    proc = mp.get_context("fork").Process(target=_hold, args=(tmp_path / "bank", ready))
    proc.start()
    try:
        assert ready.wait(10)
        assert (tmp_path / ".bank.lock").exists()
        with (
            pytest.raises(files.OutputBusyError, match="being written by another process"),
            write_lock(tmp_path / "bank"),
        ):
            pass
    finally:
        proc.join()
    assert list(tmp_path.iterdir()) == []  # the holder removed its lock file
    with write_lock(tmp_path / "bank"):  # free again once the holder is gone
        pass
    assert list(tmp_path.iterdir()) == []


def test_a_lock_file_left_by_a_killed_writer_is_reused_and_removed(tmp_path):
    (tmp_path / ".bank.lock").write_bytes(b"")  # kill -9 leaves the file; the kernel dropped the lock
    with write_lock(tmp_path / "bank"):
        pass
    assert list(tmp_path.iterdir()) == []


def test_a_lock_on_an_unlinked_file_is_retried_on_the_current_one(tmp_path, monkeypatch):
    """Between our open and our flock the holder unlinked the file and a third writer created a new one: locking
    the stale inode would let two writers in, so the lock must be taken on the file now at the path."""
    lock_path = tmp_path / ".bank.lock"
    lock_path.write_bytes(b"")
    real_flock = files.fcntl.flock
    swapped = []

    def racing_flock(fd, op):
        if not swapped and op & files.fcntl.LOCK_EX:
            swapped.append(os.fstat(fd).st_ino)
            lock_path.unlink()
            lock_path.write_bytes(b"")
        return real_flock(fd, op)

    monkeypatch.setattr(files.fcntl, "flock", racing_flock)
    fd = files._acquire(lock_path, tmp_path / "bank")
    try:
        assert os.fstat(fd).st_ino == os.stat(lock_path).st_ino != swapped[0]
    finally:
        os.close(fd)


def test_write_lock_removes_the_folders_it_made_when_the_block_fails(tmp_path):
    with pytest.raises(RuntimeError), write_lock(tmp_path / "a" / "b" / "out"):
        raise RuntimeError("bad input found after locking")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_and_full_locations_give_clean_errors(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a directory")
    with pytest.raises(MasterkeyError, match=r"cannot write .*file/out"), atomic_write(blocker / "out") as f:
        f.write(b"x")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(MasterkeyError, match="no space left on device"), atomic_write(tmp_path / "big") as f:
        f.write(b"x" * 1000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), "cannot write out: no space left on device"),
        (PermissionError(errno.EACCES, "Permission denied", "x/y"), "cannot write out: permission denied"),
        (OSError(errno.EROFS, "Read-only file system"), "cannot write out: read-only file system"),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), "cannot write out: disk quota exceeded"),
        (OSError("Error writing bytes to file. Detail: [errno 28] No space left"), "no space left on device"),
        (OSError(errno.EFBIG, "Error writing bytes to file. Detail: [errno 27] File too large"), "file too large"),
    ],
)
def test_os_errors_are_described_in_one_line(error, expected):
    assert describe_os_error(error, "out").endswith(expected)
    assert describe_os_error(error).startswith("cannot write")


def test_stale_temporaries_are_removed(tmp_path):
    (tmp_path / ".checkpoint.pt.abc123.tmp").write_bytes(b"half")
    (tmp_path / "checkpoint.pt").write_bytes(b"whole")
    remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_safetensors_bytes_are_stable_and_readable(tmp_path):
    from safetensors.torch import load, save

    tensors = {"b": torch.arange(6.0).reshape(2, 3), "a": torch.ones(2, dtype=torch.int64)}
    metadata = {f"key{i}": "v" * i for i in range(12)}
    assert len({save(tensors, metadata=metadata) for _ in range(10)}) > 1  # what this fixes: hash-ordered metadata
    outputs = {safetensors_bytes(tensors, metadata) for _ in range(10)}
    assert len(outputs) == 1
    data = outputs.pop()
    assert all(torch.equal(load(data)[k], v) for k, v in tensors.items())
    (tmp_path / "x.safetensors").write_bytes(data)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "x.safetensors"), framework="pt") as f:
        assert f.metadata() == metadata
    assert json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])["__metadata__"] == dict(
        sorted(metadata.items())
    )


def test_describe_written_names_files_sizes_and_hides_dot_entries(tmp_path):
    run = tmp_path / "run"
    (run / "sub").mkdir(parents=True)
    (run / ".run.lock").write_text("x" * 10_000)  # hidden: not counted
    for i in range(14):
        (run / f"f{i:02d}.csv").write_text("x" * 100)
    (run / "sub" / "deep.bin").write_bytes(b"\0" * 2_600_000)
    line = files.describe_written(run, limit=3)
    assert line == f"{run}/ (15 files, 2.6 MB): f00.csv, f01.csv, f02.csv, ... (12 more)"
    assert files.describe_written(run, limit=20).endswith("f13.csv, sub/")  # directories after files
    assert files.describe_written(run / "f00.csv") == f"{run / 'f00.csv'} (100 B)"


def _small_bank(path):
    from masterkey.bank import open_bank

    return open_bank(None).query("source == 'convnext_atto_s0_e20' and layer_index == 0").save(path)


@pytest.mark.parametrize(
    "marker",
    [
        {"kind": "fit"},  # one field naming a kind
        {"kind": "fit", "config": {}, "environment": {}},  # argv missing
        {"kind": "fit", "config": [], "environment": {}, "argv": []},  # config not an object
        {"kind": "mystery", "config": {}, "environment": {}, "argv": []},  # not a declared kind
        {"kind": "fit", "config": {}, "environment": {}, "argv": [1]},  # argv not text
        {"kind": "fit", "config": {}, "environment": {}, "argv": [], "trusted": True},  # a field of no writer
    ],
)
def test_a_run_json_that_merely_names_a_kind_is_not_a_run(tmp_path, marker):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text(json.dumps(marker))
    (tmp_path / "run" / "summary.md").write_text("mine")
    assert output_kind(tmp_path / "run") is None
    with pytest.raises(MasterkeyError, match="is not a masterkey output"):
        check_output(tmp_path / "run", "fit", overwrite=True)


def test_a_manifest_that_merely_names_the_bank_format_is_not_a_bank(tmp_path):
    _small_bank(tmp_path / "bank")
    manifest = json.loads((tmp_path / "bank" / "manifest.json").read_text())
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "manifest.json").write_text(json.dumps({"format": "masterkey-bank"}))
    partial = {k: v for k, v in manifest.items() if k != "files"}
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "manifest.json").write_text(json.dumps(partial))
    assert output_kind(tmp_path / "bank") == "bank"
    assert output_kind(tmp_path / "fake") is None and output_kind(tmp_path / "partial") is None


def test_overwrite_refuses_an_output_holding_files_masterkey_did_not_write(tmp_path):
    _run_dir(tmp_path / "fit", "fit")
    (tmp_path / "fit" / "summary.md").write_text("masterkey's")
    (tmp_path / "fit" / ".summary.md.x1y2.tmp").write_text("a killed writer's temporary: masterkey's too")
    assert files.foreign_files(tmp_path / "fit") == []
    check_output(tmp_path / "fit", "fit", overwrite=True)
    for name in ("notes.txt", ".hidden", "sub/data.csv"):
        (tmp_path / "fit" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "fit" / name).write_text("the user's")
    assert files.foreign_files(tmp_path / "fit") == [".hidden", "notes.txt", "sub/data.csv"]
    with pytest.raises(MasterkeyError, match=r"fit holds files masterkey did not write \(\.hidden, notes\.txt, sub/"):
        check_output(tmp_path / "fit", "fit", overwrite=True)
    bank = _small_bank(tmp_path / "bank").path
    check_output(bank, "bank", overwrite=True)
    (bank / "README").write_text("the user's")
    with pytest.raises(MasterkeyError, match=r"bank holds files masterkey did not write \(README\)"):
        check_output(bank, "bank", overwrite=True)
    with (
        pytest.raises(MasterkeyError, match="holds files masterkey did not write"),
        atomic_directory(bank, "bank", overwrite=True),
    ):
        pass
    assert (bank / "README").read_text() == "the user's"


def test_runs_nested_in_an_experiment_are_checked_as_train_runs(tmp_path):
    exp = _run_dir(tmp_path / "exp", "experiment")
    _run_dir(exp / "runs" / "frozen-s0", "train")
    (exp / "runs" / "frozen-s0" / "metrics.csv").write_text("epoch\n")
    assert files.foreign_files(exp) == []
    (exp / "runs" / "frozen-s0" / "notes.txt").write_text("the user's")
    (exp / "runs" / "loose.txt").write_text("the user's")
    assert files.foreign_files(exp) == ["runs/frozen-s0/notes.txt", "runs/loose.txt"]


def test_describe_written_lists_the_file_to_open_first(tmp_path):
    """``masterkey report`` writes 15+ files; the wrote line names report.html first, not "(15 more)"."""
    run = tmp_path / "report"
    run.mkdir()
    for name in [f"a{i:02d}.png" for i in range(15)] + ["report.html", "report.md"]:
        (run / name).write_text("x")
    line = files.describe_written(run, limit=3, first=("report.html", "report.md"))
    assert line.endswith(": report.html, report.md, a00.png, ... (14 more)")
