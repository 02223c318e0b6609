"""masterkey.jsonio: the one JSON writer writes strict JSON for any value masterkey produces (NaN / Infinity become
null and are recorded, numpy and torch values converted), its record restores the values exactly, and the parser
refuses nesting deeper than its limit before Python's parser would recurse."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from masterkey.errors import MasterkeyError
from masterkey.jsonio import MAX_DEPTH, NONFINITE_FIELD, depth, dumps, dumps_line, loads

SRC = Path(__file__).resolve().parents[1] / "src" / "masterkey"


def strict_parse(text: str):
    """A parser that refuses NaN / Infinity, as JSON.parse and jq do."""

    def refuse(token: str):
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b and type(a) is type(b)


values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**62), 2**62)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=6).filter(lambda k: k != NONFINITE_FIELD), values, max_size=5))
def test_any_document_is_strict_and_round_trips_exactly(doc):
    text = dumps(doc)
    parsed = strict_parse(text)  # never a bare NaN / Infinity
    nonfinite = parsed.pop(NONFINITE_FIELD, {})
    n_nonfinite = sum(1 for _ in _floats(doc) if not math.isfinite(_))
    assert len(nonfinite) == n_nonfinite
    assert _same(loads(text), doc)
    assert _same(loads(dumps_line(doc)), doc) and "\n" not in dumps_line(doc)


def _floats(x):
    if isinstance(x, float):
        yield x
    elif isinstance(x, dict):
        for v in x.values():
            yield from _floats(v)
    elif isinstance(x, list):
        for v in x:
            yield from _floats(v)


def test_numpy_torch_and_paths_are_converted_and_recorded():
    doc = {
        "mean": np.float32("nan"),
        "n": np.int64(3),
        "ok": np.bool_(True),
        "row": np.array([1.0, np.inf]),
        "t": torch.tensor([-math.inf, 2.0]),
        "path": Path("/runs/x"),
        "a/b": {"~c": math.nan},
    }
    parsed = strict_parse(dumps(doc))
    assert parsed == {
        "mean": None,
        "n": 3,
        "ok": True,
        "row": [1.0, None],
        "t": [None, 2.0],
        "path": "/runs/x",
        "a/b": {"~c": None},
        NONFINITE_FIELD: {"/mean": "NaN", "/row/1": "Infinity", "/t/0": "-Infinity", "/a~1b/~0c": "NaN"},
    }
    back = loads(dumps(doc))
    assert math.isnan(back["mean"]) and back["row"][1] == math.inf and back["t"][0] == -math.inf
    assert math.isnan(back["a/b"]["~c"]) and NONFINITE_FIELD not in back


def test_a_list_document_still_becomes_strict():
    assert strict_parse(dumps([1.0, math.nan])) == [1.0, None]


def test_what_cannot_be_json_is_a_bug_not_a_silent_string():
    with pytest.raises(TypeError, match="not JSON serialisable: object at /x"):
        dumps({"x": object()})
    with pytest.raises(TypeError, match="reserved"):
        dumps({NONFINITE_FIELD: 1, "y": math.nan})


def test_depth_ignores_brackets_inside_strings():
    wide = "[" + ",".join(['"[[[[", {"a": [1]}'] * 60) + "]"  # 180 brackets outside strings, nested 3 deep
    assert depth(wide) == 3
    assert depth("[" * 150 + "]" * 150) == 150
    assert depth('["' + "[" * 500 + '"]') == 1
    assert depth('["\\"' + "{" * 300 + '", {"k": "]]]]"}]') == 2  # an escaped quote does not end the string
    assert depth("7") == 0


@settings(max_examples=100, deadline=None)
@given(st.integers(MAX_DEPTH - 3, MAX_DEPTH + 3), st.sampled_from(["[", '{"k": ']))
def test_the_depth_limit_is_exact(levels, opener):
    closer = "]" if opener == "[" else "}"
    text = opener * levels + "1" + closer * levels
    if levels <= MAX_DEPTH:
        assert loads(text) is not None
    else:
        with pytest.raises(MasterkeyError, match=f"x.json: JSON nested more than {MAX_DEPTH} levels deep"):
            loads(text, "x.json")


def test_deep_or_broken_json_is_one_error_never_a_recursion_error():
    with pytest.raises(MasterkeyError, match="nested more than"):
        loads("[" * 100_000 + "]" * 100_000, "deep.json")
    with pytest.raises(MasterkeyError, match="bad.json: not valid JSON"):
        loads("{oops", "bad.json")
    assert math.isnan(loads("[NaN]")[0])  # older, non-strict files still read


def test_every_json_text_masterkey_writes_goes_through_the_one_writer():
    """No module writes JSON with json.dump(s) itself; the only other uses hash a key or quote a value in a
    message or an HTML page."""
    allowed = {
        ("jsonio.py", "dumps"),
        ("data/memory.py", "dumps"),  # a cache key's hash
        ("discover/greedy.py", "dumps"),  # a checkpoint fingerprint's hash
        ("sources/__init__.py", "dumps"),  # a harvest cache key's hash
        ("manifest.py", "dumps"),  # a value quoted in an error message
        ("report/sections/common.py", "dumps"),  # a config value shown in the report
    }
    found = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "json"
                and node.attr in ("dump", "dumps")
            ):
                found.add((str(path.relative_to(SRC)), node.attr))
    assert found <= allowed, found - allowed
