from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

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
    with pytest.raises(MasterkeyError, match="resize=True"):
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


@pytest.mark.parametrize(
    ("spec", "kernel_size", "message"),
    [
        ("random:abc", None, "the number of keys K must be a whole number from 1 to 10,000, got 'abc'"),
        ("random:0", None, "must be from 1 to 10,000, got 0"),
        ("random:10001", None, "got 10,001"),
        ("random: 8", None, "got ' 8'"),
        ("random:8_000", None, "got '8_000'"),
        ("random:8:-1", None, "the seed must be a whole number"),
        ("random:8:4294967296", None, "the seed must be from 0 to 4,294,967,295"),
        ("random:8:0:0", None, "random is written random:K[:SEED]"),
        ("random", None, "give the number of keys"),
        ("paper8:1", None, "paper8 takes no arguments"),
        ("scalespace8:x", None, "scalespace8 takes no arguments"),
        ("", None, "empty"),
        ("impulse", 0, "kernel size 0: expected an integer from 2 to 63"),
        ("impulse", 64, "kernel size 64"),
        ("scalespace8", 4, "odd kernel sizes >= 3"),
    ],
)
def test_key_specs_are_parsed_strictly_and_bounded_before_any_work(spec, kernel_size, message):
    with pytest.raises(MasterkeyError) as err:
        load_keys(spec, kernel_size=kernel_size)
    assert message in str(err.value)


def test_the_largest_random_key_set_is_made_and_one_more_is_refused():
    assert len(load_keys("random:10000:3", kernel_size=3)) == 10_000
    with pytest.raises(MasterkeyError, match="10,001"):
        load_keys("random:10001", kernel_size=3)


def test_key_file_metadata_is_validated(tmp_path):
    from safetensors.torch import save_file

    keys = torch.randn(3, 3, 3)
    for meta, message in (
        ("[1, 2]", "not a JSON object"),
        ('{"labels": "abc"}', "labels='abc'"),
        ('{"labels": [1, 2, 3]}', "labels=[1, 2, 3]"),
        ('{"provenance": 5}', "provenance=5"),
        ('{"name": 7}', "name=7"),
        ('{"format": "other"}', "format='other'"),
    ):
        save_file({"keys": keys}, str(tmp_path / "k.safetensors"), metadata={"masterkey": meta})
        with pytest.raises(MasterkeyError, match="corrupt key-set metadata") as err:
            KeySet.load(tmp_path / "k.safetensors")
        assert message in str(err.value)
    save_file({"keys": keys}, str(tmp_path / "k.safetensors"), metadata={"masterkey": '{"labels": ["a", "b"]}'})
    with pytest.raises(MasterkeyError, match="2 labels for 3 keys"):
        KeySet.load(tmp_path / "k.safetensors")
    save_file({"keys": torch.randn(3, 64, 64)}, str(tmp_path / "big.safetensors"))
    with pytest.raises(MasterkeyError, match="64x64 keys; kernel sizes go up to 63"):
        KeySet.load(tmp_path / "big.safetensors")


def test_text_key_files_are_bounded_and_must_be_square(tmp_path, monkeypatch):
    import masterkey.keys as keys_module

    path = tmp_path / "k.txt"
    path.write_text("Filter 1:\n1 2 3\n4 5 6\n")
    with pytest.raises(MasterkeyError, match="key 1 is 2 row"):
        KeySet.load(path)
    load_keys("paper8").save_text(path)
    monkeypatch.setattr(keys_module, "MAX_TEXT_BYTES", 100)
    with pytest.raises(MasterkeyError, match="too large for a text key file"):
        KeySet.load(path)


_SPEC_PARTS = st.one_of(
    st.sampled_from(["paper8", "random", "impulse", "scalespace8", "", "random ", "RANDOM", "8"]),
    st.integers(-(10**12), 10**12).map(str),
    st.integers(0, 12_000).map(str),
    st.text(alphabet="0123456789abc-+._ eE:", max_size=8),
)


@settings(max_examples=150, deadline=None)
@given(
    st.one_of(st.lists(_SPEC_PARTS, min_size=1, max_size=4).map(":".join), st.text(max_size=20)),
    st.one_of(st.none(), st.integers(-3, 70)),
    st.booleans(),
)
def test_any_key_spec_gives_a_key_set_or_one_clean_error(spec, kernel_size, resize):
    """Random spec strings: a valid key set of the asked size, or a MasterkeyError, never another exception."""
    if spec.strip() and Path(spec).exists():  # a spec that happens to name a real path is another test's business
        return
    try:
        keys = load_keys(spec, kernel_size=kernel_size, resize=resize)
    except MasterkeyError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert 1 <= len(keys) <= 10_000 and torch.isfinite(keys.keys).all()
    assert kernel_size is None or keys.kernel_size == kernel_size
