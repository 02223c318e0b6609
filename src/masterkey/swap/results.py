"""What a swap measured: :class:`SwapResults` (one row per key set and condition), its summary over seeds and its
Markdown tables."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from masterkey.stats import ci95
from masterkey.tables import format_table

BASELINE = "none"
RESULT_COLUMNS = (
    "keys",
    "group",
    "seed",
    "n_keys",
    "recalibrated",
    "calibration",
    "top1",
    "top5",
    "delta_top1",
    "mean_cos2",
    "n_layers",
    "n_filters",
    "n_images",
    "calib_images",
    "seconds",
)


#: How accuracies are stored in JSON / CSV (the terminal and Markdown show percent).
ACCURACY_UNIT = (
    "top1, top5, delta_top1, drop and their ci95 are fractions (0.823 = 82.3%); delta_top1 is against the "
    "unswapped model as loaded (not recalibrated)"
)


@dataclass
class SwapResults:
    """Rows (one per key set and condition, the unswapped baseline first), the per-stage cos² of each key set,
    the optional sensitivity table, and what was evaluated (``info``)."""

    rows: list[dict[str, Any]]
    per_stage: pd.DataFrame = field(default_factory=pd.DataFrame)
    sensitivity: pd.DataFrame | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=list(RESULT_COLUMNS))

    def summary(self) -> pd.DataFrame:
        """One row per key family and condition: seeded key sets (``random:8:0..4``) are pooled into mean and
        95% CI half-width over seeds; single key sets have ``n_seeds`` 1 and no CI."""
        frame = self.frame()
        out = []
        for (group, recal, calib), part in frame.groupby(["group", "recalibrated", "calibration"], sort=False):
            row: dict[str, Any] = {
                "keys": group,
                "n_keys": part["n_keys"].iloc[0],
                "recalibrated": bool(recal),
                "calibration": calib,
                "n_seeds": len(part),
            }
            for col in ("top1", "top5", "delta_top1", "mean_cos2"):
                row[col] = float(part[col].mean())
                row[f"{col}_ci95"] = ci95(part[col].tolist())
            out.append(row)
        return pd.DataFrame(out)

    def to_dict(self) -> dict[str, Any]:
        """Everything as plain JSON-ready data (NaN, e.g. the seed of a non-random key set, becomes None)."""
        out: dict[str, Any] = {
            "accuracy_unit": ACCURACY_UNIT,
            "info": self.info,
            "results": _records(self.frame()),
            "summary": _records(self.summary()),
            "per_stage": _records(self.per_stage),
        }
        if self.sensitivity is not None:
            out["sensitivity"] = _records(self.sensitivity)
        return out

    def to_markdown(self) -> str:
        """The summary, per-stage and sensitivity tables as Markdown."""
        info = self.info
        lines = [
            f"# Swap: {info.get('model', '?')}",
            "",
            f"- weights: `{info.get('weights')}`",
            f"- data: `{info.get('data')}` ({info.get('n_images')} images)",
        ]
        if info.get("calibration"):
            lines.append(f"- recalibration: {info['calibration']}")
        lines += ["", "## Accuracy", "", markdown_summary(self.summary()), ""]
        if not self.per_stage.empty:
            lines += ["## Mean cos² per stage", "", _markdown(self.per_stage), ""]
        if self.sensitivity is not None:
            lines += ["## Sensitivity (one unit swapped at a time)", "", _markdown(self.sensitivity), ""]
        return "\n".join(lines)


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    rows = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()} for row in rows]


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "-" if value != value else f"{value:.{digits}f}"
    return str(value)


def _markdown(frame: pd.DataFrame) -> str:
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(" --- " for _ in cols) + "|"]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def _pct(mean: float, half: float) -> str:
    return f"{100 * mean:.1f}" if half != half else f"{100 * mean:.1f} ± {100 * half:.1f}"


def markdown_summary(summary: pd.DataFrame) -> str:
    """The summary table with accuracies in percent and mean ± 95% CI over seeds."""
    with_calib = "calibration" in summary and bool((summary["calibration"].fillna("") != "").any())
    head = "| keys | n_keys | recalibrated |" + (" calibration |" if with_calib else "")
    lines = [
        head + " seeds | top-1 % | top-5 % | Δ top-1 (points vs the unswapped model, not recalibrated) | mean cos² |",
        "| --- | ---: | :---: |" + (" --- |" if with_calib else "") + " ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in summary.to_dict(orient="records"):
        calib = f" {r.get('calibration') or '-'} |" if with_calib else ""
        lines.append(
            f"| {r['keys']} | {r['n_keys']} | {_fmt(r['recalibrated'])} |{calib} {r['n_seeds']} | "
            f"{_pct(r['top1'], r['top1_ci95'])} | {_pct(r['top5'], r['top5_ci95'])} | "
            f"{_pct(r['delta_top1'], r['delta_top1_ci95'])} | {r['mean_cos2']:.3f} |"
        )
    return "\n".join(lines)


def render_text(results: SwapResults) -> str:
    """Plain-text tables: accuracy per key set (and condition), seeds pooled; per-stage cos²; sensitivity."""
    info = results.info
    lines = [
        f"swap into {info['model']} ({info['n_depthwise_layers']} depthwise layers)",
        f"data {info['data']}: {info['n_images']:,} images, {info['n_classes']} classes",
    ]
    if info.get("calibration"):
        lines.append(f"recalibration: {info['calibration']}")
    summary = results.summary()
    rows = []
    for r in summary.to_dict(orient="records"):
        rows.append(
            {
                "keys": r["keys"],
                "n_keys": str(r["n_keys"]),
                "recal": "yes" if r["recalibrated"] else "no",
                "seeds": r["n_seeds"],
                "top1 %": _pm(r["top1"], r["top1_ci95"]),
                "top5 %": _pm(r["top5"], r["top5_ci95"]),
                "Δtop1 pts": _pm(r["delta_top1"], r["delta_top1_ci95"]),
                "mean_cos2": r["mean_cos2"],
            }
        )
    seeded = bool(len(summary)) and bool((summary["n_seeds"] > 1).any())
    spread = "mean ± 95% CI over seeds" if seeded else "one seed per key set, no CI"
    lines += ["", f"accuracy ({spread}):", format_table(rows)]
    lines.append(DELTA_NOTE if info.get("calibration") else "Δtop1: percentage points against the unswapped model")
    if not results.per_stage.empty:
        from masterkey.depthwise import UNKNOWN_STAGE_NOTE, stage_name

        cols = ["keys", "stage", "n_layers", "n_filters", "kernel_sizes", "mean_cos2"]
        stages = [{**r, "stage": stage_name(r["stage"])} for r in results.per_stage.to_dict(orient="records")]
        lines += ["", "mean cos² per stage:", format_table(stages, cols)]
        if any(r["stage"] == "unknown" for r in stages):
            lines.append(UNKNOWN_STAGE_NOTE)
    if results.sensitivity is not None:
        sens = results.sensitivity.to_dict(orient="records")
        for row in sens:
            for col in ("top1", "top5", "drop", "top1_recal", "drop_recal"):
                if col in row:
                    row[col] = round(100 * row[col], 2)
        lines += ["", "sensitivity (one unit swapped at a time; top-1, top-5, drop in %):", format_table(sens)]
    return "\n".join(lines)


#: What ``delta_top1`` of a recalibrated row is measured against (a choice: the model the user started from).
DELTA_NOTE = (
    "Δtop1: percentage points against the unswapped model as loaded (not recalibrated), in every row, recalibrated "
    "ones too; the recalibrated unswapped row shows what recalibration alone does"
)


def _pm(mean: float, half: float) -> str:
    return f"{100 * mean:.2f}" if half != half else f"{100 * mean:.2f} ± {100 * half:.2f}"
