"""Plain-text tables as commands print them."""

from __future__ import annotations

from masterkey.tables import format_table


def test_numbers_align_right_and_text_left() -> None:
    rows = [
        {"source": "mobilenetv2", "n": 9742, "mean_cos2": 0.71234, "note": None},
        {"source": "lite0", "n": 12, "mean_cos2": float("nan"), "note": "flagged"},
    ]
    assert format_table(rows).splitlines() == [
        "source           n  mean_cos2  note",
        "-----------  -----  ---------  -------",
        "mobilenetv2  9,742      0.712",
        "lite0           12          -  flagged",
    ]


def test_columns_and_digits_are_chosen_by_the_caller() -> None:
    rows = [{"a": 1.23456, "b": "x", "c": 3}]
    assert format_table(rows, ["c", "a"], digits=1).splitlines() == ["c    a", "-  ---", "3  1.2"]


def test_a_column_missing_from_a_row_is_blank_and_no_rows_say_so() -> None:
    assert format_table([{"a": "x"}, {"b": 2}], ["a", "b"]).splitlines()[2:] == ["x", "   2"]
    assert format_table([]) == "(none)"
