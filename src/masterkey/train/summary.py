"""Experiment statistics: mean ± 95% confidence intervals (Student t over seeds) per arm, paired differences to the
reference arm, the data-efficiency table of a sweep over training-set sizes, and the files that hold them
(``summary.csv`` / ``.json`` / ``.md``, ``curves.png``; ``efficiency.csv`` / ``.md`` / ``.png`` in a sweep).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from masterkey.errors import MasterkeyError
from masterkey.files import atomic_write, write_json, write_text
from masterkey.jsonio import loads
from masterkey.nn.modes import REFERENCE
from masterkey.reading import read_json, read_text
from masterkey.runformats import write_table
from masterkey.stats import CONFIDENCE, mean_ci
from masterkey.train.experiment import Experiment

METRICS = ("test_top1", "test_top5", "test_loss", "train_loss", "best_test_top1")
#: Per-run curves of an experiment: ``curves[label]`` holds one ``(epoch_rows, step_rows)`` pair per seed.
Curves = dict[str, list[tuple[pd.DataFrame, pd.DataFrame]]]


def summarize_runs(rows: pd.DataFrame | list[dict[str, Any]], reference: str | None = REFERENCE) -> dict[str, Any]:
    """Per arm (column ``mode``): ``n``, ``mean`` / ``ci95`` of test top-1 and every metric in :data:`METRICS`
    as ``{mean, std, ci95, values}``, plus the paired difference to the ``reference`` arm (same seeds)."""
    frame = pd.DataFrame(rows)
    out: dict[str, Any] = {}
    ref = frame[frame["mode"] == reference].set_index("seed") if reference is not None else None
    for arm, group in frame.groupby("mode", sort=False):
        entry: dict[str, Any] = {
            "train_mode": group["train_mode"].iloc[0],
            "keys": None if pd.isna(group["keys"].iloc[0]) else str(group["keys"].iloc[0]),
            "n": len(group),
            "seeds": group["seed"].tolist(),
        }
        for metric in METRICS:
            if metric not in group:
                continue
            values = group[metric].astype(float).tolist()
            mean, std, half = mean_ci(values)
            entry[metric] = {"mean": mean, "std": std, "ci95": half, "values": values}
        entry["mean"], entry["ci95"] = entry["test_top1"]["mean"], entry["test_top1"]["ci95"]
        if ref is not None and len(ref) and arm != reference:
            paired = group.set_index("seed")["test_top1"].sub(ref["test_top1"]).dropna()
            if len(paired):
                mean, std, half = mean_ci(paired.tolist())
                entry["delta_test_top1"] = {"reference": reference, "n": len(paired), "mean": mean, "ci95": half}
        out[str(arm)] = entry
    return out


def summarize_sweep(rows: pd.DataFrame | list[dict[str, Any]], reference: str | None = REFERENCE) -> dict[str, Any]:
    """:func:`summarize_runs` at every training-set size (column ``train_size``), keyed ``<arm>-n<size>`` (as the
    run directories), each entry with its ``arm`` and ``train_size``; paired differences are to the reference arm
    at the same size."""
    frame = pd.DataFrame(rows)
    out: dict[str, Any] = {}
    for size, group in frame.groupby("train_size", sort=True):
        for arm, entry in summarize_runs(group, reference).items():
            out[f"{arm}-n{int(size)}"] = {"arm": arm, "train_size": int(size), **entry}
    order = list(dict.fromkeys(frame["mode"]))
    return dict(sorted(out.items(), key=lambda kv: (order.index(kv[1]["arm"]), kv[1]["train_size"])))


def efficiency_table(arms: dict[str, Any]) -> pd.DataFrame:
    """One row per arm and training-set size of a sweep summary: test top-1 mean, 95% CI half-width, n, and the
    paired difference to the reference arm (mean, CI, n) — the data-efficiency table."""
    rows = []
    for entry in arms.values():
        delta = entry.get("delta_test_top1") or {}
        rows.append(
            {
                "arm": entry["arm"],
                "train_size": entry["train_size"],
                "n": entry["n"],
                "test_top1": entry["test_top1"]["mean"],
                "ci95": entry["test_top1"]["ci95"],
                "delta_top1": delta.get("mean", math.nan),
                "delta_ci95": delta.get("ci95", math.nan),
                "delta_n": delta.get("n", 0),
            }
        )
    return pd.DataFrame(
        rows, columns=["arm", "train_size", "n", "test_top1", "ci95", "delta_top1", "delta_ci95", "delta_n"]
    )


def _pm(mean: float, half: float, digits: int = 2, signed: bool = False) -> str:
    if math.isnan(mean):
        return "-"
    text = f"{mean:+.{digits}f}" if signed else f"{mean:.{digits}f}"
    return text if math.isnan(half) else f"{text} ± {half:.{digits}f}"


def render_markdown(summary: dict[str, Any], experiment: Experiment) -> str:
    """``summary.md``: one line per arm (per arm and size in a sweep) with mean ± 95% CI half-width and n."""

    def pm(entry: dict[str, Any], metric: str, digits: int = 2) -> str:
        m = entry.get(metric)
        if not m:
            return "-"
        return _pm(m["mean"], m["ci95"], digits)

    sizes = f"; training-set sizes {experiment.train_sizes}" if experiment.train_sizes else ""
    lines = [
        "# Experiment summary",
        "",
        f"source: {experiment.source or '(command line)'}; seeds {experiment.seeds}{sizes}; mean ± 95% CI "
        "half-width (Student t over seeds); accuracies in percent on the test split.",
        "",
        "| arm | mode | keys | n | test top-1 | test top-5 | test loss | final train loss | Δ top-1 vs reference |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for arm, entry in summary["arms"].items():
        delta = entry.get("delta_test_top1")
        if delta:
            ci = "" if math.isnan(delta["ci95"]) else f" ± {delta['ci95']:.2f}"
            delta_text = f"{delta['mean']:+.2f}{ci} (paired, n={delta['n']})"
        else:
            delta_text = "-"
        lines.append(
            f"| {arm} | {entry['train_mode']} | {entry['keys'] or '-'} | {entry['n']} | {pm(entry, 'test_top1')} | "
            f"{pm(entry, 'test_top5')} | {pm(entry, 'test_loss', 4)} | {pm(entry, 'train_loss', 4)} | {delta_text} |"
        )
    if experiment.train_sizes:
        lines += ["", render_efficiency(efficiency_table(summary["arms"]))]
    lines += ["", "![curves](curves.png)", ""]
    return "\n".join(lines)


def render_efficiency(table: pd.DataFrame) -> str:
    """The data-efficiency table in Markdown: arms as rows, training-set sizes as columns (test top-1 mean ± 95%
    CI; paired difference to the reference below when there is one), then the figure."""
    sizes = sorted(table["train_size"].unique())
    lines = [
        "## Data efficiency: test top-1 (%) vs training-set size",
        "",
        "Mean ± 95% CI half-width over seeds; in brackets the paired difference to the reference arm at that size.",
        "",
        "| arm | " + " | ".join(f"n = {s:,}" for s in sizes) + " |",
        "| --- |" + " --- |" * len(sizes),
    ]
    for arm, group in table.groupby("arm", sort=False):
        cells = []
        for size in sizes:
            row = group[group["train_size"] == size]
            if not len(row):
                cells.append("-")
                continue
            r = row.iloc[0]
            cell = _pm(r["test_top1"], r["ci95"])
            if r["delta_n"]:
                cell += f" ({_pm(r['delta_top1'], r['delta_ci95'], signed=True)})"
            cells.append(cell)
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines += ["", "![data efficiency](efficiency.png)", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------- run directories
def read_run(run: Path) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame]:
    """``summary.json``, the epoch rows (``metrics.csv``) and the step rows (``metrics.jsonl``) of a train run."""
    summary = read_json(run / "summary.json", "training summary")
    epochs = pd.read_csv(run / "metrics.csv")
    lines = read_text(run / "metrics.jsonl", what="metrics file").splitlines()
    steps = pd.DataFrame([r for r in (loads(line, run / "metrics.jsonl") for line in lines) if "test_top1" not in r])
    return summary, epochs, steps


def run_row(
    arm: str, train_mode: str, seed: int, sub: Path, size: int | None = None
) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame]:
    """One row of ``summary.csv`` for the finished run ``sub``, and its epoch / step curves."""
    summary, epochs, steps = read_run(sub)
    row = {
        "mode": arm,
        "train_mode": train_mode,
        "keys": summary["keys"],
        "seed": seed,
        **({"train_size": size} if size is not None else {}),
        **{m: summary[m] for m in METRICS},
        **{k: summary[k] for k in ("ema_test_top1",) if k in summary},
        "train_seconds": summary["train_seconds"],
        "images_per_second": summary["images_per_second"],
        "run": str(Path("runs") / sub.name),
    }
    return row, epochs, steps


def run_warnings(run_dir: Path, rows: list[dict[str, Any]]) -> list[str]:
    """The warnings of the experiment's runs (``summary.json`` of each), one line per run and warning."""
    out = []
    for row in rows:
        try:
            saved = read_json(run_dir / row["run"] / "summary.json", "training summary")
        except (OSError, MasterkeyError, KeyError):
            continue
        out += [f"{Path(row['run']).name}: {line}" for line in saved.get("warnings", [])]
    return out


def write_summary(run_dir: Path, experiment: Experiment, rows: list[dict[str, Any]], curves: Curves) -> dict[str, Any]:
    """``summary.csv`` / ``.json`` / ``.md`` and ``curves.png`` of an experiment directory (and the
    ``efficiency.*`` files of a sweep); returns the summary."""
    from masterkey.plots.curves import efficiency_curves, experiment_curves
    from masterkey.plots.style import figure_png

    frame = pd.DataFrame(rows)
    names = [a.name for a in experiment.arms]
    reference = REFERENCE if REFERENCE in names else None
    sweep = bool(experiment.train_sizes)
    result: dict[str, Any] = {"metric": "test_top1", "confidence": CONFIDENCE, "seeds": experiment.seeds}
    if sweep:
        result["train_sizes"] = experiment.train_sizes
    result["arms"] = summarize_sweep(frame, reference) if sweep else summarize_runs(frame, reference)
    result["runs"] = rows
    result["warnings"] = run_warnings(run_dir, rows)
    write_table(run_dir, "experiment", "summary.csv", frame)
    write_json(run_dir / "summary.json", result)
    write_text(run_dir / "summary.md", render_markdown(result, experiment))
    with atomic_write(run_dir / "curves.png") as f:
        f.write(figure_png(experiment_curves(curves)))
    if sweep:
        table = efficiency_table(result["arms"])
        write_table(run_dir, "experiment", "efficiency.csv", table)
        write_text(run_dir / "efficiency.md", render_efficiency(table))
        with atomic_write(run_dir / "efficiency.png") as f:
            f.write(figure_png(efficiency_curves(table, reference)))
    return result
