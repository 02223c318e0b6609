"""The run formats: what each kind of run directory holds, declared once.

Every command that writes a run directory (``fit``, ``discover``, ``swap``, ``train`` and experiments, ``explain``,
``report``) writes ``run.json`` with its ``kind`` (:mod:`masterkey.runs`) and the files declared here. The report
reads runs through these declarations (:mod:`masterkey.report.runs` asks for the ``columns`` of each table), every
table is written through :func:`write_table` (which refuses a table that lost a declared column), and
``tests/report/test_runformats.py`` checks that what the real writers write matches them, file for file and column for
column, so that a change to a writer cannot silently break a reader. Units: every accuracy in every run file, table,
terminal line and report is in :data:`ACCURACY_UNIT` (as timm reports it); differences of accuracies (``delta_top1``,
``drop``) are in percentage points. The ``percent`` of each table declares its accuracy columns. Swap runs written
before this rule hold fractions (their ``results.json`` says so); the report converts them, with a note. See
``docs/design.md`` for the pipeline these runs come from.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "ACCURACY_UNIT",
    "KEY_COLUMNS",
    "RUN_FORMATS",
    "RunFile",
    "RunFormat",
    "check_columns",
    "check_run",
    "run_files",
    "run_format",
    "with_key_columns",
    "write_table",
]

#: How keys are named in every table that names one key per row: ``key_index`` counts from 0 (a position in the key
#: set, as in ``KeySet.keys[key_index]`` and the ``key_index`` buffers of :mod:`masterkey.nn`), ``key_number`` from 1
#: (what the terminal, the report, ``keys show`` and key labels such as "2 shift-right" show), with ``key_label``.
KEY_COLUMNS = ("key_index", "key_number", "key_label")

#: The one unit of accuracies (top-1, top-5 and their CIs) in every run file, table, terminal line and report.
ACCURACY_UNIT = "percent"


@dataclass(frozen=True)
class RunFile:
    """One file of a run directory: its name (a glob for families such as ``keys_k*.safetensors``), what it holds,
    whether every run of the kind has it, and, for tables, the columns every writer writes (at least these) and
    which of them are accuracies in :data:`ACCURACY_UNIT` (``percent``; differences of them in percentage points)."""

    name: str
    what: str
    required: bool = True
    columns: tuple[str, ...] = ()
    #: For a family of sub-directories (``runs/*``): the kind of run each one is.
    nested: str = ""
    #: The accuracy columns (in :data:`ACCURACY_UNIT`).
    percent: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunFormat:
    """The files of one kind of run directory. ``per_kernel`` kinds may hold their files in one sub-directory per
    kernel size (``k3/``, ``k7/`` ...) instead of at the top."""

    kind: str
    what: str
    files: tuple[RunFile, ...]
    per_kernel: tuple[str, ...] = ()

    def file(self, name: str) -> RunFile:
        """The declaration of ``name`` (a plain name or one matching a declared glob)."""
        for f in self.files:
            if f.name == name or fnmatch.fnmatchcase(name, f.name):
                return f
        raise KeyError(f"{self.kind} runs declare no file {name!r}")

    def columns(self, name: str) -> tuple[str, ...]:
        """The columns of table ``name`` that readers may rely on."""
        return self.file(name).columns


_RUN_JSON = RunFile("run.json", "kind, resolved config, environment (versions, hardware), command line")

RUN_FORMATS: dict[str, RunFormat] = {
    "fit": RunFormat(
        "fit",
        "the affine fit of every filter of a bank to a key set (masterkey fit)",
        (
            _RUN_JSON,
            RunFile(
                "fits.parquet",
                "one row per usable filter: its metadata, best key (key_index from 0, key_number from 1, key_label), "
                "a, b, cos2, residual; files written before key_index / key_number hold a 0-based 'key' (read alike)",
                columns=(
                    "source",
                    "layer",
                    "layer_index",
                    "kernel_size",
                    "index",
                    *KEY_COLUMNS,
                    "a",
                    "b",
                    "cos2",
                    "residual",
                ),
            ),
            RunFile("keys_k*.safetensors", "the key set at each kernel size fitted"),
            RunFile("summary.json", "key proportions and mean cos2 by kernel size, source, stage and layer"),
            RunFile("summary.md", "the same, as Markdown"),
        ),
    ),
    "discover": RunFormat(
        "discover",
        "key discovery on a bank (masterkey discover): flat for one kernel size, k3/, k5/ ... for several",
        (
            _RUN_JSON,
            RunFile("keys.safetensors", "the discovered keys (their share of filters in the metadata)"),
            RunFile("candidates.safetensors", "the distinct candidates the autoencoders gave"),
            RunFile("candidates_round*.safetensors", "the candidates of later rounds (--rounds)", required=False),
            RunFile(
                "path.csv",
                "the greedy path: objective after each removal, in objective_unit (percent: held-out top-1 of the "
                "accuracy objective; cos2); runs without objective_unit held the accuracy objective as fractions",
                columns=("n_keys", "objective"),
            ),
            RunFile(
                "baselines.csv",
                "the objective of each baseline (and of the discovered keys) at each set size; ci95 over seeds; "
                "objective and ci95 in objective_unit (as path.csv)",
                columns=("method", "n_keys", "objective", "ci95"),
            ),
            RunFile(
                "universality.csv",
                "leave-one-source-out: keys from the other sources fitted to each source (--universality)",
                required=False,
                columns=("keys_from", "fitted_to", "objective"),
            ),
            RunFile("baseline_keys/*.safetensors", "the baselines' key sets", required=False),
            RunFile("keys.png", "the key grid", required=False),
            RunFile("path.png", "the greedy path with its elbows", required=False),
            RunFile("summary.json", "what was found, per kernel size"),
            RunFile("summary.md", "the same, as Markdown"),
        ),
        per_kernel=(
            "keys.safetensors",
            "candidates.safetensors",
            "candidates_round*.safetensors",
            "path.csv",
            "baselines.csv",
            "universality.csv",
            "baseline_keys/*.safetensors",
            "keys.png",
            "path.png",
        ),
    ),
    "swap": RunFormat(
        "swap",
        "keys swapped into a pretrained network, accuracy measured (masterkey swap)",
        (
            _RUN_JSON,
            RunFile(
                "results.csv",
                "one row per key set, seed and condition; top1 / top5 in percent, delta_top1 in percentage points; "
                "calibration names its images (cross-fitted ones say they use the evaluation distribution)",
                columns=("keys", "group", "seed", "n_keys", "recalibrated", "top1", "top5", "delta_top1", "mean_cos2"),
                percent=("top1", "top5", "delta_top1"),
            ),
            RunFile("results.json", "the same rows with the model's description, accuracy_unit and units"),
            RunFile(
                "summary.csv",
                "results pooled over seeds: mean and 95% CI half-width (percent)",
                columns=("keys", "recalibrated", "n_keys", "n_seeds", "top1", "top1_ci95"),
                percent=("top1", "top1_ci95", "top5", "top5_ci95", "delta_top1", "delta_top1_ci95"),
            ),
            RunFile("per_stage.csv", "mean cos2 of the fits per stage", required=False, columns=("stage",)),
            RunFile(
                "sensitivity.csv",
                "one stage or layer swapped at a time (--sensitivity); top1 in percent, drop in percentage points",
                required=False,
                columns=("unit", "name", "keys", "top1", "drop"),
                percent=("top1", "top5", "drop", "top1_recal", "drop_recal"),
            ),
            RunFile("summary.md", "the tables, as Markdown"),
        ),
    ),
    "train": RunFormat(
        "train",
        "one training run (masterkey train): model, optimiser and data order checkpointed; accuracies in percent",
        (
            _RUN_JSON,
            RunFile(
                "metrics.csv",
                "one row per epoch: losses, train accuracy and test top-1 / top-5 in percent",
                columns=("epoch", "step", "lr", "train_loss", "test_loss", "test_top1", "test_top5"),
                percent=("train_acc", "test_top1", "test_top5", "ema_test_top1", "ema_test_top5"),
            ),
            RunFile("metrics.jsonl", "per-step and per-epoch rows as they were logged"),
            RunFile("summary.json", "the final numbers, parameter counts, depthwise statistics, warnings"),
            RunFile("model.safetensors", "the trained weights", required=False),
            RunFile("model_ema.safetensors", "the weights' exponential moving average (--ema)", required=False),
            RunFile("tensorboard/*", "TensorBoard logs (--tensorboard)", required=False),
            RunFile("checkpoint.pt", "the state to resume from (removed when --no-checkpoint)", required=False),
        ),
    ),
    "experiment": RunFormat(
        "experiment",
        "arms x seeds (x training-set sizes) of training runs, with 95% CIs (masterkey train --seeds / --experiment)",
        (
            _RUN_JSON,
            RunFile(
                "summary.csv",
                "one row per run: arm (mode column), seed, final numbers in percent",
                columns=("run", "mode", "seed", "test_top1", "test_top5", "test_loss", "train_loss"),
                percent=("test_top1", "test_top5"),
            ),
            RunFile(
                "summary.json", "metric, confidence, seeds, arms (mean ± ci95, paired differences), runs, warnings"
            ),
            RunFile("summary.md", "the tables, as Markdown"),
            RunFile("curves.png", "test top-1 and training loss of every arm", required=False),
            RunFile(
                "efficiency.csv",
                "data-efficiency sweeps (--train-sizes): one row per arm and size",
                required=False,
                columns=("arm", "train_size", "test_top1", "ci95"),
            ),
            RunFile("efficiency.md", "the same, as Markdown", required=False),
            RunFile("efficiency.png", "test top-1 against training-set size", required=False),
            RunFile("runs/*", "one train run directory per arm, size and seed", nested="train"),
        ),
    ),
    "explain": RunFormat(
        "explain",
        "scale-space models and eigen-patches of a key set (masterkey explain)",
        (
            _RUN_JSON,
            RunFile("keys.safetensors", "the key set explained"),
            RunFile(
                "scalespace.csv",
                "one row per key: the best discrete scale-space model and its cosine",
                columns=("key_index", "key_number", "label", "family", "sigma_x", "sigma_y", "gamma", "sign", "cosine"),
            ),
            RunFile("scalespace_keys.safetensors", "the models, as a key set"),
            RunFile(
                "eigenpatches.csv",
                "each key against the eigen-patches of the images",
                columns=("key_index", "key_number", "label", "best_component", "abs_cos"),
            ),
            RunFile("eigenpatches.json", "the eigen-patches and their variances"),
            RunFile("eigenpatches_random.csv", "the same for random key sets (the chance level)", required=False),
            RunFile(
                "reconstruction.csv",
                "patch-by-patch reconstruction of the images from keys, eigen-patches and random bases",
                required=False,
                columns=("image", "basis", "kind", "seed", "n_basis", "explained"),
            ),
            RunFile("*.png", "figures", required=False),
            RunFile("summary.json", "the numbers of the summary", required=False),
            RunFile("summary.md", "the summary, as Markdown"),
        ),
    ),
    "report": RunFormat(
        "report",
        "one self-contained HTML page plus Markdown from any runs (masterkey report)",
        (
            _RUN_JSON,
            RunFile("report.html", "the page, figures embedded"),
            RunFile("report.md", "the same, as Markdown, figures beside it"),
            RunFile("*.png", "the figures", required=False),
        ),
    ),
}


def run_format(kind: str) -> RunFormat:
    """The declared format of ``kind``."""
    try:
        return RUN_FORMATS[kind]
    except KeyError:
        raise KeyError(f"unknown run kind {kind!r} (known: {', '.join(RUN_FORMATS)})") from None


def check_columns(kind: str, name: str, columns: Iterable[str]) -> None:
    """Refuse to write table ``name`` of a ``kind`` run when it is not declared or lacks a declared column: a
    writer that drifted from its format is a bug, caught where it is written rather than where a reader fails."""
    declared = run_format(kind).columns(name)
    missing = [c for c in declared if c not in set(columns)]
    if missing:
        raise ValueError(f"{kind} run file {name}: the writer lost the declared column(s) {', '.join(missing)}")


def write_table(folder: str | Path, kind: str, name: str, table: pd.DataFrame) -> Path:
    """Write ``table`` as the run file ``folder/name`` of a ``kind`` run (CSV, or Parquet for ``*.parquet``),
    atomically, after :func:`check_columns`. Returns the path."""
    from masterkey.atomic import atomic_write

    check_columns(kind, name, table.columns)
    path = Path(folder) / name
    with atomic_write(path, "wb") as f:
        if name.endswith(".parquet"):
            table.to_parquet(f, index=False)
        else:
            f.write(table.to_csv(index=False).encode())
    return path


#: Temporary files masterkey's atomic writers leave only when killed (``.NAME.XXXX.tmp``): its own, not foreign.
_TEMPORARY = ".*.tmp"
_KERNEL_DIR = re.compile(r"k[0-9]+")


def _entries(root: Path) -> list[str]:
    """Every file under ``root`` (hidden ones too), and every link to a folder, as paths relative to ``root``;
    links are not followed."""
    found = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder).relative_to(root)
        found += [str(here / name) for name in files]
        found += [str(here / name) for name in dirs if (Path(folder) / name).is_symlink()]
    return sorted(name.removeprefix("./") for name in found)


def run_files(path: str | Path, kind: str) -> tuple[list[str], list[str]]:
    """``(missing, undeclared)`` of run directory ``path`` against the format of ``kind``, without reading any
    file: the required files it lacks, and the files it holds that the format does not declare (hidden files
    included, except the temporaries of masterkey's killed writers; runs nested in ``runs/*`` are checked against
    their own kind). Paths are relative to ``path``."""
    fmt = run_format(kind)
    root = Path(path)
    subdirs = [p.name for p in sorted(root.glob("k[0-9]*")) if p.is_dir() and not p.is_symlink()]
    subdirs = [d for d in subdirs if _KERNEL_DIR.fullmatch(d)] if fmt.per_kernel else []
    if subdirs:  # one sub-directory per kernel size, each with its own summary
        own = set(fmt.per_kernel) | {"summary.json", "summary.md"}
        places = [("", [f for f in fmt.files if f.name not in fmt.per_kernel])]
        places += [(d, [f for f in fmt.files if f.name in own]) for d in subdirs]
    else:
        places = [("", list(fmt.files))]
    entries = _entries(root)
    missing: list[str] = []
    undeclared: list[str] = []
    nested_done: set[str] = set()
    for where, files in places:
        prefix = f"{where}/" if where else ""
        present = [
            e[len(prefix) :] for e in entries if e.startswith(prefix) and not (not where and e.split("/")[0] in subdirs)
        ]
        for f in files:
            if f.required and not any(n == f.name or fnmatch.fnmatchcase(n, f.name) for n in present):
                missing.append(prefix + f.name)
        for name in present:
            nested = next((f for f in files if f.nested and fnmatch.fnmatchcase(name, f.name)), None)
            if nested is not None and name.count("/") >= 2:
                sub = "/".join(name.split("/")[:2])
                if sub not in nested_done:
                    nested_done.add(sub)
                    _, inner = run_files(root / prefix / sub, nested.nested)
                    undeclared += [f"{prefix}{sub}/{n}" for n in inner]
                continue
            if nested is None and any(n == name or fnmatch.fnmatchcase(name, n.name) for n in files):
                continue
            if fnmatch.fnmatchcase(name.rsplit("/", 1)[-1], _TEMPORARY):
                continue
            undeclared.append(prefix + name)
    return missing, undeclared


def check_run(path: str | Path, kind: str) -> list[str]:
    """What in run directory ``path`` departs from the format of ``kind``: required files that are missing, tables
    without a declared column, files that are not declared (see :func:`run_files`). An empty list means the run
    conforms."""
    import pandas as pd

    fmt = run_format(kind)
    root = Path(path)
    missing, undeclared = run_files(root, kind)
    problems: list[str] = []
    tables = [e for e in _entries(root) if e not in undeclared]
    for f in fmt.files:
        for name in [m for m in missing if m.rpartition("/")[2] == f.name]:
            problems.append(f"{root / name}: missing")
        for name in tables if f.columns else []:
            where, _, base = name.rpartition("/")
            if (where and not _KERNEL_DIR.fullmatch(where)) or not fnmatch.fnmatchcase(base, f.name):
                continue
            table = pd.read_parquet(root / name) if name.endswith(".parquet") else pd.read_csv(root / name)
            absent = [c for c in f.columns if c not in table.columns]
            if absent:
                problems.append(f"{root / name}: no column {', '.join(absent)}")
    return problems + [f"{root / name}: not declared for {kind} runs" for name in undeclared]


def with_key_columns(table: pd.DataFrame, one_based: bool = False) -> tuple[pd.DataFrame, bool]:
    """``table`` with both key columns of :data:`KEY_COLUMNS` (``key_index`` from 0, ``key_number`` from 1), and
    whether it had to be converted: tables written before them hold one ``key`` column, 0-based in
    ``fits.parquet`` and 1-based (``one_based``) in explain's tables."""
    if ("key_index" in table.columns and "key_number" in table.columns) or "key" not in table.columns:
        return table, False
    import pandas as pd

    key = pd.to_numeric(table["key"], errors="coerce")
    index = key - 1 if one_based else key
    out = table.drop(columns="key")
    out.insert(min(table.columns.get_loc("key"), len(out.columns)), "key_index", index)
    out.insert(out.columns.get_loc("key_index") + 1, "key_number", index + 1)
    return out, True
