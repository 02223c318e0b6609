"""masterkey cache info|clear on a cache filled by the real image decoder."""

from __future__ import annotations

import json
from pathlib import Path

from masterkey.cli import main
from masterkey.data.memory import load_image_folder


def test_info_lists_what_the_decoder_cached_and_clear_removes_only_cache_entries(
    shared: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("MASTERKEY_CACHE", str(cache))
    images = load_image_folder(shared / "data" / "cifar10" / "test", max_per_class=2)
    assert main(["cache", "info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["cache"] == str(cache)
    assert [e["shape"] for e in info["entries"]] == [" x ".join(map(str, images.images.shape))]
    assert info["bytes"] == sum(p.stat().st_size for p in (cache / "images").iterdir())

    keep = cache / "images" / "notes.txt"  # not written by masterkey: never deleted
    keep.write_text("mine")
    assert main(["cache", "clear"]) == 0
    assert "removed 1 cache entries" in capsys.readouterr().out
    assert [p.name for p in (cache / "images").iterdir()] == ["notes.txt"]
    assert main(["cache", "info"]) == 0
    assert "0 entries, 0 B" in capsys.readouterr().out


def test_info_on_a_cache_that_does_not_exist_yet(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("MASTERKEY_CACHE", str(tmp_path / "nowhere"))
    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert "(not created yet)" in out and "0 entries" in out
    assert not (tmp_path / "nowhere").exists()
