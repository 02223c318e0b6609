import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from masterkey.bank import FilterBank, open_bank, write_bank
from masterkey.errors import MasterkeyError
from masterkey.normalize import FilterFlag
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
    with pytest.raises(MasterkeyError, match="invalid query"):
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
    with pytest.raises(MasterkeyError, match="manifest.json: not valid JSON"):
        FilterBank.open(tmp_path / "b")
    with pytest.raises(MasterkeyError, match="not a filter bank"):
        FilterBank.open(tmp_path)
    with pytest.raises(MasterkeyError, match="no such bank"):
        FilterBank.open(tmp_path / "nope")


def _resign(bank_dir, manifest=None):
    """What a careful forger does: record the current size and sha256 of every data file in the manifest."""
    from masterkey.files import sha256_file

    manifest = manifest or json.loads((bank_dir / "manifest.json").read_text())
    for name in manifest["files"]:
        manifest["files"][name] = {"bytes": (bank_dir / name).stat().st_size, "sha256": sha256_file(bank_dir / name)}
    (bank_dir / "manifest.json").write_text(json.dumps(manifest))


def test_metadata_row_count_must_match_tensors(tmp_path):
    import pyarrow.parquet as pq

    bank_dir = tmp_path / "b"
    write_bank([_source("a", [(8, 3)])], bank_dir)
    table = pq.read_table(bank_dir / "metadata.parquet").slice(0, 5)
    pq.write_table(table, bank_dir / "metadata.parquet")
    manifest = json.loads((bank_dir / "manifest.json").read_text())
    manifest.update(n_filters=5, counts_by_kernel={"3": 5})
    manifest["sources"][0]["n_filters"] = 5
    _resign(bank_dir, manifest)  # every count agrees with the table, but the tensor file still holds 8 filters
    with pytest.raises(MasterkeyError, match=r"shape \[8, 3, 3\] but the metadata lists 5 3x3"):
        FilterBank.open(bank_dir)


def test_a_resigned_bank_with_altered_metadata_is_still_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    bank_dir = tmp_path / "b"
    write_bank([_source("a", [(6, 3), (4, 5)])], bank_dir)
    table = pq.read_table(bank_dir / "metadata.parquet")
    index = table.column("index").to_pylist()
    swapped = table.set_column(table.schema.get_field_index("index"), "index", pa.array(index[::-1], pa.int64()))
    pq.write_table(swapped, bank_dir / "metadata.parquet")
    _resign(bank_dir)
    with pytest.raises(MasterkeyError, match="index column of the 3x3 filters is not 0..5 in order"):
        FilterBank.open(bank_dir)
    retyped = table.set_column(table.schema.get_field_index("stage"), "stage", table.column("stage").cast(pa.int64()))
    pq.write_table(retyped, bank_dir / "metadata.parquet")
    _resign(bank_dir)
    with pytest.raises(MasterkeyError, match="column stage is int64, expected int16"):
        FilterBank.open(bank_dir)


def test_bank_files_must_stay_inside_the_bank(tmp_path):
    bank_dir = tmp_path / "b"
    write_bank([_source("a", [(4, 3)])], bank_dir)
    outside = tmp_path / "elsewhere.safetensors"
    (bank_dir / "filters_k3.safetensors").rename(outside)
    (bank_dir / "filters_k3.safetensors").symlink_to(outside)
    with pytest.raises(MasterkeyError, match="a link that leads outside the bank directory"):
        FilterBank.open(bank_dir)


def _valid_manifest_and_bank(tmp) -> tuple[dict, object]:
    from pathlib import Path

    bank_dir = Path(tmp) / "b"
    write_bank([_source("a", [(5, 3), (3, 5)]), _source("b", [(2, 3)], seed=1)], bank_dir)
    return json.loads((bank_dir / "manifest.json").read_text()), bank_dir


#: Manifest fields that only describe provenance: changing them within their type is not corruption.
_FREE = {("package_version",), ("sources", "kind"), ("sources", "model"), ("sources", "path"), ("sources", "sha256")}
_FREE |= {("sources", "n_layers"), ("sources", "skipped")}
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 10**6) | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=120, deadline=None)
@given(st.data())
def test_any_altered_manifest_is_refused_or_harmless(data):
    """Random edits of a valid manifest (a field deleted, replaced by any JSON value, or added): opening the bank
    gives a bank or one MasterkeyError, never another exception; an edit of anything but provenance is refused."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        original, bank_dir = _valid_manifest_and_bank(tmp)
        manifest = json.loads(json.dumps(original))
        where = data.draw(st.sampled_from(["top", "source", "file", "count", "excluded"]))
        container, path = {
            "top": (manifest, ()),
            "source": (manifest["sources"][data.draw(st.integers(0, 1))], ("sources",)),
            "file": (manifest["files"][data.draw(st.sampled_from(sorted(manifest["files"])))], ("files",)),
            "count": (manifest["counts_by_kernel"], ("counts_by_kernel",)),
            "excluded": (manifest["excluded"], ("excluded",)),
        }[where]
        action = data.draw(st.sampled_from(["delete", "replace", "add"]))
        key = data.draw(st.sampled_from(sorted(container))) if action != "add" else data.draw(st.text(max_size=8))
        if action == "delete":
            del container[key]
        else:
            container[key] = data.draw(_JSON)
        (Path(bank_dir) / "manifest.json").write_text(json.dumps(manifest))
        try:
            FilterBank.open(bank_dir)
        except MasterkeyError as exc:
            assert "\n" not in str(exc)
            return
        changed = manifest != original
        assert not changed or (*path, key) in _FREE, f"accepted a bank whose manifest {where}.{key} was altered"


@settings(max_examples=60, deadline=None)
@given(_JSON)
def test_any_json_document_as_manifest_is_refused(document):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        _, bank_dir = _valid_manifest_and_bank(tmp)
        (Path(bank_dir) / "manifest.json").write_text(json.dumps(document))
        with pytest.raises(MasterkeyError, match="manifest.json"):
            FilterBank.open(bank_dir)


def test_validate_manifest_accepts_what_the_writer_writes(tmp_path):
    from masterkey.bank import validate_manifest

    original, _ = _valid_manifest_and_bank(tmp_path)
    assert validate_manifest(original) is original
    default = json.loads((open_bank(None).path / "manifest.json").read_text())
    assert validate_manifest(default)["n_filters"] == 25_664


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


def test_metadata_rows_are_bounded_before_they_are_decoded(tmp_path):
    """A metadata table with more rows than the manifest lists (its checksum updated to match) is refused from the
    Parquet footer, before a row is decoded: a few bytes of run-length-encoded Parquet can decode to billions."""
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    write_bank([_source("a", [(8, 3)])], tmp_path / "b")
    meta = tmp_path / "b" / "metadata.parquet"
    table = pq.read_table(meta)
    pq.write_table(pa.concat_tables([table] * 1000), meta)
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    manifest["files"]["metadata.parquet"] = {
        "bytes": meta.stat().st_size,
        "sha256": hashlib.sha256(meta.read_bytes()).hexdigest(),
    }
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(manifest))
    decoded = []
    real_read = pq.ParquetFile.read
    pq.ParquetFile.read = lambda self, *a, **k: decoded.append(1) or real_read(self, *a, **k)
    try:
        with pytest.raises(MasterkeyError, match=r"metadata.parquet: 8,000 rows, the manifest says 8"):
            FilterBank.open(tmp_path / "b")
    finally:
        pq.ParquetFile.read = real_read
    assert decoded == []


def test_an_older_bank_with_a_flags_column_still_reads(tmp_path: Path) -> None:
    """The filter flags column is ``filter_flags`` (``flags`` shadowed pandas' ``DataFrame.flags``, so
    ``m[m.flags != 0]`` raised); a bank written before still opens, its column renamed, with a one-line note."""
    import hashlib
    import logging
    import shutil

    import pyarrow.parquet as pq

    from masterkey.bank import default_bank_path

    new = open_bank(None)
    meta = new.metadata
    assert "flags" not in meta.columns
    zero = meta[(meta.filter_flags & int(FilterFlag.ZERO)) != 0]  # attribute access works: no pandas clash
    assert len(zero) == 65
    old = Path(shutil.copytree(default_bank_path(), tmp_path / "old"))
    table = pq.read_table(old / "metadata.parquet")
    table = table.rename_columns(["flags" if c == "filter_flags" else c for c in table.column_names])
    pq.write_table(table, old / "metadata.parquet")
    manifest = json.loads((old / "manifest.json").read_text())
    data = (old / "metadata.parquet").read_bytes()
    manifest["files"]["metadata.parquet"].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    (old / "manifest.json").write_text(json.dumps(manifest))
    notes: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: notes.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("masterkey")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        older = open_bank(str(old))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert older.metadata["filter_flags"].tolist() == meta["filter_flags"].tolist()
    assert notes == [f"{old}: an older bank: its 'flags' column is read as filter_flags"]
    assert older.excluded_counts() == new.excluded_counts() and len(older.usable()) == len(new.usable())
