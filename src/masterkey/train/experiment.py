"""Experiments: a matrix of arms (trainable / frozen keys / key-initialised ...) x seeds, summarised with
mean ± 95% confidence intervals (Student t) and loss / accuracy curves.

An experiment file (TOML or JSON) holds ``seeds``, a ``[base]`` table of :class:`TrainConfig` fields and a list of
``[[arms]]``, each a ``name`` plus the fields it changes::

    seeds = [0, 1, 2]

    [base]
    model = "convnext_atto"
    model_kwargs = { num_classes = 10, patch_size = 1 }
    data = "../shared/data/cifar10"   # relative paths are relative to this file
    epochs = 20

    [[arms]]
    name = "trainable"
    mode = "trainable"

    [[arms]]
    name = "frozen-paper8"
    mode = "frozen"
    keys = "paper8"

Without ``[[arms]]`` the standard matrix of :func:`standard_arms` is used. The experiment directory holds
``summary.csv``, ``summary.json``, ``summary.md``, ``curves.png`` and one train run per arm and seed under
``runs/<arm>-s<seed>/``; it is built under ``OUT.partial`` and resumes run by run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from masterkey.errors import MasterkeyError
from masterkey.files import check_output, write_json, write_lock, write_text
from masterkey.keys import builtin_keysets, load_keys
from masterkey.runs import RUN_INFO, read_run_info, write_run_info
from masterkey.stats import CONFIDENCE, mean_ci
from masterkey.train.config import TrainConfig, config_differences, normal_form
from masterkey.train.data import find_splits
from masterkey.train.distributed import barrier, init_distributed, run_on_main, shutdown
from masterkey.train.loop import StepCallback, build_model, partial_dir, publish, train

METRICS = ("test_top1", "test_top5", "test_loss", "train_loss", "best_test_top1")


@dataclass
class Arm:
    """One row of the matrix: a name and the :class:`TrainConfig` fields it sets over the base."""

    name: str
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class Experiment:
    """Arms x seeds over a base config (a mapping of :class:`TrainConfig` fields)."""

    base: dict[str, Any]
    arms: list[Arm]
    seeds: list[int]
    source: str | None = None

    def config(self, arm: Arm, seed: int) -> TrainConfig:
        values = {**self.base, **arm.overrides, "seed": seed}
        return TrainConfig.from_dict(values, source=f"{self.source or 'experiment'} arm '{arm.name}'")

    def select(self, names: Sequence[str]) -> Experiment:
        """Only the named arms (in the given order)."""
        by_name = {a.name: a for a in self.arms}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise MasterkeyError(
                f"{self.source or 'experiment'}: no arm named {', '.join(missing)} (arms: {', '.join(by_name)})"
            )
        return Experiment(self.base, [by_name[n] for n in names], self.seeds, self.source)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "seeds": self.seeds,
            "base": self.base,
            "arms": [{"name": a.name, **a.overrides} for a in self.arms],
        }


def standard_arms(discovered_keys: str | None = None) -> list[Arm]:
    """The matrix of SPEC §2.8: trainable, frozen paper8, frozen random (8 keys), key-initialised (paper8), and
    frozen discovered keys when a key file is given."""
    arms = [
        Arm("trainable", {"mode": "trainable"}),
        Arm("frozen-paper8", {"mode": "frozen", "keys": "paper8"}),
        Arm("frozen-random", {"mode": "frozen", "keys": "random:8:0", "assignment": "uniform"}),
        Arm("key-init", {"mode": "key-init", "keys": "paper8"}),
    ]
    if discovered_keys:
        arms.insert(3, Arm("frozen-discovered", {"mode": "frozen", "keys": discovered_keys, "assignment": "uniform"}))
    return arms


def arm_name(config: TrainConfig) -> str:
    """A readable arm name for a single-arm experiment (``trainable``, ``frozen-paper8``, ``key-init-keys`` ...)."""
    if config.mode == "trainable":
        return "trainable"
    spec = config.keys
    label = Path(spec).stem if Path(spec).is_file() else spec.replace(":", "-")
    return f"{config.mode}-{label}"


# ---------------------------------------------------------------------- files
def _resolve_paths(values: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """Relative paths in an experiment file are relative to the file."""
    out = dict(values)

    def rel(p: str) -> str:
        return p if os.path.isabs(p) else str((base_dir / p).resolve())

    for name in ("data", "weights"):
        if isinstance(out.get(name), str) and out[name]:
            out[name] = rel(out[name])
    keys = out.get("keys")
    if isinstance(keys, str) and keys.split(":")[0] not in builtin_keysets():
        out["keys"] = rel(keys)
    assignment = out.get("assignment")
    if isinstance(assignment, str):
        kind, sep, arg = assignment.partition(":")
        if sep and kind in ("fit", "model"):
            out["assignment"] = f"{kind}:{rel(arg)}"
    return out


def load_experiment(path: str | Path) -> Experiment:
    """Read an experiment file (``.toml`` or ``.json``); see the module docstring for the format."""
    path = Path(path)
    if not path.is_file():
        raise MasterkeyError(f"--experiment {path}: no such file")
    try:
        if path.suffix == ".json":
            raw = json.loads(path.read_text())
        else:
            try:
                import tomllib
            except ImportError:  # Python 3.10
                try:
                    import tomli as tomllib
                except ImportError:
                    raise MasterkeyError(
                        f"{path}: TOML needs Python 3.11+ (or pip install tomli); or write the experiment as .json"
                    ) from None
            raw = tomllib.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise MasterkeyError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'TOML'} ({exc})") from None
    if not isinstance(raw, dict):
        raise MasterkeyError(f"{path}: expected a table with seeds, [base] and [[arms]]")
    unknown = sorted(set(raw) - {"seeds", "base", "arms"})
    if unknown:
        raise MasterkeyError(f"{path}: unknown top-level entries {unknown} (expected seeds, base, arms)")
    seeds = raw.get("seeds", [0, 1, 2])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise MasterkeyError(f"{path}: seeds must be a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise MasterkeyError(f"{path}: seeds {seeds} repeat a seed")
    base = raw.get("base", {})
    if not isinstance(base, dict):
        raise MasterkeyError(f"{path}: [base] must be a table of training options")
    base = _resolve_paths(base, path.parent)
    arms_raw = raw.get("arms")
    if arms_raw is None:
        arms = standard_arms()
    else:
        if not isinstance(arms_raw, list) or not arms_raw:
            raise MasterkeyError(f"{path}: arms must be a non-empty list of tables ([[arms]])")
        arms = []
        for i, entry in enumerate(arms_raw, 1):
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
                raise MasterkeyError(f"{path}: arm {i} needs a name")
            values = {k: v for k, v in entry.items() if k != "name"}
            arms.append(Arm(entry["name"], _resolve_paths(values, path.parent)))
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        raise MasterkeyError(f"{path}: arm names repeat ({names})")
    if any(not n.replace("-", "").replace("_", "").replace(".", "").isalnum() for n in names):
        raise MasterkeyError(f"{path}: arm names may hold letters, digits, '-', '_' and '.' only ({names})")
    experiment = Experiment(base, arms, list(seeds), str(path))
    for arm in arms:
        experiment.config(arm, seeds[0])  # every arm must make a valid config before anything trains
    return experiment


# ---------------------------------------------------------------------- statistics
def summarize_runs(rows: pd.DataFrame | list[dict[str, Any]], reference: str | None = "trainable") -> dict[str, Any]:
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


# ---------------------------------------------------------------------- figures and tables
def _band(frames: list[pd.DataFrame], x: str, y: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    merged = pd.concat([f[[x, y]].assign(run=i) for i, f in enumerate(frames)])
    table = merged.pivot_table(index=x, columns="run", values=y)
    means, halves = [], []
    for _, values in table.iterrows():
        mean, _, half = mean_ci(values.dropna().tolist())
        means.append(mean)
        halves.append(0.0 if math.isnan(half) else half)
    return table.index.to_numpy(), np.asarray(means), np.asarray(halves)


def plot_curves(curves: dict[str, list[tuple[pd.DataFrame, pd.DataFrame]]], path: str | Path) -> None:
    """Per-step train loss, per-epoch train loss, test loss and test top-1 for every arm: the mean over seeds
    with a shaded 95% CI band. ``curves[arm]`` holds one ``(epoch_rows, step_rows)`` pair per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("step", "train_loss", "train loss (per logged step)", True),
        ("epoch", "train_loss", "train loss (epoch mean)", False),
        ("epoch", "test_loss", "test loss", False),
        ("epoch", "test_top1", "test top-1 (%)", False),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for ax, (x, y, title, steps) in zip(axes.flat, panels, strict=True):
        for arm, runs in curves.items():
            frames = [s if steps else e for e, s in runs]
            frames = [f for f in frames if len(f) and y in f]
            if not frames:
                continue
            xs, mean, half = _band(frames, x, y)
            marker = "o" if len(xs) <= 30 else None  # short curves: show the points
            (line,) = ax.plot(xs, mean, label=f"{arm} (n={len(frames)})", lw=1.5, marker=marker, ms=3)
            ax.fill_between(xs, mean - half, mean + half, color=line.get_color(), alpha=0.2, lw=0)
        ax.set_title(title)
        ax.set_xlabel(x)
        ax.grid(alpha=0.3)
    axes.flat[-1].legend(fontsize=8)
    fig.suptitle("mean over seeds, shaded: 95% CI (Student t)")
    fig.tight_layout()
    from masterkey.files import atomic_write

    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def render_markdown(summary: dict[str, Any], experiment: Experiment) -> str:
    """``summary.md``: one line per arm with mean ± 95% CI half-width and n."""

    def pm(entry: dict[str, Any], metric: str, digits: int = 2) -> str:
        m = entry.get(metric)
        if not m:
            return "-"
        if math.isnan(m["ci95"]):
            return f"{m['mean']:.{digits}f}"
        return f"{m['mean']:.{digits}f} ± {m['ci95']:.{digits}f}"

    lines = [
        "# Experiment summary",
        "",
        f"source: {experiment.source or '(command line)'}; seeds {experiment.seeds}; mean ± 95% CI half-width "
        "(Student t over seeds); accuracies in percent on the test split.",
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
    lines += ["", "![curves](curves.png)", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------- running
def _read_run(run: Path) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame]:
    summary = json.loads((run / "summary.json").read_text())
    epochs = pd.read_csv(run / "metrics.csv")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    steps = pd.DataFrame([r for r in map(json.loads, lines) if "test_top1" not in r])
    return summary, epochs, steps


def _run_row(arm: str, train_mode: str, seed: int, sub: Path) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame]:
    """One row of ``summary.csv`` for the finished run ``sub``, and its epoch / step curves."""
    summary, epochs, steps = _read_run(sub)
    row = {
        "mode": arm,
        "train_mode": train_mode,
        "keys": summary["keys"],
        "seed": seed,
        **{m: summary[m] for m in METRICS},
        **{k: summary[k] for k in ("ema_test_top1",) if k in summary},
        "train_seconds": summary["train_seconds"],
        "images_per_second": summary["images_per_second"],
        "run": str(Path("runs") / sub.name),
    }
    return row, epochs, steps


def _write_summary(
    run_dir: Path,
    experiment: Experiment,
    rows: list[dict[str, Any]],
    curves: dict[str, list[tuple[pd.DataFrame, pd.DataFrame]]],
) -> dict[str, Any]:
    """``summary.csv`` / ``.json`` / ``.md`` and ``curves.png`` of an experiment directory; returns the summary."""
    from masterkey.files import atomic_write

    frame = pd.DataFrame(rows)
    names = [a.name for a in experiment.arms]
    reference = "trainable" if "trainable" in names else None
    result = {
        "metric": "test_top1",
        "confidence": CONFIDENCE,
        "seeds": experiment.seeds,
        "arms": summarize_runs(frame, reference),
        "runs": rows,
    }
    with atomic_write(run_dir / "summary.csv", "w") as f:
        frame.to_csv(f, index=False)
    write_json(run_dir / "summary.json", result)
    write_text(run_dir / "summary.md", render_markdown(result, experiment))
    plot_curves(curves, run_dir / "curves.png")
    return result


def _check_completed(sub: Path, config: TrainConfig) -> None:
    """A completed run is reused only if it was trained with this arm's config."""
    saved = read_run_info(sub)["config"]
    kwargs = dict(config.model_kwargs)
    if "num_classes" in saved.get("model_kwargs", {}):
        kwargs.setdefault("num_classes", saved["model_kwargs"]["num_classes"])
    normalize = saved.get("normalize", config.normalize) if config.normalize == "auto" else config.normalize
    diffs = config_differences(saved, config.replace(model_kwargs=kwargs, normalize=normalize))
    if diffs:
        raise MasterkeyError(
            f"{sub} was trained with a different config ({'; '.join(diffs)}); resume with the same experiment, or "
            "start over with --overwrite"
        )


class _LinePrefix:
    """A text stream that starts every line with ``prefix`` (the run's name) before passing it on."""

    def __init__(self, stream: Any, prefix: str) -> None:
        self.stream, self.prefix, self.at_start = stream, prefix, True

    def write(self, text: str) -> int:
        out = []
        for piece in text.splitlines(keepends=True):
            out.append((self.prefix if self.at_start else "") + piece)
            self.at_start = piece.endswith(("\n", "\r"))
        self.stream.write("".join(out))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False


class _CurrentStderr(logging.Handler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted (so each run's prefix applies)."""

    def emit(self, record: logging.LogRecord) -> None:
        import sys

        print(self.format(record), file=sys.stderr)


def _train_job(config: TrainConfig, sub: Path, resume: bool) -> None:
    """One run of :func:`_train_side_by_side`, in a worker process; its output lines start with ``[run name]``.

    A worker process trains several runs one after another: each run's prefix replaces the previous one's (it
    wraps the worker's own stderr, never the previous run's wrapper)."""
    import sys

    base = sys.stderr.stream if isinstance(sys.stderr, _LinePrefix) else sys.stderr
    sys.stderr = _LinePrefix(base, f"[{sub.name}] ")  # type: ignore[assignment]
    logger = logging.getLogger("masterkey")
    if not any(isinstance(h, _CurrentStderr) for h in logger.handlers):
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("masterkey: %(message)s"))
        logger.handlers = [h for h in logger.handlers if not isinstance(h, logging.StreamHandler)] + [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False
    try:
        train(config, sub, resume=resume)
    finally:
        sys.stderr.flush()
        sys.stderr = base


def _train_side_by_side(experiment: Experiment, run_dir: Path, jobs: int) -> None:
    """Train the experiment's missing runs, ``jobs`` at a time in spawned processes, seed by seed."""
    import multiprocessing
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

    todo = []
    for seed in experiment.seeds:
        for arm in experiment.arms:
            sub = run_dir / "runs" / f"{arm.name}-s{seed}"
            if not sub.exists():
                # Several progress bars on one terminal garble each other; workers log their epochs instead.
                todo.append((experiment.config(arm, seed).replace(progress=False), sub, partial_dir(sub).exists()))
    if not todo:
        return
    # spawn, not fork: CUDA cannot be re-initialised in a forked child.
    with ProcessPoolExecutor(max_workers=min(jobs, len(todo)), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_train_job, *job) for job in todo]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in done if f.exception() is not None]
        if failed:
            pool.shutdown(cancel_futures=True)
            raise failed[0].exception()  # type: ignore[misc]


def run_experiment(
    experiment: Experiment,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    on_step: StepCallback | None = None,
    jobs: int = 1,
) -> dict[str, Any]:
    """Train every arm with every seed (in that order) and write the experiment directory ``out``.

    Completed runs are kept when resuming (after checking that they were trained with the same config; the arm
    selection may change); an interrupted run resumes from its checkpoint. Returns the summary
    (``summary.json``). Under ``torchrun`` every rank calls this; rank 0 writes.

    ``jobs > 1`` trains that many runs at once, each in its own process on the same device — for small models that
    leave a large GPU idle between kernels. They are started seed by seed (seed 0 of every arm first), so an
    experiment cut short holds whole seeds of every arm. Each run's result does not depend on ``jobs``.
    """
    out = Path(out)
    if jobs < 1:
        raise MasterkeyError(f"--jobs {jobs}: expected a positive number of runs to train at once")
    if jobs > 1 and on_step is not None:
        raise MasterkeyError("run_experiment: on_step needs jobs=1 (the runs of jobs > 1 train in other processes)")
    info, _ = init_distributed(str(experiment.base.get("device", "auto")))
    if jobs > 1 and info.world_size > 1:
        shutdown(info)
        raise MasterkeyError("--jobs trains runs side by side on one device; under torchrun every run uses all ranks")
    try:
        with contextlib.ExitStack() as stack:
            if info.is_main:
                stack.enter_context(write_lock(out))
            run_dir = partial_dir(out)

            def prepare() -> None:
                if out.exists() and not overwrite:
                    raise MasterkeyError(
                        f"{out} already exists (pass --overwrite to replace it)"
                        if not resume
                        else f"{out} is already complete; nothing to resume"
                    )
                for path in (out, run_dir):  # replaced or resumed only when they are masterkey train runs
                    check_output(path, "experiment", overwrite=True)
                if run_dir.exists():
                    if not resume and overwrite:
                        shutil.rmtree(run_dir)
                    elif not resume:
                        raise MasterkeyError(
                            f"{run_dir} holds an interrupted experiment: pass --resume to continue it or --overwrite "
                            "to start over"
                        )
                elif resume:
                    raise MasterkeyError(f"nothing to resume: neither {out} nor {run_dir} exists")
                for arm in experiment.arms:  # fail before anything trains
                    config = experiment.config(arm, experiment.seeds[0])
                    if not config.dataset:
                        find_splits(config.data)
                    if config.mode != "trainable":
                        load_keys(config.keys)
                    build_model(config)  # model name, kwargs, key kernel sizes
                run_dir.mkdir(parents=True, exist_ok=True)
                write_run_info(run_dir, "experiment", experiment.to_dict())

            run_on_main(info, prepare)
            if jobs > 1:
                _train_side_by_side(experiment, run_dir, jobs)
            rows: list[dict[str, Any]] = []
            curves: dict[str, list[tuple[pd.DataFrame, pd.DataFrame]]] = {}
            for arm in experiment.arms:
                for seed in experiment.seeds:
                    config = experiment.config(arm, seed)
                    sub = run_dir / "runs" / f"{arm.name}-s{seed}"
                    if sub.exists():
                        run_on_main(info, lambda sub=sub, config=config: _check_completed(sub, config))
                    else:
                        exists = run_on_main(info, lambda sub=sub: partial_dir(sub).exists())
                        train(config, sub, resume=exists, on_step=on_step)
                    if info.is_main:
                        row, epochs, steps = _run_row(arm.name, config.mode, seed, sub)
                        rows.append(row)
                        curves.setdefault(arm.name, []).append((epochs, steps))
            result: dict[str, Any] = {}
            if info.is_main:
                result = _write_summary(run_dir, experiment, rows, curves)
                publish(run_dir, out)
            barrier(info)
            return result
    finally:
        shutdown(info)


# ---------------------------------------------------------------------- collecting
#: Config fields that define an arm; every other non-runtime field (model, data protocol, optimiser, epochs ...)
#: must agree across the collected runs, or their comparison would mean nothing. ``data`` may differ (the same
#: data set under another path on another machine).
ARM_FIELDS = ("mode", "keys", "assignment", "learn_scale", "key_gain", "resize_keys", "weights")


def _finished_runs(source: Path) -> list[tuple[str, Path]]:
    """``(arm, run directory)`` of every finished run in an experiment directory (or its ``.partial``, when it was
    cut short) or of a single train run directory."""
    candidates = [source] if source.exists() else []
    if partial_dir(source).is_dir():
        candidates.append(partial_dir(source))
    for root in candidates:
        info = root / RUN_INFO
        saved = read_run_info(root) if info.is_file() else {}
        kind = saved.get("kind")
        if kind == "train" and (root / "summary.json").is_file():
            return [(arm_name(TrainConfig.from_dict(saved["config"], source=str(info))), root)]
        if kind == "experiment":
            runs = sorted(p for p in (root / "runs").glob("*-s*") if p.is_dir() and (p / "summary.json").is_file())
            return [(p.name.rsplit("-s", 1)[0], p) for p in runs]
    raise MasterkeyError(
        f"--collect {source}: not an experiment or train run directory (no run.json of kind 'experiment' or 'train' "
        "with finished runs, here or in a .partial beside it)"
    )


def collect_experiments(sources: Sequence[str | Path], out: str | Path, *, overwrite: bool = False) -> dict[str, Any]:
    """Summarise the finished runs of several experiment (or single-run) directories as one experiment in ``out``
    — for a matrix whose arms or seeds were trained on different machines or at different times. Nothing is
    trained. Runs are copied into ``out/runs`` (without their resume checkpoints). Every run must share the
    protocol (model, data, optimiser, epochs ...); an arm and seed may come from one source only."""
    out = Path(out)
    if not sources:
        raise MasterkeyError("--collect: give at least one experiment or run directory")
    found: dict[tuple[str, int], Path] = {}
    configs: dict[tuple[str, int], dict[str, Any]] = {}
    for source in map(Path, sources):
        for arm, run in _finished_runs(source):
            config = read_run_info(run)["config"]
            key = (arm, int(config["seed"]))
            if key in found:
                raise MasterkeyError(f"--collect: arm '{arm}' seed {key[1]} is in both {found[key]} and {run}")
            found[key], configs[key] = run, config
    runtime = TrainConfig.runtime_fields() | set(ARM_FIELDS) | {"seed", "data"}
    first_key = next(iter(configs))
    reference = configs[first_key]
    for key, config in configs.items():
        diffs = [
            f"{name}: {reference.get(name)!r} ({found[first_key]}) vs {config.get(name)!r} ({found[key]})"
            for name in sorted(set(reference) | set(config))
            if name not in runtime and normal_form(reference.get(name)) != normal_form(config.get(name))
        ]
        if diffs:
            raise MasterkeyError(f"--collect: these runs were trained differently and cannot be compared: {diffs[0]}")
    arms: dict[str, Arm] = {}
    for (arm, _), config in sorted(configs.items(), key=lambda kv: (kv[0][0] != "trainable", kv[0])):
        arms.setdefault(arm, Arm(arm, {k: config[k] for k in ARM_FIELDS if k in config}))
    seeds = sorted({seed for _, seed in found})
    base = {k: v for k, v in reference.items() if k not in runtime}
    experiment = Experiment(base, list(arms.values()), seeds, "collected from " + ", ".join(map(str, sources)))
    with write_lock(out):
        run_dir = partial_dir(out)
        check_output(out, "experiment", overwrite=overwrite, inputs=sources)
        check_output(run_dir, "experiment", overwrite=True, inputs=sources)
        if run_dir.exists():
            shutil.rmtree(run_dir)
        (run_dir / "runs").mkdir(parents=True)
        info = experiment.to_dict() | {"collected_from": [str(Path(s).resolve()) for s in sources]}
        write_run_info(run_dir, "experiment", info)
        rows: list[dict[str, Any]] = []
        curves: dict[str, list[tuple[pd.DataFrame, pd.DataFrame]]] = {}
        for arm in experiment.arms:
            for seed in seeds:
                if (arm.name, seed) not in found:
                    continue
                sub = run_dir / "runs" / f"{arm.name}-s{seed}"
                shutil.copytree(found[(arm.name, seed)], sub, ignore=shutil.ignore_patterns("checkpoint.pt", ".*"))
                row, epochs, steps = _run_row(arm.name, str(arm.overrides["mode"]), seed, sub)
                rows.append(row)
                curves.setdefault(arm.name, []).append((epochs, steps))
        result = _write_summary(run_dir, experiment, rows, curves)
        publish(run_dir, out)
    return result
