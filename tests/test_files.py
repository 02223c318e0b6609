import errno
import multiprocessing as mp
import os
import time

import pytest

from masterkey.errors import MasterkeyError
from masterkey.files import atomic_directory, atomic_write, write_json, write_lock


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(target, "w") as f:
        f.write("half")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    write_json(target, {"a": 1})
    assert target.read_text().strip().startswith("{")


def test_atomic_directory(tmp_path):
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "run") as tmp:
        (tmp / "x").write_text("partial")
        raise RuntimeError("interrupted")
    assert not (tmp_path / "run").exists()
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []
    with atomic_directory(tmp_path / "run") as tmp:
        (tmp / "x").write_text("v1")
    with pytest.raises(MasterkeyError, match="already exists"), atomic_directory(tmp_path / "run"):
        pass
    with atomic_directory(tmp_path / "run", overwrite=True) as tmp:
        (tmp / "y").write_text("v2")
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["y"]


def _hold(path, ready):
    with write_lock(path):
        ready.set()
        time.sleep(3)


def test_second_writer_is_refused(tmp_path):
    ready = mp.get_context("fork").Event()
    proc = mp.get_context("fork").Process(target=_hold, args=(tmp_path / "bank", ready))
    proc.start()
    try:
        assert ready.wait(10)
        with pytest.raises(MasterkeyError, match="being written by another process"), write_lock(tmp_path / "bank"):
            pass
    finally:
        proc.join()
    with write_lock(tmp_path / "bank"):  # free again once the holder is gone
        pass


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
