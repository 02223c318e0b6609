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


def test_markdown_tables_show_gapped_integers_small_numbers_and_booleans() -> None:
    import pandas as pd

    from masterkey.tables import markdown_table, table_cells

    table = pd.DataFrame({"seed": [1.0, None, 3.0], "x": [0.00012, 1.5, 2500.0], "ok": [True, False, True]})
    assert markdown_table(table).splitlines() == [
        "| seed | x | ok |",
        "|---:|---:|:---|",
        "| 1 | 1.20e-04 | yes |",
        "| – | 1.500 | no |",
        "| 3 | 2,500 | yes |",
    ]
    assert table_cells(table, {"x": 1})[1] == ["–", "1.5", "no"]  # digits per column, 3 for the others


def test_tables_load_without_pandas() -> None:
    """Commands print ``format_table`` on start-up paths that must not pay for pandas."""
    import subprocess
    import sys

    code = "import sys, masterkey.tables; print('pandas' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
