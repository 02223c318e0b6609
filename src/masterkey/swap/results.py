"""What a swap measured: :class:`SwapResults` (one row per key set and condition), its summary over seeds and its
Markdown tables."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from masterkey.stats import ci95

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
