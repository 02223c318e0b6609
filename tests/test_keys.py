from pathlib import Path

import numpy as np
import pytest
import torch

from masterkey.errors import MasterkeyError
from masterkey.keys import KeySet, builtin_keysets, load_keys


def _parse_shared(path: Path) -> np.ndarray:
    blocks, cur = [], []
    for line in path.read_text().splitlines():
        if line.startswith("Filter"):
            if cur:
                blocks.append(cur)
            cur = []
        elif line.strip():
            cur.append([float(v) for v in line.split()])
    blocks.append(cur)
    return np.array(blocks)


def test_paper8_matches_the_shared_file_and_is_normalised(shared):
    keys = load_keys("paper8")
    assert len(keys) == 8 and keys.kernel_size == 7
    raw = _parse_shared(shared / "keys" / "paper8_7x7.txt")
    # the published values are already zero-mean, unit-norm to 1e-3; re-normalising barely moves them
    assert np.abs(keys.keys.numpy() - raw).max() < 2e-3
    flat = keys.keys.reshape(8, -1)
    assert torch.allclose(flat.mean(1), torch.zeros(8), atol=1e-6)
    assert torch.allclose(flat.norm(dim=1), torch.ones(8), atol=1e-6)
    assert "Babaiee" in keys.provenance["attribution"] and "CC-BY-4.0" in keys.provenance["attribution"]
    # key 8 is a Gaussian blob: its centre is its maximum
    assert keys.keys[7].argmax() == 24


def test_text_and_safetensors_round_trips(tmp_path):
    keys = load_keys("random:5:3", kernel_size=5)
    keys.save(tmp_path / "k.safetensors")
    back = KeySet.load(tmp_path / "k.safetensors")
    assert torch.equal(back.keys, keys.keys) and back.name == keys.name and back.provenance["seed"] == 3
    keys.save_text(tmp_path / "k.txt")
    text = KeySet.load(tmp_path / "k.txt")
    assert torch.allclose(text.keys, keys.keys, atol=1e-5)
    # saving twice gives the same bytes (deterministic files)
    keys.save(tmp_path / "k2.safetensors")
    assert (tmp_path / "k.safetensors").read_bytes() == (tmp_path / "k2.safetensors").read_bytes()


def test_builtins():
    assert {"paper8", "random", "impulse", "scalespace8"} <= set(builtin_keysets())
    a, b = load_keys("random:4:1", kernel_size=3), load_keys("random:4:1", kernel_size=3)
    assert torch.equal(a.keys, b.keys) and a.kernel_size == 3
    assert not torch.equal(a.keys, load_keys("random:4:2", kernel_size=3).keys)
    imp = load_keys("impulse", kernel_size=5)
    assert len(imp) == 1 and imp.keys[0].argmax() == 12


def test_resize_only_when_asked_and_says_it_is_a_crop():
    with pytest.raises(MasterkeyError, match="--resize-keys"):
        load_keys("paper8", kernel_size=3)
    crop = load_keys("paper8", kernel_size=3, resize=True)
    assert crop.kernel_size == 3 and "crop" in crop.provenance["resized"]
    centre = load_keys("paper8").keys[:, 2:5, 2:5].reshape(8, -1)
    centre = centre - centre.mean(1, keepdim=True)
    centre = centre / centre.norm(dim=1, keepdim=True)
    assert torch.allclose(crop.keys.reshape(8, -1), centre, atol=1e-6)
    pad = load_keys("paper8").resized(9)
    assert pad.kernel_size == 9 and torch.allclose(pad.keys[:, 1:8, 1:8], load_keys("paper8").keys, atol=1e-6)
    with pytest.raises(MasterkeyError, match="parity"):
        load_keys("paper8").resized(4)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("Filter 1:\n1 2 3\n4 5 6\n7 8 9\n\nFilter 2:\n1 2\n3 4\n", "key 2"),
        ("Filter 1:\n1 2 3\n4 nan 6\n7 8 9\n", "non-finite"),
        ("Filter 1:\n1 2 3\n4 five 6\n7 8 9\n", "expected a row of numbers"),
        ("Filter 1:\n1 1 1\n1 1 1\n1 1 1\n", "unusable"),
        ("", "no keys"),
    ],
)
def test_bad_key_files_name_the_file(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_text(content)
    with pytest.raises(MasterkeyError, match=message) as err:
        KeySet.load(path)
    assert "bad.txt" in str(err.value)


def test_bad_safetensors_keys(tmp_path):
    from safetensors.torch import save_file

    save_file({"keys": torch.randn(3, 3, 4)}, str(tmp_path / "shape.safetensors"))
    with pytest.raises(MasterkeyError, match=r"shape.safetensors: keys must have shape"):
        KeySet.load(tmp_path / "shape.safetensors")
    bad = torch.randn(3, 3, 3)
    bad[1, 1, 1] = float("inf")
    save_file({"keys": bad}, str(tmp_path / "inf.safetensors"))
    with pytest.raises(MasterkeyError, match="NaN or Inf"):
        KeySet.load(tmp_path / "inf.safetensors")
    (tmp_path / "trunc.safetensors").write_bytes(b"\x10\x00\x00")
    with pytest.raises(MasterkeyError, match="trunc.safetensors: not a readable"):
        KeySet.load(tmp_path / "trunc.safetensors")
    with pytest.raises(MasterkeyError, match="neither a key file nor a built-in"):
        load_keys("no_such_keys")
