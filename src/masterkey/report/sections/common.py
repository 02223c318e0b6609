"""What every section shares: the report options, the header of facts about a run, accuracy columns in
percent."""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from masterkey.report.html import Folded, Section
from masterkey.report.runs import Run


@dataclass
class ReportOptions:
    """``samples``: real filters shown per key; ``bank``: a bank to read filters from instead of the one a fit
    run names (None: the run's own); ``max_reference``: filters per kernel size fitted to the random reference;
    ``jobs``: processes drawing the runs' sections side by side (figures are most of a report's time)."""

    samples: int = 8
    bank: str | None = None
    max_reference: int = 50_000
    seed: int = 0
    jobs: int = 1


# ---------------------------------------------------------------------- common header
_HIDDEN_CONFIG = {"out", "overwrite", "json", "command"}


def _facts(run: Run) -> list[tuple[str, str]]:
    facts = [("directory", str(run.path))]
    if run.argv:
        argv = [Path(run.argv[0]).name, *run.argv[1:]]
        facts.append(("command", shlex.join(argv)))
    config = {
        k: v for k, v in run.config.items() if k not in _HIDDEN_CONFIG and not k.startswith("_") and v is not None
    }
    if config:
        facts.append(("config", _folded_config(config)))
    env = run.environment
    if env:
        device = ", ".join(env.get("gpus") or []) or (
            "CUDA" if env.get("cuda") else f"CPU ({env.get('cpu_count', '?')} cores)"
        )
        versions = " · ".join(f"{k} {env[k]}" for k in ("masterkey", "torch", "timm", "python") if k in env)
        facts.append(("environment", f"{device}; {versions}"))
    return facts


def _folded_config(config: dict[str, Any]) -> Folded:
    """The whole config, one ``name = JSON value`` line per setting, folded under a one-line summary naming its
    settings."""
    plain = [k for k, v in config.items() if not isinstance(v, (dict, list))]
    nested = [k for k in config if k not in plain]
    summary = ", ".join(f"{k}={config[k]}" for k in plain[:6])
    more = nested + plain[6:]
    if more:
        summary += f"{'; ' if summary else ''}{len(more)} more: {', '.join(more)}"
    return Folded(summary, "\n".join(f"{k} = {json.dumps(v, default=str)}" for k, v in config.items()))


def scalar_table(data: dict[str, Any] | None) -> pd.DataFrame | None:
    """The scalar entries of a JSON object (nested one level: ``a.b``) as a two-column table; accuracies (already
    in %, as the trainer writes them) say so in their name."""
    if not isinstance(data, dict):
        return None
    rows = []
    for key, value in data.items():
        if isinstance(value, dict):
            rows += [
                {"name": f"{key}.{k}", "value": v} for k, v in value.items() if isinstance(v, (int, float, str, bool))
            ]
        elif isinstance(value, (int, float, str, bool)):
            rows.append({"name": key, "value": value})
    if not rows:
        return None
    table = pd.DataFrame(rows)
    table["name"] = table["name"].map(lambda n: f"{n} %" if is_accuracy(n.rsplit(".", 1)[-1]) else n)
    table["value"] = table["value"].map(lambda v: f"{v:.4g}" if isinstance(v, float) else str(v))
    return table


def is_accuracy(name: str) -> bool:
    """Whether a column or summary entry is an accuracy: ``top1``, ``top5``, anything ending in ``_top1``,
    ``_top5`` or ``_acc`` (``test_top1``, ``best_test_top1``, ``delta_top1``, ``train_acc``), and a swap's
    sensitivity ``drop``."""
    return name in ("top1", "top5", "drop") or name.endswith(("_top1", "_top5", "_acc"))


def percent_digits(table: pd.DataFrame) -> dict[str, int]:
    """Two decimals for the percent columns of :func:`percent_columns` (3 for the others)."""
    return {str(c): 2 for c in table.columns if str(c).endswith(" %")}


def percent_columns(table: pd.DataFrame, fractions: bool, extra: Sequence[str] = ()) -> pd.DataFrame:
    """Accuracy columns (:func:`is_accuracy`, their ``_ci95`` and the ``extra`` columns) named with a ``%``;
    with ``fractions`` (discover's accuracy objective writes top-1 as 0.823; swap and train runs write percent, and
    the reader converts older swap runs) scaled by 100 first."""
    names = [c for c in table.columns if is_accuracy(str(c)) or c in extra]
    names += [c for c in table.columns if c.endswith("_ci95") and c.removesuffix("_ci95") in names]
    if not names:
        return table
    out = table.copy()
    if fractions:
        out[names] = table[names].apply(pd.to_numeric, errors="coerce") * 100
    return out.rename(columns={c: f"{c} %" for c in names})


def new_section(run: Run, index: int, title_extra: str = "") -> Section:
    title = run.name + (f" — {title_extra}" if title_extra else "")
    return Section(title, f"r{index}-{run.kind}", _facts(run), kind=run.kind)
