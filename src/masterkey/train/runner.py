"""Running an experiment: every planned run (arm x size x seed) trained in turn, or ``jobs`` at a time in spawned
processes on one device, into an experiment directory that resumes run by run; then the summary."""

from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path
from typing import Any

from masterkey.data.training import find_splits
from masterkey.errors import MasterkeyError, option
from masterkey.files import check_output, write_lock
from masterkey.keys import load_keys
from masterkey.nn.modes import MODES
from masterkey.runs import read_run_info, write_run_info
from masterkey.train.config import TrainConfig, config_differences
from masterkey.train.distributed import barrier, init_distributed, run_on_main, shutdown
from masterkey.train.experiment import Experiment, check_train_sizes
from masterkey.train.loop import StepCallback, build_model, partial_dir, publish, train
from masterkey.train.rundir import config_inputs, failed_run_cleanup
from masterkey.train.summary import Curves, run_row, write_summary


def _check_completed(sub: Path, config: TrainConfig) -> None:
    """A completed run is reused only if it was trained with this arm's config."""
    saved = read_run_info(sub)["config"]
    kwargs = dict(config.model_kwargs)
    if "num_classes" in saved.get("model_kwargs", {}):
        kwargs.setdefault("num_classes", saved["model_kwargs"]["num_classes"])
    normalize = saved.get("normalize", config.normalize) if config.normalize == "auto" else config.normalize
    resolved = config.replace(model_kwargs=kwargs, normalize=normalize, assignment=config.key_assignment())
    diffs = config_differences(saved, resolved)
    if diffs:
        raise MasterkeyError(
            f"{sub} was trained with a different config ({'; '.join(diffs)}); resume with the same experiment, or "
            f"start over with {option('overwrite', True)}"
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

    planned = sorted(experiment.planned(), key=lambda p: (experiment.seeds.index(p.seed), p.size or 0))
    todo = []
    for run in planned:
        sub = run_dir / "runs" / run.name
        if not sub.exists():
            # Several progress bars on one terminal garble each other; workers log their epochs instead.
            config = experiment.config(run.arm, run.seed, run.size).replace(progress=False)
            todo.append((config, sub, partial_dir(sub).exists()))
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


def _prepare(experiment: Experiment, out: Path, run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Check the output location and every arm (data, keys, model, training-set sizes) before anything trains."""
    if out.exists() and not overwrite:
        raise MasterkeyError(
            f"{out} already exists (pass {option('overwrite', True)} to replace it)"
            if not resume
            else f"{out} is already complete; nothing to resume"
        )
    configs = [experiment.config(arm, experiment.seeds[0]) for arm in experiment.arms]
    reads = [experiment.source, *(x for c in configs for x in config_inputs(c))]
    for path in (out, run_dir):  # replaced or resumed only when they are masterkey experiments
        check_output(path, "experiment", overwrite=True, inputs=reads)
    if run_dir.exists():
        if not resume and overwrite:
            shutil.rmtree(run_dir)
        elif not resume:
            raise MasterkeyError(
                f"{run_dir} holds an interrupted experiment: pass {option('resume', True)} to continue it or "
                f"{option('overwrite', True)} to start over"
            )
    elif resume:
        raise MasterkeyError(f"nothing to resume: neither {out} nor {run_dir} exists")
    for config in configs:  # fail before anything trains
        if not config.dataset:
            find_splits(config.data)
        if MODES[config.mode].uses_keys:
            load_keys(config.keys)
        build_model(config)  # model name, kwargs, key kernel sizes, transferred filters
    check_train_sizes(experiment)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_run_info(run_dir, "experiment", experiment.to_dict())


def run_experiment(
    experiment: Experiment,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    on_step: StepCallback | None = None,
    jobs: int = 1,
) -> dict[str, Any]:
    """Train every arm with every seed (at every training-set size of a sweep; in that order) and write the
    experiment directory ``out``.

    Completed runs are kept when resuming (after checking that they were trained with the same config; the arm
    selection may change); an interrupted run resumes from its checkpoint. Returns the summary
    (``summary.json``). Under ``torchrun`` every rank calls this; rank 0 writes.

    ``jobs > 1`` trains that many runs at once, each in its own process on the same device — for small models that
    leave a large GPU idle between kernels. They are started seed by seed (seed 0 of every arm first), so an
    experiment cut short holds whole seeds of every arm. Each run's result does not depend on ``jobs``.
    """
    out = Path(out)
    if jobs < 1:
        raise MasterkeyError(f"{option('jobs', jobs)}: expected a positive number of runs to train at once")
    if jobs > 1 and on_step is not None:
        raise MasterkeyError("run_experiment: on_step needs jobs=1 (the runs of jobs > 1 train in other processes)")
    info, _ = init_distributed(str(experiment.base.get("device", "auto")))
    if jobs > 1 and info.world_size > 1:
        shutdown(info)
        raise MasterkeyError(
            f"{option('jobs')} trains runs side by side on one device; under torchrun every run uses all ranks"
        )
    try:
        with contextlib.ExitStack() as stack:
            if info.is_main:
                stack.enter_context(failed_run_cleanup(out))
                stack.enter_context(write_lock(out))
            run_dir = partial_dir(out)
            run_on_main(info, lambda: _prepare(experiment, out, run_dir, resume, overwrite))
            if jobs > 1:
                _train_side_by_side(experiment, run_dir, jobs)
            rows: list[dict[str, Any]] = []
            curves: Curves = {}
            for run in experiment.planned():
                config = experiment.config(run.arm, run.seed, run.size)
                sub = run_dir / "runs" / run.name
                if sub.exists():
                    run_on_main(info, lambda sub=sub, config=config: _check_completed(sub, config))
                else:
                    exists = run_on_main(info, lambda sub=sub: partial_dir(sub).exists())
                    train(config, sub, resume=exists, on_step=on_step)
                if info.is_main:
                    row, epochs, steps = run_row(run.arm.name, config.mode, run.seed, sub, run.size)
                    rows.append(row)
                    label = run.arm.name if run.size is None else f"{run.arm.name}-n{run.size}"
                    curves.setdefault(label, []).append((epochs, steps))
            result: dict[str, Any] = {}
            if info.is_main:
                result = write_summary(run_dir, experiment, rows, curves)
                publish(run_dir, out)
            barrier(info)
            return result
    finally:
        shutdown(info)
