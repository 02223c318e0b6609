import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from masterkey.bank import FilterBank, open_bank, write_bank
from masterkey.errors import MasterkeyError
from masterkey.sources import HarvestedLayer, HarvestedSource


def _source(name: str, sizes: list[tuple[int, int]], seed: int = 0) -> HarvestedSource:
    gen = torch.Generator().manual_seed(seed)
    layers = [
        HarvestedLayer(f"stages.{i}.blocks.0.conv_dw", torch.randn(c, 1, k, k, generator=gen))
        for i, (c, k) in enumerate(sizes)
    ]
    return HarvestedSource(name, "module", layers, sha256=f"{name}-{seed}")


def test_write_open_round_trip(tmp_path):
    src = _source("a", [(4, 3), (6, 7), (5, 3)])
    bank = write_bank([src], tmp_path / "b")
    again = FilterBank.open(tmp_path / "b")
    assert len(again) == 15 and again.counts_by_kernel() == {3: 9, 7: 6}
    assert torch.equal(again.filters(3), torch.cat([src.layers[0].weight[:, 0], src.layers[2].weight[:, 0]]))
    meta = bank.metadata
    assert meta["stage"].tolist()[:4] == [0] * 4 and meta["depth"].iloc[-1] == 1.0
    raw = src.layers[1].weight[2, 0]
    row = meta[(meta["layer_index"] == 1) & (meta["channel"] == 2)].iloc[0]
    assert row["raw_norm"] == pytest.approx(float(raw.norm()), rel=1e-5)
    assert row["raw_mean"] == pytest.approx(float(raw.mean()), abs=1e-6)
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["counts_by_kernel"] == {"3": 9, "7": 6} and manifest["schema_version"] == 1


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 300), st.integers(1, 64), st.integers(0, 2**16))
def test_lazy_chunks_equal_a_full_read_for_any_view(n, chunk, seed):
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        bank = write_bank([_source("a", [(n, 5)], seed)], f"{tmp}/b")
        rng = np.random.default_rng(seed)
        view = bank.select(rng.random(n) < 0.3) if n > 3 else bank
        full = view.filters(5)
        parts = list(view.iter_filters(5, chunk_size=chunk))
        assert all(len(block) <= chunk for _, block in parts)
        if len(view):
            assert torch.equal(torch.cat([b for _, b in parts]), full)
            expected = bank.filters(5)[torch.from_numpy(view.metadata["index"].to_numpy().copy())]
            assert torch.equal(full, expected)


def test_query_save_and_merge(tmp_path):
    a = write_bank([_source("a", [(4, 3), (6, 7)])], tmp_path / "a")
    b = write_bank([_source("b", [(3, 7)], seed=1)], tmp_path / "b")
    merged = FilterBank.merge([a, b], tmp_path / "ab")
    assert merged.counts_by_kernel() == {3: 4, 7: 9} and merged.sources == ["a", "b"]
    assert torch.equal(merged.query("source == 'b'").filters(7), b.filters(7))
    sub = merged.query("kernel_size == 7 and channel < 2").save(tmp_path / "sub")
    assert len(sub) == 4 and [s["name"] for s in sub.manifest["sources"]] == ["a", "b"]
    with pytest.raises(MasterkeyError, match="same file.*twice"):
        FilterBank.merge([a, a], tmp_path / "aa")
    with pytest.raises(MasterkeyError, match="invalid bank query"):
        merged.query("no_such_column > 1")
    with pytest.raises(MasterkeyError, match="already exists"):
        FilterBank.merge([a, b], tmp_path / "ab")


def test_same_name_different_source_is_renamed(tmp_path):
    a = write_bank([_source("x", [(2, 3)], seed=0)], tmp_path / "a")
    b = write_bank([_source("x", [(2, 3)], seed=1)], tmp_path / "b")
    assert FilterBank.merge([a, b], tmp_path / "ab").sources == ["x", "x#2"]


def test_default_bank_counts():
    bank = open_bank(None)
    assert bank.counts_by_kernel() == {3: 9760, 5: 6336, 7: 9568}
    assert len(bank.sources) == 7 and bank.excluded_counts()["zero"] == 65
    assert bank.query("source == 'mobilenet_v2_imagenet'").metadata["layer"].nunique() == 17


def test_corruption_is_detected(tmp_path):
    write_bank([_source("a", [(8, 3)])], tmp_path / "b")
    tensor = tmp_path / "b" / "filters_k3.safetensors"
    data = tensor.read_bytes()
    tensor.write_bytes(data[:-8])
    with pytest.raises(MasterkeyError, match=r"filters_k3.safetensors: \d+ bytes, the manifest says"):
        FilterBank.open(tmp_path / "b")
    flipped = bytearray(data)
    flipped[-3] ^= 0xFF
    tensor.write_bytes(bytes(flipped))
    with pytest.raises(MasterkeyError, match="checksum mismatch"):
        FilterBank.open(tmp_path / "b")
    tensor.write_bytes(data)
    FilterBank.open(tmp_path / "b")
    (tmp_path / "b" / "manifest.json").write_text("{not json")
    with pytest.raises(MasterkeyError, match="corrupt manifest"):
        FilterBank.open(tmp_path / "b")
    with pytest.raises(MasterkeyError, match="not a filter bank"):
        FilterBank.open(tmp_path)
    with pytest.raises(MasterkeyError, match="no such bank"):
        FilterBank.open(tmp_path / "nope")


def test_metadata_row_count_must_match_tensors(tmp_path):
    import pyarrow.parquet as pq

    from masterkey.files import sha256_file

    bank_dir = tmp_path / "b"
    write_bank([_source("a", [(8, 3)])], bank_dir)
    table = pq.read_table(bank_dir / "metadata.parquet").slice(0, 5)
    pq.write_table(table, bank_dir / "metadata.parquet")
    manifest = json.loads((bank_dir / "manifest.json").read_text())
    manifest["files"]["metadata.parquet"] = {
        "bytes": (bank_dir / "metadata.parquet").stat().st_size,
        "sha256": sha256_file(bank_dir / "metadata.parquet"),
    }
    manifest["n_filters"] = 5
    (bank_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(MasterkeyError, match=r"holds 8 filters .* metadata lists 5"):
        FilterBank.open(bank_dir)


def test_writing_is_deterministic(tmp_path):
    write_bank([_source("a", [(8, 3), (4, 5)])], tmp_path / "one")
    write_bank([_source("a", [(8, 3), (4, 5)])], tmp_path / "two")
    for name in ("filters_k3.safetensors", "filters_k5.safetensors", "metadata.parquet", "manifest.json"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_the_same_weights_twice_are_refused_and_equal_names_renamed(tmp_path):
    a = _source("x", [(2, 3)], seed=0)
    with pytest.raises(MasterkeyError, match="given twice"):
        write_bank([a, a], tmp_path / "twice")
    bank = write_bank([a, _source("x", [(2, 3)], seed=1)], tmp_path / "renamed")
    assert bank.sources == ["x", "x#2"]
