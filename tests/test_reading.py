"""masterkey.reading: files read by name are regular files (a FIFO is refused without blocking, a device without
reading it), whole-file reads are bounded, and torch's unreadable files are described without its advice to
unpickle them."""

from __future__ import annotations

import os
import threading
import zipfile

import numpy as np
import pytest
import torch

from masterkey.errors import MasterkeyError
from masterkey.reading import read_bytes, read_json, read_text, regular_file, torch_load


def _within(seconds: float, fn, *args):
    """Run ``fn(*args)`` in a thread; fail if it does not return within ``seconds`` (a blocked read)."""
    result: dict[str, object] = {}

    def target():
        try:
            result["value"] = fn(*args)
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{fn.__name__} blocked"
    if "error" in result:
        raise result["error"]
    return result.get("value")


@pytest.mark.parametrize("reader", [regular_file, lambda p: read_bytes(p, 100), read_json, read_text])
def test_a_fifo_is_refused_without_blocking(tmp_path, reader):
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(MasterkeyError, match="pipe: a named pipe \\(FIFO\\), not a"):
        _within(20, reader, tmp_path / "pipe")


def test_what_a_path_is_instead_of_a_file(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    (tmp_path / "zero").symlink_to("/dev/zero")
    (tmp_path / "file").write_text("x")
    cases = {
        "folder": "folder: a folder, not a key file",
        "loop": "loop: a loop of symbolic links, not a key file",
        "dangling": f"dangling: a link to {tmp_path / 'gone'}, which does not exist",
        "zero": "zero: a device, not a key file",
        "missing": "missing: no such key file",
        "file/inside": "inside: no such key file (a part of the path is a file, not a folder)",
    }
    for name, message in cases.items():
        with pytest.raises(MasterkeyError) as info:
            regular_file(tmp_path / name, "key file")
        assert str(info.value).endswith(message), str(info.value)
    assert regular_file(tmp_path / "file").st_size == 1


def test_reads_are_bounded(tmp_path):
    (tmp_path / "big.json").write_text("[" + "0," * 600 + "0]")
    with pytest.raises(MasterkeyError, match="big.json: 1,203 bytes is too large for a manifest \\(at most 1,000\\)"):
        read_json(tmp_path / "big.json", "manifest", limit=1000)
    assert len(read_json(tmp_path / "big.json", "manifest", limit=1203)) == 601
    with pytest.raises(MasterkeyError, match="zero: a device"):
        _within(20, read_bytes, "/dev/zero", 1 << 30)
    (tmp_path / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(MasterkeyError, match="latin.txt: not UTF-8 text \\(byte 3\\); not a text key file"):
        read_text(tmp_path / "latin.txt", what="text key file")


def _files(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros(3))
    (tmp_path / "a.npy").rename(tmp_path / "npy.pth")
    (tmp_path / "json.pth").write_text('{"a": 1}')
    (tmp_path / "text.pth").write_text("weights, honestly")
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "gzip.pth").write_bytes(b"\x1f\x8b\x08\x00" + bytes(40))
    (tmp_path / "binary.pth").write_bytes(bytes([0xFF, 0xFE, 0x00, 0x9C]) * 20)
    with zipfile.ZipFile(tmp_path / "zip.pth", "w") as z:
        z.writestr("a.txt", "hello")
    torch.save({"w": torch.zeros(2), "extra": np.zeros(2)}, tmp_path / "numpy_inside.pth")
    torch.save({"w": torch.ones(2)}, tmp_path / "good.pth")


@pytest.mark.parametrize(
    ("name", "cause"),
    [
        ("npy.pth", "(a NumPy .npy array, not a PyTorch file)"),
        ("json.pth", "(a JSON text, not a PyTorch file)"),
        ("text.pth", "(a text file, not a PyTorch file)"),
        ("empty.pth", "(the file is empty)"),
        ("gzip.pth", "(a gzip archive, not a PyTorch file)"),
        ("binary.pth", "(an unknown binary format, not a PyTorch file)"),
        ("zip.pth", "(a zip archive that is not a PyTorch checkpoint)"),
        ("numpy_inside.pth", "holds Python objects besides tensors (numpy"),
    ],
)
def test_unreadable_torch_files_say_what_they_are_never_to_unpickle_them(tmp_path, name, cause):
    _files(tmp_path)
    with pytest.raises(MasterkeyError) as info:
        torch_load(tmp_path / name, "training checkpoint")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / name}: not a readable training checkpoint") and cause in message
    assert "weights_only" not in message and "\n" not in message


def test_a_good_checkpoint_loads(tmp_path):
    _files(tmp_path)
    assert torch.equal(torch_load(tmp_path / "good.pth")["w"], torch.ones(2))
