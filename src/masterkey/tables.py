"""Tables as text: plain-text tables (what commands print on the terminal and what ``summary.md`` files quote in code
blocks), Markdown pipe tables, and the cell formatting the report's HTML tables share with them."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pandas loads only where a table of it is formatted: commands print format_table without it
    import pandas as pd

__all__ = ["cell_text", "format_table", "markdown_table", "md_escape", "numeric_columns", "table_cells"]


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, digits: int = 3) -> str:
    """Plain-text table with right-aligned numbers."""
    if not rows:
        return "(none)"
    columns = list(columns or rows[0].keys())

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.{digits}f}" if v == v else "-"
        if isinstance(v, int) and not isinstance(v, bool):
            return f"{v:,}"
        return "" if v is None else str(v)

    body = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(columns)]
    numeric = [all(isinstance(r.get(c), (int, float)) for r in rows) for c in columns]

    def line(values: Sequence[str]) -> str:
        cells = (v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True))
        return "  ".join(cells).rstrip()

    return "\n".join([line(columns), line(["-" * w for w in widths]), *(line(b) for b in body)]).rstrip()


# ---------------------------------------------------------------------- cells of DataFrames (Markdown and HTML)
def cell_text(value: Any, digits: int) -> str:
    """One value as a table shows it: ``–`` for None and NaN, yes / no, thousands separators, ``digits`` decimals
    (scientific notation for numbers too small to show)."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if value.is_integer() and abs(value) >= 1000:
            return f"{int(value):,}"
        if value != 0 and abs(value) < 10 ** (1 - digits):
            return f"{value:.2e}"  # small numbers (learning rates) keep their significant digits
        return f"{value:.{digits}f}"
    if hasattr(value, "item"):  # numpy scalars
        return cell_text(value.item(), digits)
    return str(value)


def _whole_numbers(column: pd.Series) -> bool:
    """A float column holding only whole numbers (and gaps): integers that a missing value made float."""
    import pandas as pd

    if not pd.api.types.is_float_dtype(column) or not column.isna().any():
        return False
    values = column.dropna().to_numpy()
    return bool(len(values)) and bool((values == values.round()).all()) and bool((abs(values) < 2**53).all())


def table_cells(table: pd.DataFrame, digits: int | Mapping[str, int]) -> list[list[str]]:
    """Formatted cells; ``digits`` is one number or a per-column mapping (3 for columns it does not name). Float
    columns of whole numbers with gaps (a ``round`` or ``seed`` column with missing values) show as integers."""
    per_column = [digits.get(str(c), 3) if isinstance(digits, Mapping) else digits for c in table.columns]
    whole = [_whole_numbers(table[c]) for c in table.columns]
    return [
        [
            cell_text(int(v), d) if w and isinstance(v, float) and not math.isnan(v) else cell_text(v, d)
            for v, d, w in zip(row, per_column, whole, strict=True)
        ]
        for row in table.itertuples(index=False, name=None)
    ]


def numeric_columns(table: pd.DataFrame) -> list[bool]:
    """Per column of ``table``: whether it holds numbers (not booleans), which tables align right."""
    import pandas as pd

    return [pd.api.types.is_numeric_dtype(table[c]) and not pd.api.types.is_bool_dtype(table[c]) for c in table.columns]


# ---------------------------------------------------------------------- Markdown
def md_escape(text: str) -> str:
    """``text`` safe inside a Markdown table cell (pipes escaped, on one line)."""
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(table: pd.DataFrame, digits: int | Mapping[str, int] = 3) -> str:
    """A GitHub pipe table (numbers right-aligned)."""
    numeric = numeric_columns(table)
    head = "| " + " | ".join(md_escape(str(c)) for c in table.columns) + " |"
    rule = "|" + "|".join("---:" if num else ":---" for num in numeric) + "|"
    body = ["| " + " | ".join(md_escape(v) for v in row) + " |" for row in table_cells(table, digits)]
    return "\n".join([head, rule, *body])
