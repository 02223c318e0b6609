"""The metadata query language (masterkey.query): it selects exactly the rows pandas' own query selects for every
query of the grammar, and it refuses everything outside the grammar without running any of it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from masterkey.bank import open_bank
from masterkey.errors import MasterkeyError
from masterkey.query import MAX_DEPTH, MAX_QUERY_LENGTH, evaluate, parse

FRAME = pd.DataFrame(
    {
        "kernel_size": np.array([3, 5, 7, 7, 3, 7], dtype=np.int16),
        "stage": np.array([0, 1, 2, 3, -1, 2], dtype=np.int16),
        "depth": np.array([0.0, 0.25, 0.5, 0.75, 1.0, np.nan], dtype=np.float32),
        "source": ["a", "b", "a", "c", "b", "a"],
        "layer": ["s0", "s1", "s2", "s3", "x", "s2"],
    }
)
NUMERIC = ("kernel_size", "stage", "depth")
TEXT = ("source", "layer")
OPS = ("==", "!=", "<", "<=", ">", ">=")

numbers = st.one_of(st.integers(-3, 9), st.sampled_from([0.25, 0.5, 1.0, -0.5, 2.5]))
texts = st.sampled_from(["a", "b", "c", "s2", "x", "zz"])


def _literal(value: object) -> str:
    return repr(value)


@st.composite
def comparisons(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        column, values = draw(st.sampled_from(NUMERIC)), numbers
    else:
        column, values = draw(st.sampled_from(TEXT)), texts
    form = draw(st.integers(0, 4))
    if form == 0:
        return f"{column} {draw(st.sampled_from(OPS))} {_literal(draw(values))}"
    if form == 1:
        return f"{_literal(draw(values))} {draw(st.sampled_from(OPS))} {column}"
    if form == 2:
        items = ", ".join(_literal(v) for v in draw(st.lists(values, min_size=1, max_size=4)))
        return f"{column} {draw(st.sampled_from(['in', 'not in']))} [{items}]"
    if form == 3 and column in NUMERIC:
        low, high = sorted([draw(st.integers(-2, 8)), draw(st.integers(-2, 8))])
        return f"{low} {draw(st.sampled_from(['<', '<=']))} {column} {draw(st.sampled_from(['<', '<=']))} {high}"
    other = draw(st.sampled_from(NUMERIC if column in NUMERIC else TEXT))
    return f"{column} {draw(st.sampled_from(['==', '!=']))} {other}"


queries = st.recursive(
    comparisons(),
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(["and", "or", "&", "|"]), inner).map(lambda t: f"({t[0]}) {t[1]} ({t[2]})"),
        inner.map(lambda q: f"not ({q})"),
        inner.map(lambda q: f"~({q})"),
        st.tuples(inner, inner).map(lambda t: f"{t[0]} and {t[1]}" if "or" not in t[0] + t[1] else f"({t[0]})"),
    ),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None)
@given(queries)
def test_the_grammar_selects_what_pandas_selects(text):
    ours = evaluate(text, FRAME)
    theirs = FRAME.eval(text, engine="python")
    theirs = np.broadcast_to(np.asarray(theirs, dtype=bool), (len(FRAME),))
    assert ours.dtype == bool and ours.tolist() == theirs.tolist(), text


@pytest.mark.parametrize(
    ("text", "rows"),
    [
        ("kernel_size == 7", [2, 3, 5]),
        ("kernel_size in [3, 5]", [0, 1, 4]),
        ("kernel_size not in (3, 5)", [2, 3, 5]),
        ("1 <= stage < 3", [1, 2, 5]),
        ("source == 'a' and not stage == 0", [2, 5]),
        ('source == "b" or depth > 0.6', [1, 3, 4]),
        ("depth != 0.5", [0, 1, 3, 4, 5]),  # NaN is unequal to everything, as in pandas
        ("(stage) >= 2 & kernel_size == 7", [2, 3, 5]),
        ("stage > -1", [0, 1, 2, 3, 5]),
        ("layer < 's2'", [0, 1]),
        ("kernel_size in []", []),
    ],
)
def test_queries_select_the_right_rows(text, rows):
    assert np.flatnonzero(evaluate(text, FRAME)).tolist() == rows


INJECTIONS = [
    "@self.path.joinpath('metadata.parquet').unlink() is None",
    "kernel_size == 7 and @self.path.parent.joinpath('x.txt').write_text('owned') > 0",
    "__import__('os').system('touch owned')",
    "kernel_size.__class__ == 1",
    "source.str.startswith('convnext')",
    "kernel_size == 7 or (lambda: 1)()",
    "kernel_size[0] == 7",
    "open('x', 'w')",
    "kernel_size == 7; import os",
]


@pytest.mark.parametrize("text", INJECTIONS)
def test_code_is_refused_while_parsing(text):
    with pytest.raises(MasterkeyError, match="invalid query"):
        parse(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kernel_size", "the column 'kernel_size' alone is not a condition"),
        ("7", "the value 7 alone is not a condition"),
        ("True", "the value True alone is not a condition"),
        ("kernel_size == 7 and stage", "the column 'stage' alone is not a condition"),
        ("1 == 1", "a comparison needs a column"),
        ("stage + 1 > 2", "no arithmetic"),
        ("stage - 1 > 2", "no arithmetic"),
        ("", "it is empty"),
        ("   ", "it is empty"),
        ("kernel_size ==", "it ends where a column or value was expected"),
        ("(kernel_size == 7", "expected ')'"),
        ("kernel_size == 7)", "unexpected ')'"),
        ("kernel_size in 7", "'in' takes a list"),
        ("3 in [3]", "the left side of 'in' must be a column"),
        ("kernel_size in [stage]", "expected a column or a value, found 'stage'"),
        ("kernel_size == 'seven'", "kernel_size holds numbers; compare it with a number, not 'seven'"),
        ("source > 3", "source holds text; compare it with quoted text"),
        ("source == stage", "source holds text but stage does not"),
        ("source in ['a', 3]", "source holds text"),
        ("nothing == 1", "no column 'nothing' (the columns are: kernel_size, stage, depth, source, layer)"),
    ],
)
def test_what_is_not_a_condition_is_one_clear_error(text, message):
    with pytest.raises(MasterkeyError, match="invalid query") as info:
        evaluate(text, FRAME)
    assert message in str(info.value)


def test_length_and_depth_are_bounded():
    with pytest.raises(MasterkeyError, match=f"more than {MAX_QUERY_LENGTH:,}"):
        parse("stage == 1 or " * 1000 + "stage == 2")
    deep = "(" * (MAX_DEPTH + 1) + "stage == 1" + ")" * (MAX_DEPTH + 1)
    with pytest.raises(MasterkeyError, match=f"nested more than {MAX_DEPTH} levels"):
        parse(deep)
    with pytest.raises(MasterkeyError, match="nested more than"):
        parse("not " * 2000 + "stage == 1")
    ok = "(" * (MAX_DEPTH - 2) + "stage == 1" + ")" * (MAX_DEPTH - 2)
    assert evaluate(ok, FRAME).tolist() == (FRAME["stage"] == 1).tolist()


def test_the_bank_query_uses_the_grammar():
    bank = open_bank(None)
    view = bank.query("kernel_size == 7 and stage >= 2")
    meta = bank.metadata
    expected = meta[(meta["kernel_size"] == 7) & (meta["stage"] >= 2)]
    assert len(view) == len(expected) > 0
    assert view.metadata["index"].tolist() == expected["index"].tolist()
    with pytest.raises(MasterkeyError, match="alone is not a condition"):
        bank.query("kernel_size")
    with pytest.raises(MasterkeyError, match="@ names are not part"):
        bank.query("@self.path.exists() == True")
