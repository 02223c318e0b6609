"""Readers of run directories (see the run-directory contracts): recognise a run by the ``kind`` in its
``run.json`` and load whatever of its files are present.

``run.json`` is required and must be valid (a clear :class:`MasterkeyError` otherwise). Every other file is read if
present; a missing or malformed file leaves its field ``None`` and adds a line to ``Run.notes``, so a report shows
what exists and says what does not.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from masterkey.errors import MasterkeyError
from masterkey.jsonio import loads
from masterkey.keys import KeyValues
from masterkey.reading import read_json, read_text, regular_file
from masterkey.runformats import ACCURACY_UNIT, run_format
from masterkey.runs import RUN_INFO, read_run_info

KINDS = ("fit", "discover", "swap", "train", "experiment", "explain")


@dataclass
class Run:
    """A run directory: ``kind``, ``config``, ``environment`` and ``argv`` from ``run.json``, plus notes about
    files that were missing or unreadable."""

    path: Path
    kind: str
    config: dict[str, Any]
    environment: dict[str, Any]
    argv: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    def inside(self, path: Path) -> bool:
        """Whether ``path`` (links followed) lies inside this run folder: the report reads nothing outside the run
        folders it was given, so a link leading out of one is never followed."""
        root = os.path.realpath(self.path)
        return os.path.realpath(path).startswith(root + os.sep)

    def file(self, name: str, optional: bool = True) -> Path | None:
        """The path of ``name`` in the run, or None (noted unless ``optional``) when it is absent. A link leading
        outside the run folder, a FIFO, a device or a folder is never read (and noted)."""
        path = self.path / name
        if not os.path.lexists(path):
            if not optional:
                self.notes.append(f"{name} is missing")
            return None
        if not self.inside(path):
            self.notes.append(f"{name} is a link leading outside the run folder; not read")
            return None
        try:
            regular_file(path, "run file")
        except MasterkeyError as exc:
            self.notes.append(f"{str(exc).removeprefix(str(path) + ': ')}: {name} not read")
            return None
        return path

    def read_csv(self, name: str, required: Sequence[str] = (), optional: bool = False) -> pd.DataFrame | None:
        """A CSV file of the run; None (with a note) when absent, unreadable or without the ``required`` columns."""
        return self._read_table(name, pd.read_csv, required, optional)

    def read_parquet(self, name: str, required: Sequence[str] = (), optional: bool = False) -> pd.DataFrame | None:
        """A Parquet file of the run; None (with a note) as :meth:`read_csv`."""
        return self._read_table(name, pd.read_parquet, required, optional)

    def _read_table(
        self, name: str, reader: Callable[[Path], pd.DataFrame], required: Sequence[str], optional: bool
    ) -> pd.DataFrame | None:
        path = self.file(name, optional)
        if path is None:
            return None
        try:
            table = reader(path)
        except Exception as exc:
            self.notes.append(f"{name} is unreadable ({str(exc).splitlines()[0][:100]})")
            return None
        return self._check_columns(name, table, required)

    def _check_columns(self, name: str, table: pd.DataFrame, required: Sequence[str]) -> pd.DataFrame | None:
        missing = [c for c in required if c not in table.columns]
        if missing:
            self.notes.append(f"{name} lacks the columns {', '.join(missing)}; skipped")
            return None
        return table

    def read_json(self, name: str, optional: bool = False) -> Any:
        path = self.file(name, optional)
        if path is None:
            return None
        try:
            return read_json(path, "run file")
        except MasterkeyError as exc:
            self._note_unreadable(path, name, exc)
            return None

    def _note_unreadable(self, path: Path, name: str, exc: MasterkeyError) -> None:
        why = str(exc).removeprefix(f"{path}: ")
        self.notes.append(f"{name} is {why}" if why.startswith("not ") else f"{name}: {why}")

    def read_jsonl(self, name: str, optional: bool = True) -> list[dict[str, Any]] | None:
        path = self.file(name, optional)
        if path is None:
            return None
        rows: list[dict[str, Any]] = []
        bad = 0
        text = self._text(path, name)
        for line in (text or "").splitlines():
            if not line.strip():
                continue
            try:
                row = loads(line, name)
            except MasterkeyError:
                bad += 1
                continue
            if isinstance(row, dict):
                rows.append(row)
        if bad:
            self.notes.append(f"{name}: {bad} unreadable lines skipped")
        return rows

    def read_keyset(self, name: str, optional: bool = False) -> KeyValues | None:
        """A key set of the run, as numbers (checked as :meth:`masterkey.keys.KeySet.load` checks them,
        without torch: the report only draws keys); None (with a note) when absent or unreadable."""
        path = self.file(name, optional)
        if path is None:
            return None
        try:
            return KeyValues.load(path)
        except MasterkeyError as exc:
            self.notes.append(str(exc))
            return None

    def read_text(self, name: str, optional: bool = True) -> str | None:
        path = self.file(name, optional)
        return self._text(path, name) if path is not None else None

    def _text(self, path: Path, name: str) -> str | None:
        try:
            return read_text(path, what="run file")
        except MasterkeyError as exc:
            self._note_unreadable(path, name, exc)
            return None

    def pngs(self) -> list[Path]:
        """The PNG figures of the run folder (regular files inside it)."""
        return [p for p in sorted(self.path.glob("*.png")) if self.file(p.name) is not None]


def read_run(path: str | Path) -> Run:
    """The :class:`Run` of a directory; ``run.json`` must exist and name one of :data:`KINDS`."""
    path = Path(path)
    info = read_run_info(path)
    if info["kind"] not in KINDS:
        raise MasterkeyError(f"{path / RUN_INFO}: unknown run kind '{info['kind']}' (known: {', '.join(KINDS)})")
    return Run(path, info["kind"], info["config"], info["environment"], [str(a) for a in info["argv"]])


# ---------------------------------------------------------------------- per kind
# The columns each table must have come from the one declaration of the run formats (masterkey.runformats).
FIT, DISCOVER, SWAP, TRAIN, EXPERIMENT, EXPLAIN = (
    run_format(k) for k in ("fit", "discover", "swap", "train", "experiment", "explain")
)


@dataclass
class FitRun:
    run: Run
    summary: dict[str, Any] | None
    fits: pd.DataFrame | None
    keysets: dict[int, KeyValues]


@dataclass
class DiscoverPart:
    """The files of one kernel size of a discover run (``prefix`` "" for a flat run, else ``k3``, ``k5`` ...)."""

    prefix: str
    keys: KeyValues | None
    candidates: KeyValues | None
    path: pd.DataFrame | None
    baselines: pd.DataFrame | None
    universality: pd.DataFrame | None
    summary: dict[str, Any] | None


@dataclass
class DiscoverRun:
    run: Run
    parts: dict[str, DiscoverPart]
    summary: dict[str, Any] | None
    summary_md: str | None


@dataclass
class SwapRun:
    run: Run
    results: pd.DataFrame | None
    summary: pd.DataFrame | None
    per_stage: pd.DataFrame | None
    sensitivity: pd.DataFrame | None


@dataclass
class TrainRun:
    run: Run
    metrics: pd.DataFrame | None
    steps: pd.DataFrame | None
    summary: dict[str, Any] | None


@dataclass
class ExperimentRun:
    run: Run
    table: pd.DataFrame | None
    summary: dict[str, Any] | None
    summary_md: str | None
    runs: list[TrainRun]
    efficiency: pd.DataFrame | None = None  # the data-efficiency table of a sweep over training-set sizes


@dataclass
class ExplainRun:
    run: Run
    scalespace: pd.DataFrame | None
    eigenpatches: pd.DataFrame | None
    reconstruction: pd.DataFrame | None
    summary: dict[str, Any] | None
    summary_md: str | None
    figures: list[Path]


LoadedRun = FitRun | DiscoverRun | SwapRun | TrainRun | ExperimentRun | ExplainRun


def load_fit(run: Run) -> FitRun:
    fits = run.read_parquet("fits.parquet", FIT.columns("fits.parquet"))
    keysets: dict[int, KeyValues] = {}
    for path in sorted(run.path.glob("keys_k*.safetensors")):
        keyset = run.read_keyset(path.name)
        if keyset is not None:
            keysets[keyset.kernel_size] = keyset
    if not keysets:
        run.notes.append("no keys_k*.safetensors: key pictures skipped")
    return FitRun(run, run.read_json("summary.json"), fits, keysets)


def _discover_part(run: Run, prefix: str) -> DiscoverPart:
    at = f"{prefix}/" if prefix else ""
    return DiscoverPart(
        prefix,
        run.read_keyset(f"{at}keys.safetensors"),
        run.read_keyset(f"{at}candidates.safetensors", optional=True),
        run.read_csv(f"{at}path.csv", DISCOVER.columns("path.csv")),
        run.read_csv(f"{at}baselines.csv", DISCOVER.columns("baselines.csv"), optional=True),
        run.read_csv(f"{at}universality.csv", DISCOVER.columns("universality.csv"), optional=True),
        run.read_json(f"{at}summary.json", optional=bool(prefix)),
    )


def load_discover(run: Run) -> DiscoverRun:
    """A flat run (one kernel size) or one sub-directory ``k3/``, ``k5/`` ... per kernel size."""
    subdirs = sorted(
        (p.name for p in run.path.iterdir() if re.fullmatch(r"k\d+", p.name) and (p / "keys.safetensors").is_file()),
        key=lambda name: int(name[1:]),
    )
    prefixes = subdirs if subdirs and not (run.path / "keys.safetensors").is_file() else [""]
    parts = {prefix: _discover_part(run, prefix) for prefix in prefixes}
    summary = run.read_json("summary.json", optional=True) if subdirs else next(iter(parts.values())).summary
    return DiscoverRun(run, parts, summary, run.read_text("summary.md"))


def load_swap(run: Run) -> SwapRun:
    results = run.read_csv("results.csv", SWAP.columns("results.csv"))
    if results is None:
        data = run.read_json("results.json", optional=True)
        rows = data.get("results", data.get("rows")) if isinstance(data, dict) else data
        if isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows):
            results = run._check_columns("results.json", pd.DataFrame(rows), SWAP.columns("results.csv"))
    sensitivity = run.read_csv("sensitivity.csv", SWAP.columns("sensitivity.csv"), optional=True)
    if sensitivity is not None and not {"layer", "stage", "name"} & set(sensitivity.columns):
        run.notes.append("sensitivity.csv names no layer, stage or name column; skipped")
        sensitivity = None
    summary = run.read_csv("summary.csv", SWAP.columns("summary.csv"), optional=True)
    if _swap_fractions(run):
        results = _to_percent(results, "results.csv")
        summary = _to_percent(summary, "summary.csv")
        sensitivity = _to_percent(sensitivity, "sensitivity.csv")
        run.notes.append("an older swap run: its accuracies were stored as fractions, shown here in percent")
    return SwapRun(
        run,
        results,
        summary,
        run.read_csv("per_stage.csv", SWAP.columns("per_stage.csv"), optional=True),
        sensitivity,
    )


def _swap_fractions(run: Run) -> bool:
    """Whether a swap run holds fractions (written before accuracies were stored in percent): its results.json
    names another unit than :data:`~masterkey.runformats.ACCURACY_UNIT`."""
    path = run.path / "results.json"
    if not path.is_file():
        return False
    data = run.read_json("results.json", optional=True)
    unit = data.get("accuracy_unit") if isinstance(data, dict) else None
    return isinstance(unit, str) and unit != ACCURACY_UNIT


def _to_percent(table: pd.DataFrame | None, name: str) -> pd.DataFrame | None:
    """``table`` with its declared accuracy columns (:attr:`~masterkey.runformats.RunFile.percent`) times 100."""
    if table is None:
        return None
    table = table.copy()
    for col in SWAP.file(name).percent:
        if col in table:
            table[col] = pd.to_numeric(table[col], errors="coerce") * 100
    return table


def load_train(run: Run) -> TrainRun:
    metrics = run.read_csv("metrics.csv", TRAIN.columns("metrics.csv"))
    rows = run.read_jsonl("metrics.jsonl")
    steps = None
    if rows:
        table = pd.DataFrame(rows)
        # Per-epoch rows carry test metrics; per-step rows only "step" and "train_loss" (and maybe lr, epoch).
        epoch_rows = table["test_top1"].notna() if "test_top1" in table else pd.Series(False, index=table.index)
        if {"step", "train_loss"} <= set(table.columns):
            per_step = table[~epoch_rows].dropna(subset=["step", "train_loss"])
            steps = (
                per_step[["step", "train_loss"]].sort_values("step").reset_index(drop=True)
                if len(per_step) > 1
                else None
            )
        if metrics is None and "epoch" in table and epoch_rows.any():
            metrics = table[epoch_rows].reset_index(drop=True)
            run.notes.append("per-epoch metrics read from metrics.jsonl")
    summary = run.read_json("summary.json")
    if isinstance(summary, dict) and isinstance(summary.get("warnings"), list):
        run.notes.extend(f"warning: {line}" for line in summary["warnings"])  # e.g. a run that is all warm-up
    return TrainRun(run, metrics, steps, summary)


def load_experiment(run: Run) -> ExperimentRun:
    subruns: list[TrainRun] = []
    runs_dir = run.path / "runs"
    if runs_dir.is_dir():
        for sub in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
            if not run.inside(sub):
                run.notes.append(f"runs/{sub.name} is a link leading outside the run folder; not read")
                continue
            try:
                child = read_run(sub)
            except MasterkeyError as exc:
                run.notes.append(f"runs/{sub.name}: {exc}")
                continue
            if child.kind == "train":
                subruns.append(load_train(child))
                run.notes.extend(f"runs/{sub.name}: {n}" for n in child.notes)
    else:
        run.notes.append("runs/ is missing: no training curves")
    return ExperimentRun(
        run,
        run.read_csv("summary.csv", EXPERIMENT.columns("summary.csv")),
        run.read_json("summary.json"),
        run.read_text("summary.md"),
        subruns,
        run.read_csv("efficiency.csv", EXPERIMENT.columns("efficiency.csv"), optional=True),
    )


def load_explain(run: Run) -> ExplainRun:
    return ExplainRun(
        run,
        run.read_csv("scalespace.csv", EXPLAIN.columns("scalespace.csv")),
        run.read_csv("eigenpatches.csv", EXPLAIN.columns("eigenpatches.csv")),
        run.read_csv("reconstruction.csv", EXPLAIN.columns("reconstruction.csv"), optional=True),
        run.read_json("summary.json", optional=True),
        run.read_text("summary.md", optional=False),
        run.pngs(),
    )


_LOADERS = {
    "fit": load_fit,
    "discover": load_discover,
    "swap": load_swap,
    "train": load_train,
    "experiment": load_experiment,
    "explain": load_explain,
}


def load_run(path: str | Path) -> LoadedRun:
    """Read ``run.json`` (strictly) and the files of the run's kind (tolerantly)."""
    run = read_run(path)
    return _LOADERS[run.kind](run)  # type: ignore[return-value]
