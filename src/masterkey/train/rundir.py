"""The run directory of a training run: ``OUT.partial`` while training (every file written atomically), renamed to
``OUT`` when training ends, so ``OUT`` is always complete; the metrics files and the final exports.

A complete ``OUT`` keeps its ``checkpoint.pt``: ``--resume --epochs N`` continues it (copied to ``OUT.partial``,
trained on, and put back in place only when done).
"""

from __future__ import annotations

import contextlib
import csv
import io
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from torch import nn

from masterkey.errors import MasterkeyError, option
from masterkey.files import (
    OutputBusyError,
    atomic_write,
    check_output,
    missing_parents,
    remove_empty_folders,
    remove_stale_temporaries,
    replace_directory,
    safetensors_bytes,
    write_json,
    write_text,
)
from masterkey.jsonio import dumps, dumps_line
from masterkey.nn.export import export_state_dict
from masterkey.reading import read_json
from masterkey.runformats import check_columns
from masterkey.train.config import TrainConfig
from masterkey.train.state import CHECKPOINT

EPOCH_COLUMNS = ["epoch", "step", "lr", "train_loss", "train_acc", "test_loss", "test_top1", "test_top5", "seconds"]

#: What :func:`check_out` finds: a new run, an interrupted one (with or without a checkpoint), a complete one to
#: continue with more epochs.
FRESH, RESUME, RESTART, EXTEND = "fresh", "resume", "restart", "extend"


def partial_dir(out: str | Path) -> Path:
    """Where a run lives until it completes: ``OUT.partial`` beside ``OUT``."""
    out = Path(out)
    return out.with_name(f"{out.name}.partial")


def config_inputs(config: TrainConfig) -> list[str | None]:
    """The files and folders a run reads (its output must be none of them, nor lie inside one)."""
    from masterkey.nn.modes import MODES

    keys = config.keys if MODES[config.mode].uses_keys else None
    init = None if (config.init_from or "").startswith("timm:") else config.init_from
    return [config.data, config.weights, keys, config.filters_from, init]


def check_out(
    out: Path, resume: bool, overwrite: bool, epochs: int | None = None, inputs: Iterable[str | None] = ()
) -> str:
    """Check the output location (changing nothing; ``inputs``: what the run reads, see :func:`config_inputs`);
    returns :data:`FRESH`, :data:`RESUME` (``OUT.partial`` holds a checkpoint), :data:`RESTART` (it holds none) or
    :data:`EXTEND` (``OUT`` is complete and ``epochs`` is more than it trained: train it longer)."""
    partial = partial_dir(out)
    inputs = list(inputs)
    for path in (out, partial):  # replaced or resumed only when they are masterkey train runs
        check_output(path, "train", overwrite=True, inputs=inputs)
    if partial.exists():
        if resume:
            return RESUME if (partial / CHECKPOINT).is_file() else RESTART
        if not overwrite:
            raise MasterkeyError(
                f"{partial} holds an interrupted run: pass {option('resume', True)} to continue it or "
                f"{option('overwrite', True)} to start over"
            )
        return FRESH
    if out.exists() and not overwrite:
        if resume:
            if (out / CHECKPOINT).is_file():
                _check_longer(out, epochs)
                return EXTEND
            raise MasterkeyError(f"{out} is already complete and holds no {CHECKPOINT} to continue from")
        raise MasterkeyError(f"{out} already exists (pass {option('overwrite', True)} to replace it)")
    if resume and not out.exists():
        raise MasterkeyError(f"nothing to resume: neither {out} nor {partial} exists")
    return FRESH


def _check_longer(out: Path, epochs: int | None) -> None:
    try:
        done = int(read_json(out / "summary.json", "training summary")["epochs"])
    except MasterkeyError:
        raise
    except (OSError, ValueError, KeyError, TypeError):
        return  # the checkpoint decides (see masterkey.train.loop)
    if epochs is not None and epochs <= done:
        raise already_complete(out, done)


def already_complete(out: Path, done: int) -> MasterkeyError:
    """The error for resuming a complete run of ``done`` epochs without asking for more."""
    return MasterkeyError(
        f"{out} is already complete ({done} epochs); nothing to resume (pass {option('epochs', 'N')} with N > {done} "
        f"to train it longer, or {option('overwrite', True)} to train again)"
    )


def checkpoint_path(out: Path, plan: str) -> Path:
    """Where the checkpoint to resume from lies."""
    return (out if plan == EXTEND else partial_dir(out)) / CHECKPOINT


def start_out(out: Path, plan: str) -> None:
    """Create ``OUT.partial`` once the inputs are checked: empty for a fresh run (an old interrupted one is removed),
    a copy of ``OUT`` to continue it."""
    partial = partial_dir(out)
    if plan == FRESH and partial.exists():
        shutil.rmtree(partial)
    if plan == EXTEND:
        shutil.copytree(out, partial, ignore=shutil.ignore_patterns(".*"))
    partial.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(partial)  # files a run killed while saving left half-written


@contextlib.contextmanager
def failed_run_cleanup(out: str | Path) -> Iterator[None]:
    """Around a run (or an experiment) writing ``out``: when it fails, an ``OUT.partial`` it started is removed
    (with the folders created for it) unless it holds work to resume (a checkpoint or a finished run), and then a
    :class:`MasterkeyError` says so and how to continue."""
    partial = partial_dir(out)
    existed, created = partial.exists(), missing_parents(out)
    try:
        yield
    except OutputBusyError:
        raise
    except Exception as exc:
        kept = partial.is_dir() and any(p.name in (CHECKPOINT, "summary.json") for p in partial.rglob("*"))
        if partial.is_dir() and not existed and not kept:
            shutil.rmtree(partial, ignore_errors=True)
            remove_empty_folders(created)
        if kept and isinstance(exc, MasterkeyError) and "the work so far is kept" not in str(exc):
            raise MasterkeyError(
                f"{exc}; the work so far is kept in {partial}: continue it with {option('resume', True)}"
            ) from exc
        raise


def publish(partial: Path, out: Path) -> None:
    """Rename the finished ``OUT.partial`` to ``OUT`` (replacing an old ``OUT`` only now)."""
    replace_directory(partial, out)


def _csv_text(rows: list[dict[str, Any]]) -> str:
    rows = [{k: v for k, v in row.items() if not isinstance(v, (list, dict))} for row in rows]
    columns = list(EPOCH_COLUMNS)
    for row in rows:
        columns += [c for c in row if c not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_metrics(run_dir: Path, epoch_rows: list[dict[str, Any]], step_rows: list[dict[str, Any]]) -> None:
    """``metrics.csv`` (one row per epoch; per-rank lists left out) and ``metrics.jsonl`` (step rows and epoch rows
    in step order, with the per-rank lists)."""
    text = _csv_text(epoch_rows)
    check_columns("train", "metrics.csv", text.partition("\n")[0].split(","))
    write_text(run_dir / "metrics.csv", text)
    merged = sorted([*step_rows, *epoch_rows], key=lambda r: (r["step"], "test_top1" in r))
    write_text(run_dir / "metrics.jsonl", "".join(dumps_line(r) + "\n" for r in merged))


def write_final(
    run_dir: Path,
    model: nn.Module,
    ema: Any,
    config: TrainConfig,
    summary: dict[str, Any],
    preprocessing: Any = None,
) -> None:
    """``model.safetensors`` (and ``model_ema.safetensors``): plain timm state dicts with the keys materialised and
    metadata naming the architecture and the test images' ``preprocessing`` (a
    :class:`~masterkey.data.preprocessing.Preprocessing`: image size, mean / std), which swap and discover use to
    evaluate the model as it was trained; ``summary.json``."""
    meta = {
        "arch": config.model.partition(":")[2] or config.model,
        "model_kwargs": dumps(config.model_kwargs, indent=None, sort_keys=True),
        "mode": config.mode,
        "keys": str(summary["keys"]),
        "seed": str(config.seed),
        "epochs": str(config.epochs),
        "test_top1": f"{summary['test_top1']:.2f}",
        "format": "pt",
    }
    for name in ("num_classes", "patch_size", "in_chans"):
        if name in config.model_kwargs:
            meta[name] = str(config.model_kwargs[name])
    if preprocessing is not None:
        from masterkey.data.preprocessing import METADATA_KEY

        meta[METADATA_KEY] = dumps(preprocessing.to_dict(), indent=None)
    for name, net in (("model", model), ("model_ema", ema.module if ema is not None else None)):
        if net is None:
            continue
        state = {k: v.contiguous() for k, v in export_state_dict(net).items()}
        with atomic_write(run_dir / f"{name}.safetensors") as f:
            f.write(safetensors_bytes(state, metadata=meta))  # bitwise identical for identical runs
    write_json(run_dir / "summary.json", summary)
