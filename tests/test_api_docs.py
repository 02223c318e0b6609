"""The API reference builds from the docstrings (every pdoc warning an error), covering the library's modules."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "api_docs.py"


@pytest.mark.slow
def test_the_api_reference_builds_and_links_across_modules(tmp_path: Path) -> None:
    pytest.importorskip("pdoc")
    spec = importlib.util.spec_from_file_location("api_docs", SCRIPT)
    api_docs = importlib.util.module_from_spec(spec)
    sys.modules["api_docs"] = api_docs
    spec.loader.exec_module(api_docs)
    specs = api_docs.module_specs()
    assert specs[0] == "masterkey" and not any(s.startswith(api_docs.CLI_MODULES) for s in specs)
    start = api_docs.build(tmp_path)
    assert start.is_file()
    pages = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.html")}
    for page in (
        "masterkey/nn/convert.html",
        "masterkey/nn/modes.html",
        "masterkey/swap/save.html",
        "masterkey/bank.html",
    ):
        assert page in pages, page
    assert not any(p.startswith("masterkey/commands") for p in pages)
    convert = (tmp_path / "masterkey" / "nn" / "convert.html").read_text()
    assert '<a href="../nn.html#KeyKernel">masterkey.nn.layers.KeyKernel</a>' in convert  # a Sphinx role, linked
    assert ":class:" not in convert and "~masterkey" not in convert
