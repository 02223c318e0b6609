"""Report sections: accuracies in percent with a % in their name, whole configs, discovered-key labels."""

from __future__ import annotations

import pandas as pd
import pytest

from masterkey.keys import KeySet, load_keys
from masterkey.report.sections.common import is_accuracy, percent_columns
from masterkey.report.sections.discover import discovered_key_labels


def test_accuracies_are_percent_and_say_so() -> None:
    swap = pd.DataFrame(
        {"keys": ["none", "paper8"], "top1": [0.823, 0.41], "top1_ci95": [None, 0.02], "mean_cos2": [1.0, 0.69]}
    )
    out = percent_columns(swap, fractions=True)
    assert list(out.columns) == ["keys", "top1 %", "top1_ci95 %", "mean_cos2"]
    assert out["top1 %"].tolist() == pytest.approx([82.3, 41.0]) and out["top1_ci95 %"].iloc[1] == pytest.approx(2.0)
    assert out["mean_cos2"].tolist() == [1.0, 0.69]  # not an accuracy: left alone
    trained = pd.DataFrame({"epoch": [1], "train_acc": [3.3], "test_top1": [15.0], "ci95": [1.5]})
    out = percent_columns(trained, fractions=False, extra=("ci95",))
    assert list(out.columns) == ["epoch", "train_acc %", "test_top1 %", "ci95 %"] and out["test_top1 %"].iloc[0] == 15
    assert [is_accuracy(n) for n in ("best_test_top1", "delta_top1", "drop", "mean_cos2", "top1_ci95")] == [
        True,
        True,
        True,
        False,
        False,  # a CI goes with its accuracy column, not on its own
    ]


def test_discovered_keys_are_labelled_by_their_share_of_filters() -> None:
    paper8 = load_keys("paper8")
    assert discovered_key_labels(paper8) == paper8.key_labels()  # no shares recorded: the set's own labels
    shares = [0.4, 0.35, 0.25]
    found = KeySet("found", paper8.keys[:3], provenance={"shares": shares})
    assert discovered_key_labels(found) == ["1: 40.0% of filters", "2: 35.0% of filters", "3: 25.0% of filters"]


def test_sections_drawn_side_by_side_are_those_drawn_one_after_another(run_dirs) -> None:
    """``jobs`` forked processes draw the same sections, figures byte for byte, returned in the runs' order (the
    fit run, drawn first, is given second)."""
    from masterkey.report import load_run
    from masterkey.report.html import render_markdown
    from masterkey.report.sections import ReportOptions, build_sections

    runs = [load_run(run_dirs[kind]) for kind in ("swap", "fit", "train")]
    one = build_sections(runs, ReportOptions(samples=2))
    two = build_sections(runs, ReportOptions(samples=2, jobs=2))
    assert [s.kind for s in two] == ["swap", "fit", "train"] and [s.anchor for s in two] == [s.anchor for s in one]
    assert [s.notes for s in two] == [s.notes for s in one]
    assert render_markdown(two, "t", "now") == render_markdown(one, "t", "now")
    figures = [[b.png for b in s.blocks if hasattr(b, "png")] for s in (*one, *two)]
    assert figures[:3] == figures[3:] and all(figures)


def test_only_fit_and_explain_sections_load_torch(run_dirs, tmp_path) -> None:
    """Key sets are read as numbers and torch loads only for the sections that compute with it: a report of the
    other kinds (drawn side by side) never imports it; one with a fit run does, once, before the fork. Both
    reports are built by one fresh process, the one without a fit run first."""
    import json
    import subprocess
    import sys

    code = (
        "import json, sys\n"
        "from masterkey.report import build_report\n"
        "from masterkey.report.sections import ReportOptions\n"
        "loaded = []\n"
        "for out, runs in json.loads(sys.argv[1]):\n"
        "    build_report(runs, out, options=ReportOptions(samples=1, jobs=2))\n"
        "    loaded.append('torch' in sys.modules)\n"
        "print(json.dumps(loaded))\n"
    )
    reports = [
        (str(tmp_path / "without"), [str(run_dirs[k]) for k in ("discover", "swap", "train", "experiment")]),
        (str(tmp_path / "with"), [str(run_dirs[k]) for k in ("train", "fit")]),
    ]
    argv = [sys.executable, "-c", code, json.dumps(reports)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [False, True]
