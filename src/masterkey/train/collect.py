"""Joining experiments trained apart (``masterkey train --collect``): the finished runs of several experiment or
train run directories summarised as one experiment, nothing trained."""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from masterkey.errors import MasterkeyError, option
from masterkey.files import check_output, write_lock
from masterkey.nn.modes import REFERENCE
from masterkey.runs import RUN_INFO, read_run_info, write_run_info
from masterkey.train.config import TrainConfig, normal_form
from masterkey.train.experiment import Arm, Experiment, arm_name
from masterkey.train.loop import partial_dir, publish
from masterkey.train.summary import Curves, run_row, write_summary

#: Config fields that define an arm; every other non-runtime field (model, data protocol, optimiser, epochs ...)
#: must agree across the collected runs, or their comparison would mean nothing. ``data`` may differ (the same
#: data set under another path on another machine).
ARM_FIELDS = (
    "mode",
    "keys",
    "assignment",
    "learn_scale",
    "key_gain",
    "resize_keys",
    "weights",
    "new_head",
    "init_from",
    "sigma_scope",
    "filters_from",
)

#: ``(arm, training-set size or None, seed)``: where a finished run belongs.
RunKey = tuple[str, int | None, int]


def _finished_runs(source: Path) -> list[tuple[str, int | None, Path]]:
    """``(arm, size, run directory)`` of every finished run in an experiment directory (or its ``.partial``, when it
    was cut short) or of a single train run directory; ``size`` is the training-set size of a sweep's run."""
    candidates = [source] if source.exists() else []
    if partial_dir(source).is_dir():
        candidates.append(partial_dir(source))
    for root in candidates:
        info = root / RUN_INFO
        saved = read_run_info(root) if info.is_file() else {}
        kind = saved.get("kind")
        if kind == "train" and (root / "summary.json").is_file():
            return [(arm_name(TrainConfig.from_dict(saved["config"], source=str(info))), None, root)]
        if kind == "experiment":
            sweep = bool((saved.get("config") or {}).get("train_sizes"))
            runs = sorted(p for p in (root / "runs").glob("*-s*") if p.is_dir() and (p / "summary.json").is_file())
            out: list[tuple[str, int | None, Path]] = []
            for p in runs:
                found = re.fullmatch(r"(.+)-n(\d+)-s-?\d+", p.name) if sweep else None
                if found:
                    out.append((found.group(1), int(found.group(2)), p))
                else:
                    out.append((p.name.rsplit("-s", 1)[0], None, p))
            return out
    raise MasterkeyError(
        f"{option('sources', source, flag='--collect')}: not an experiment or train run directory (no run.json of "
        "kind 'experiment' or 'train' "
        "with finished runs, here or in a .partial beside it)"
    )


def _gather(sources: Sequence[str | Path]) -> tuple[dict[RunKey, Path], dict[RunKey, dict[str, Any]]]:
    found: dict[RunKey, Path] = {}
    configs: dict[RunKey, dict[str, Any]] = {}
    for source in map(Path, sources):
        for arm, size, run in _finished_runs(source):
            config = read_run_info(run)["config"]
            key = (arm, size, int(config["seed"]))
            if key in found:
                at = f" size {size}" if size is not None else ""
                raise MasterkeyError(
                    f"{option('sources', flag='--collect')}: arm '{arm}'{at} seed {key[2]} is in both {found[key]} "
                    f"and {run}"
                )
            found[key], configs[key] = run, config
    sized = {key[1] is not None for key in found}
    if len(sized) > 1:
        raise MasterkeyError(
            f"{option('sources', flag='--collect')}: a sweep over training-set sizes and runs without sizes cannot "
            "be joined"
        )
    return found, configs


def _check_protocol(found: dict[RunKey, Path], configs: dict[RunKey, dict[str, Any]], sweep: bool) -> dict[str, Any]:
    """The shared protocol of the runs (refused, naming the first difference, when they were trained apart)."""
    runtime = TrainConfig.runtime_fields() | set(ARM_FIELDS) | {"seed", "data"}
    if sweep:
        runtime |= {"max_train_images"}
    first_key = next(iter(configs))
    reference = configs[first_key]
    for key, config in configs.items():
        diffs = [
            f"{name}: {reference.get(name)!r} ({found[first_key]}) vs {config.get(name)!r} ({found[key]})"
            for name in sorted(set(reference) | set(config))
            if name not in runtime and normal_form(reference.get(name)) != normal_form(config.get(name))
        ]
        if diffs:
            raise MasterkeyError(
                f"{option('sources', flag='--collect')}: these runs were trained differently and cannot be compared: "
                f"{diffs[0]}"
            )
    return {k: v for k, v in reference.items() if k not in runtime}


def collect_experiments(sources: Sequence[str | Path], out: str | Path, *, overwrite: bool = False) -> dict[str, Any]:
    """Summarise the finished runs of several experiment (or single-run) directories as one experiment in ``out``
    — for a matrix whose arms or seeds were trained on different machines or at different times. Nothing is
    trained. Runs are copied into ``out/runs`` (without their resume checkpoints). Every run must share the
    protocol (model, data, optimiser, epochs ...); an arm and seed (and training-set size) may come from one source
    only. Runs of sweeps over training-set sizes join as a sweep."""
    out = Path(out)
    if not sources:
        raise MasterkeyError(f"{option('sources', flag='--collect')}: give at least one experiment or run directory")
    found, configs = _gather(sources)
    sweep = any(key[1] is not None for key in found)
    base = _check_protocol(found, configs, sweep)
    arms: dict[str, Arm] = {}
    for (arm, _, _), config in sorted(configs.items(), key=lambda kv: (kv[0][0] != REFERENCE, kv[0][0])):
        arms.setdefault(arm, Arm(arm, {k: config[k] for k in ARM_FIELDS if k in config}))
    seeds = sorted({seed for _, _, seed in found})
    sizes = sorted({size for _, size, _ in found if size is not None}) or None
    experiment = Experiment(base, list(arms.values()), seeds, "collected from " + ", ".join(map(str, sources)), sizes)
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
        curves: Curves = {}
        for planned in experiment.planned():
            key = (planned.arm.name, planned.size, planned.seed)
            if key not in found:
                continue
            sub = run_dir / "runs" / planned.name
            shutil.copytree(found[key], sub, ignore=shutil.ignore_patterns("checkpoint.pt", ".*"))
            mode = str(planned.arm.overrides["mode"])
            row, epochs, steps = run_row(planned.arm.name, mode, planned.seed, sub, planned.size)
            rows.append(row)
            label = planned.arm.name if planned.size is None else f"{planned.arm.name}-n{planned.size}"
            curves.setdefault(label, []).append((epochs, steps))
        result = write_summary(run_dir, experiment, rows, curves)
        publish(run_dir, out)
    return result
