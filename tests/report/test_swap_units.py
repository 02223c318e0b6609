"""One accuracy unit in swap runs: percent written, percent read; older swap runs (fractions) still read, converted
with a one-line note."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from masterkey.report.runs import load_run
from masterkey.runformats import ACCURACY_UNIT, run_format


def _as_old_run(new: Path, old: Path) -> Path:
    """``new`` rewritten as masterkey wrote swap runs before percent: fractions and the old unit string."""
    shutil.copytree(new, old)
    swap = run_format("swap")
    for name in ("results.csv", "summary.csv", "sensitivity.csv"):
        table = pd.read_csv(old / name)
        for col in swap.file(name).percent:
            if col in table:
                table[col] = table[col] / 100
        table.to_csv(old / name, index=False)
    data = json.loads((old / "results.json").read_text())
    data["accuracy_unit"] = "top1, top5, delta_top1, drop and their ci95 are fractions (0.823 = 82.3%)"
    data.pop("units")
    (old / "results.json").write_text(json.dumps(data))
    return old


def test_swap_runs_are_written_in_percent_and_older_fraction_runs_still_read(run_dirs, tmp_path: Path) -> None:
    new = run_dirs["swap"]
    data = json.loads((new / "results.json").read_text())
    assert data["accuracy_unit"] == ACCURACY_UNIT == "percent"
    assert data["units"]["delta_top1"].startswith("percentage points")
    results = pd.read_csv(new / "results.csv")
    assert results["top1"].iloc[0] > 1  # percent, not a fraction
    # A whole number of images out of 20: 5.0, 60.0 ..., never 0.6000000238418579.
    assert all(float(v) * 20 / 100 == round(float(v) * 20 / 100) for v in results["top1"])
    assert all(len(str(v)) <= 6 for v in results["top1"])

    fresh = load_run(new)
    old = load_run(_as_old_run(new, tmp_path / "old"))
    note = "an older swap run: its accuracies were stored as fractions, shown here in percent"
    assert note in old.run.notes and note not in fresh.run.notes
    for field in ("results", "summary", "sensitivity"):
        a, b = getattr(fresh, field), getattr(old, field)
        for col in ("top1", "top5", "delta_top1", "drop", "top1_ci95"):
            if col in a:
                assert b[col].tolist() == pytest.approx(a[col].tolist(), nan_ok=True), (field, col)


def test_differences_of_percentages_carry_no_float_noise() -> None:
    """28.0 - 85.1 is -57.099999999999994 in floating point; swap files say -57.1 (and exact values stay exact)."""
    from masterkey.swap.results import points

    assert repr(points(28.0, 85.1)) == "-57.1"
    assert points(82.3, 82.3) == 0.0 and points(100 / 3, 0) == round(100 / 3, 10)
