"""A workspace of real inputs (a CIFAR-10 ConvNeXt, its bank, key files, a few CIFAR-10 images, a fit run) and of
broken ones (damaged banks and key files, non-masterkey folders), plus the checks every bad-input and fault case
makes: exit status, one line on stderr naming the problem, no traceback, nothing left behind, inputs untouched."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from masterkey.cli import main

_HASHES: dict[tuple[str, int, int, int, int], str] = {}


def _sha256(path: Path) -> str:
    """sha256 of a file's bytes, computed again whenever its inode, size, mtime or ctime changed (any write changes
    the ctime, which no program can set back), so the cache cannot hide a modification."""
    st = path.stat()
    key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _HASHES:
        _HASHES[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return _HASHES[key]


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` (hidden ones too) with the sha256 of its bytes ('dir' / 'link' otherwise; a FIFO or
    device is recorded by its kind, never opened: reading a FIFO would block)."""
    state = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            state[rel] = "link:" + os.readlink(path)
        elif path.is_dir():
            state[rel] = "dir"
        elif not stat.S_ISREG(path.stat().st_mode):
            state[rel] = f"special:{stat.S_IFMT(path.stat().st_mode)}"
        else:
            state[rel] = _sha256(path)
    return state


@dataclass
class Outcome:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def run_cli(capsys: pytest.CaptureFixture[str], argv: list[str]) -> Outcome:
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    return Outcome(code, out, err)


def assert_clean_failure(outcome: Outcome, expected: str, code: int = 2) -> None:
    """Exit status ``code``, no traceback, and exactly one line on stderr: ``masterkey: error: ...expected...``."""
    assert "Traceback" not in outcome.err, outcome.err
    errors = [line for line in outcome.err_lines if line.startswith("masterkey: error:")]
    assert outcome.code == code, (outcome.code, outcome.err)
    assert len(errors) == 1 and errors == outcome.err_lines[-1:], outcome.err
    assert expected in errors[0], errors[0]


def _make_bank(path: Path, weights: Path) -> None:
    from masterkey.sources import harvest_bank

    harvest_bank([str(weights)], path)


def _tampered(bank: Path, dest: Path, change) -> None:
    """A copy of ``bank`` whose manifest ``change`` edited in place (or replaced by the text it returned)."""
    shutil.copytree(bank, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    text = change(manifest)
    (dest / "manifest.json").write_text(text if isinstance(text, str) else json.dumps(manifest, indent=2))


def _damaged_banks(ws: Path) -> None:
    bank = ws / "bank"

    def drop(field):
        return lambda m: m.pop(field) and None

    def setter(*keys, value):
        def change(m):
            target = m
            for key in keys[:-1]:
                target = target[key]
            target[keys[-1]] = value

        return change

    changes = {
        "no_files": drop("files"),
        "no_sources": drop("sources"),
        "no_counts": drop("counts_by_kernel"),
        "n_filters_str": setter("n_filters", value="1840"),
        "n_filters_wrong": setter("n_filters", value=5),
        "schema_v2": setter("schema_version", value=2),
        "schema_bool": setter("schema_version", value=True),
        "files_traversal": lambda m: m["files"].update({"../outside.safetensors": m["files"]["metadata.parquet"]}),
        "files_bad_sha": lambda m: m["files"]["metadata.parquet"].update(sha256="xyz"),
        "files_no_size": lambda m: m["files"]["metadata.parquet"].pop("bytes") and None,
        "files_missing_tensor": lambda m: m["files"].pop("filters_k7.safetensors") and None,
        "source_dup": lambda m: m["sources"].append(dict(m["sources"][0])),
        "source_count": lambda m: m["sources"][0].update(n_filters=3),
        "excluded_wrong": setter("excluded", "zero", value=99),
        "extra_field": setter("trusted", value=True),
        "as_list": lambda m: "[1, 2, 3]",
        "not_json": lambda m: "{not json",
        "format_other": setter("format", value="something-else"),
    }
    for name, change in changes.items():
        _tampered(bank, ws / "damaged" / name, change)
    shutil.copytree(bank, ws / "damaged" / "truncated")
    target = ws / "damaged" / "truncated" / "filters_k7.safetensors"
    target.write_bytes(target.read_bytes()[:1000])
    shutil.copytree(bank, ws / "damaged" / "flipped")
    target = ws / "damaged" / "flipped" / "metadata.parquet"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    (ws / "damaged" / "no_manifest").mkdir()
    (ws / "damaged" / "no_manifest" / "metadata.parquet").write_bytes(b"x")


def _key_files(ws: Path) -> None:
    from masterkey.keys import load_keys

    keys = ws / "keyfiles"
    keys.mkdir()
    load_keys("paper8").save(keys / "paper8.safetensors")
    load_keys("paper8").save_text(keys / "paper8.txt")
    save_file({"keys": torch.randn(4, 3, 3)}, str(keys / "k3.safetensors"))
    (keys / "k2x3.txt").write_text("Filter 1:\n1 2 3\n4 5 6\n")
    (keys / "mixed.txt").write_text("Filter 1:\n1 0\n0 -1\nFilter 2:\n1 0 0\n0 1 0\n0 0 -2\n")
    (keys / "nan.txt").write_text("Filter 1:\n1 nan\n0 -1\n")
    (keys / "words.txt").write_text("Filter 1:\n1 two\n3 4\n")
    (keys / "binary.txt").write_bytes(bytes(range(256)) * 4)
    (keys / "empty.txt").write_text("")
    (keys / "constant.txt").write_text("Filter 1:\n1 1\n1 1\n")
    good = torch.randn(4, 3, 3)
    save_file({"keys": good}, str(keys / "bad_meta.safetensors"), metadata={"masterkey": "{not json"})
    save_file({"keys": good}, str(keys / "bad_labels.safetensors"), metadata={"masterkey": json.dumps({"labels": 5})})
    save_file({"a": good, "b": good.clone()}, str(keys / "two.safetensors"))
    save_file({"keys": torch.randn(5)}, str(keys / "flat.safetensors"))
    save_file({"keys": torch.full((2, 3, 3), float("nan"))}, str(keys / "nan.safetensors"))
    (keys / "garbage.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")


def _bad_sources(ws: Path) -> None:
    src = ws / "sources"
    src.mkdir()
    (src / "empty.onnx").write_bytes(b"")
    (src / "empty.pth").write_bytes(b"")
    (src / "text.pth").write_text("hello")
    (src / "empty.safetensors").write_bytes(b"")
    save_file({"fc.weight": torch.randn(4, 4)}, str(src / "no_depthwise.safetensors"))
    (src / "folder").mkdir()


def _images(ws: Path, shared: Path) -> None:
    for split in ("train", "test"):
        for cls in sorted(p.name for p in (shared / "data" / "cifar10" / split).iterdir()):
            dest = ws / "data" / split / cls
            dest.mkdir(parents=True)
            for image in sorted((shared / "data" / "cifar10" / split / cls).iterdir())[:2]:
                shutil.copy(image, dest / image.name)


def _runs(ws: Path) -> None:
    (ws / "runs" / "bad_json").mkdir(parents=True)
    (ws / "runs" / "bad_json" / "run.json").write_text("{oops")
    (ws / "runs" / "unknown_kind").mkdir()
    (ws / "runs" / "unknown_kind" / "run.json").write_text(json.dumps({"kind": "mystery"}))
    (ws / "runs" / "config_list").mkdir()
    (ws / "runs" / "config_list" / "run.json").write_text(json.dumps({"kind": "fit", "config": [1]}))


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory, shared: Path) -> Path:
    """Built once per session; every case checks that it leaves it exactly as it was."""
    ws = tmp_path_factory.mktemp("workspace")
    weights = ws / "model.safetensors"
    shutil.copy(shared / "models" / "cifar10-convnext" / "convnext_atto_s0_e20.safetensors", weights)
    _make_bank(ws / "bank", weights)
    _damaged_banks(ws)
    _key_files(ws)
    _bad_sources(ws)
    _images(ws, shared)
    _runs(ws)
    (ws / "userdir").mkdir()
    (ws / "userdir" / "thesis.tex").write_text("my only copy")
    (ws / "empty").mkdir()
    (ws / "notes.txt").write_text("not a key file")
    assert main(["fit", str(ws / "bank"), "--keys", "paper8", "-o", str(ws / "fit")]) == 0
    assert main(["keys", "convert", "paper8", "-o", str(ws / "written_keys.safetensors")]) == 0
    return ws


@functools.cache
def tmpfs_available() -> bool:
    """Whether a tmpfs can be mounted here (root, mount permitted); MASTERKEY_TEST_NO_TMPFS=1 says no."""
    if os.environ.get("MASTERKEY_TEST_NO_TMPFS") or os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    probe = Path(f"/tmp/masterkey-tmpfs-probe-{os.getpid()}")
    probe.mkdir(exist_ok=True)
    try:
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(probe)], capture_output=True)
        if ok.returncode != 0:
            return False
        subprocess.run(["umount", str(probe)], capture_output=True, check=False)
        return True
    finally:
        with contextlib.suppress(OSError):
            probe.rmdir()


@contextlib.contextmanager
def full_disk(folder: Path, size_kib: int) -> Iterator[str]:
    """Make writes under ``folder`` fail for lack of space: a ``size_kib`` tmpfs mounted on it when running as root
    (a real ENOSPC), else a file-size limit (``RLIMIT_FSIZE``, EFBIG) for this process. Yields the method."""
    import resource
    import signal

    folder.mkdir(parents=True, exist_ok=True)
    if tmpfs_available():
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(folder)], check=True)
        try:
            yield "tmpfs"
        finally:
            subprocess.run(["umount", "-l", str(folder)], check=False)
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size_kib * 1024, hard))
    try:
        yield "rlimit"
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """``folder`` made unwritable: a read-only tmpfs mounted on it as root, else permissions 0555."""
    folder.mkdir(parents=True, exist_ok=True)
    if tmpfs_available():
        subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=16k", "tmpfs", str(folder)], check=True)
        try:
            yield
        finally:
            subprocess.run(["umount", "-l", str(folder)], check=False)
        return
    folder.chmod(0o555)
    try:
        yield
    finally:
        folder.chmod(0o755)
