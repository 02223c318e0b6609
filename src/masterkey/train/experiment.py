"""Experiments: a matrix of arms (trainable / frozen keys / transferred filters ...) x seeds, optionally repeated at
several training-set sizes (a data-efficiency sweep). This module defines and reads them; they are run by
:mod:`masterkey.train.runner`, summarised by :mod:`masterkey.train.summary` and joined by
:mod:`masterkey.train.collect`.

An experiment file (TOML or JSON) holds ``seeds``, optionally ``train_sizes``, a ``[base]`` table of
:class:`TrainConfig` fields and a list of ``[[arms]]``, each a ``name`` plus the fields it changes::

    seeds = [0, 1, 2]
    train_sizes = [500, 2000]          # optional: every arm and seed at each size

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
``runs/<arm>-s<seed>/`` (``runs/<arm>-n<size>-s<seed>/`` in a sweep, plus ``efficiency.csv`` / ``.md`` / ``.png``);
it is built under ``OUT.partial`` and resumes run by run.

Training-set sizes: the run at size ``n`` trains on ``max_train_images = n``, the first ``n / C`` files (sorted by
name) of each of the ``C`` classes. Sizes must be multiples of ``C`` (checked against the data before anything
trains), so the subsets are class-balanced, **nested** (the 500 images are among the 2,000) and the same for every
arm and seed; the test set does not change with the size.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from masterkey.errors import MasterkeyError, option
from masterkey.jsonio import loads
from masterkey.keys import builtin_keysets, key_spec_label
from masterkey.nn.modes import MODES
from masterkey.reading import MAX_JSON_BYTES, read_text
from masterkey.train.config import TrainConfig

#: Largest number of training-set sizes in one sweep (each multiplies the runs).
MAX_TRAIN_SIZES = 16
#: Largest number of seeds of an experiment.
MAX_SEEDS = 1_000


@dataclass
class Arm:
    """One row of the matrix: a name and the :class:`TrainConfig` fields it sets over the base."""

    name: str
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class PlannedRun:
    """One train run of an experiment: its arm, training-set size (None outside a sweep), seed and directory name."""

    arm: Arm
    size: int | None
    seed: int

    @property
    def name(self) -> str:
        return run_name(self.arm.name, self.seed, self.size)


def run_name(arm: str, seed: int, size: int | None = None) -> str:
    """``<arm>-s<seed>``, or ``<arm>-n<size>-s<seed>`` in a sweep over training-set sizes."""
    return f"{arm}-s{seed}" if size is None else f"{arm}-n{size}-s{seed}"


@dataclass
class Experiment:
    """Arms x seeds (x training-set sizes) over a base config (a mapping of :class:`TrainConfig` fields)."""

    base: dict[str, Any]
    arms: list[Arm]
    seeds: list[int]
    source: str | None = None
    train_sizes: list[int] | None = None

    def config(self, arm: Arm, seed: int, size: int | None = None) -> TrainConfig:
        values = {**self.base, **arm.overrides, "seed": seed}
        if size is not None:
            values["max_train_images"] = size
        return TrainConfig.from_dict(values, source=f"{self.source or 'experiment'} arm '{arm.name}'")

    def planned(self) -> list[PlannedRun]:
        """Every run, arm by arm, then size by size, then seed by seed (the order runs are trained and listed)."""
        sizes: list[int | None] = list(self.train_sizes) if self.train_sizes else [None]
        return [PlannedRun(arm, size, seed) for arm in self.arms for size in sizes for seed in self.seeds]

    def select(self, names: Sequence[str]) -> Experiment:
        """Only the named arms (in the given order)."""
        by_name = {a.name: a for a in self.arms}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise MasterkeyError(
                f"{self.source or 'experiment'}: no arm named {', '.join(missing)} (arms: {', '.join(by_name)})"
            )
        return Experiment(self.base, [by_name[n] for n in names], self.seeds, self.source, self.train_sizes)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "source": self.source,
            "seeds": self.seeds,
            "base": self.base,
            "arms": [{"name": a.name, **a.overrides} for a in self.arms],
        }
        if self.train_sizes:
            out["train_sizes"] = self.train_sizes
        return out


def parse_seeds(text: str, source: str | None = None) -> list[int]:
    """Comma-separated seeds (``"0,1,2"``): each once, each in ``0 ... 2**32 - 1``, at most :data:`MAX_SEEDS`."""
    source = source or option("seeds")
    parts = [s.strip() for s in text.split(",") if s.strip()]
    if not parts or not all(p.isdigit() and int(p) < 2**32 for p in parts):
        raise MasterkeyError(
            f"{source} {text!r}: expected integers from 0 to 4,294,967,295 separated by commas, e.g. 0,1,2"
        )
    seeds = [int(p) for p in parts]
    if len(set(seeds)) != len(seeds):
        raise MasterkeyError(f"{source} {text!r}: each seed once, e.g. 0,1,2")
    if len(seeds) > MAX_SEEDS:
        raise MasterkeyError(f"{source}: {len(seeds):,} seeds, at most {MAX_SEEDS:,}")
    return seeds


def plan(
    options: dict[str, Any],
    *,
    experiment: str | Path | None = None,
    seeds: Sequence[int] | None = None,
    arms: Sequence[str] | None = None,
    train_sizes: Sequence[int] | None = None,
) -> TrainConfig | Experiment:
    """What a set of training options asks for: one run (a :class:`TrainConfig`) or an :class:`Experiment`.

    ``options`` are :class:`TrainConfig` fields (over the recipe they name). With an ``experiment`` file they
    override the file's base and every arm (``model_kwargs`` are merged into the file's; an arm without its own
    inherits the merged base ones); ``arms`` selects arms of the file, or with a single new name and a ``mode``
    among the options, defines one more. Without a file, ``seeds`` or ``train_sizes`` make a one-arm experiment.
    Every config is validated before anything trains."""
    if options.get("seed") is not None and (seeds is not None or experiment):
        raise MasterkeyError(f"{option('seed')} is for one run; with seeds or an experiment file give the seeds there")
    sizes = check_sizes(list(train_sizes), option("train_sizes")) if train_sizes else None
    if experiment:
        planned = load_experiment(experiment)
        planned.base = _merged(planned.base, options, inherit=False)
        planned.arms = [Arm(a.name, _merged(a.overrides, options, inherit=True)) for a in planned.arms]
        planned.seeds = list(seeds) if seeds is not None else planned.seeds
        planned.train_sizes = sizes or planned.train_sizes
        if arms:
            known = {a.name for a in planned.arms}
            new = [n for n in arms if n not in known]
            if new and len(arms) == 1 and options.get("mode") is not None:
                planned.arms.append(Arm(new[0], dict(options)))
            elif new:
                raise MasterkeyError(
                    f"{option('arms')}: no arm named {', '.join(new)} in {experiment} "
                    f"(arms: {', '.join(sorted(known))}); to define a new one give a single name with "
                    f"{option('mode')} (and {option('keys')})"
                )
            planned = planned.select(arms)
        for arm in planned.arms:
            planned.config(arm, planned.seeds[0])
        return planned
    if arms:
        raise MasterkeyError(f"{option('arms')} selects arms of an experiment file")
    config = TrainConfig.from_dict(dict(options), source="options")
    if seeds is None and not sizes:
        return config
    return Experiment(dict(options), [Arm(arm_name(config), {})], list(seeds or [config.seed]), None, sizes)


def _merged(values: dict[str, Any], options: dict[str, Any], inherit: bool) -> dict[str, Any]:
    """``values`` (an experiment file's base or arm) under ``options``; model kwargs merged key by key."""
    out = {**values, **{k: v for k, v in options.items() if k != "model_kwargs"}}
    if "model_kwargs" in options and ("model_kwargs" in values or not inherit):
        out["model_kwargs"] = {**values.get("model_kwargs", {}), **options["model_kwargs"]}
    return out


def standard_arms(discovered_keys: str | None = None) -> list[Arm]:
    """The matrix of the paper's training experiments: trainable, frozen paper8, frozen random (8 keys),
    key-initialised (paper8), and frozen discovered keys when a key file is given."""
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
    """A readable arm name for a single-arm experiment (``trainable``, ``frozen-paper8``, ``key-init-keys``,
    ``transfer-frozen-convnext_atto_s2_e55`` ...)."""
    mode = MODES[config.mode]
    if not (mode.uses_keys or mode.copies_filters):
        return config.mode
    label = key_spec_label(config.filters_from if mode.copies_filters else config.keys)
    return f"{config.mode}-{label}"


def parse_train_sizes(text: str, source: str | None = None) -> list[int]:
    """:func:`check_sizes` of comma-separated sizes (``"500,2000"``); ``source`` names them in errors (by default
    the ``train_sizes`` option)."""
    source = source or option("train_sizes")
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise MasterkeyError(f"{source} {text!r}: expected sizes separated by commas, e.g. 500,2000") from None
    return check_sizes(values, source)


def check_sizes(values: Any, source: str) -> list[int]:
    """Distinct positive training-set sizes, ascending (at most :data:`MAX_TRAIN_SIZES`)."""
    if (
        not isinstance(values, list)
        or not values
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)
    ):
        raise MasterkeyError(f"{source}: expected a non-empty list of positive integers, got {values!r}")
    if len(set(values)) != len(values):
        raise MasterkeyError(f"{source}: sizes {values} repeat a size")
    if len(values) > MAX_TRAIN_SIZES:
        raise MasterkeyError(f"{source}: {len(values)} sizes; at most {MAX_TRAIN_SIZES} per sweep")
    return sorted(values)


def check_train_sizes(experiment: Experiment) -> None:
    """Refuse sizes the data cannot give as class-balanced nested subsets (before anything trains): each must be a
    multiple of the class count and at most ``classes x`` the smallest class; ``max_train_images`` must not be
    set as well."""
    if not experiment.train_sizes:
        return
    from masterkey.data.decode import list_image_folder
    from masterkey.data.training import find_splits

    for arm in experiment.arms:
        config = experiment.config(arm, experiment.seeds[0])
        if {**experiment.base, **arm.overrides}.get("max_train_images") is not None:
            raise MasterkeyError(
                f"{experiment.source or 'experiment'} arm '{arm.name}': max_train_images and train sizes both given "
                "(a sweep sets max_train_images to each size)"
            )
        train_dir, _ = find_splits(config.data)
        _, labels, classes = list_image_folder(train_dir)
        smallest = min(labels.count(c) for c in range(len(classes)))
        for size in experiment.train_sizes:
            if size % len(classes):
                raise MasterkeyError(
                    f"train size {size}: not a multiple of the {len(classes)} classes of {train_dir} "
                    f"(class-balanced nested subsets take size / {len(classes)} images of each class)"
                )
            if size > smallest * len(classes):
                raise MasterkeyError(
                    f"train size {size}: {train_dir} gives at most {smallest * len(classes)} class-balanced images "
                    f"({len(classes)} classes, the smallest holds {smallest})"
                )


# ---------------------------------------------------------------------- files
def _resolve_paths(values: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """Relative paths in an experiment file are relative to the file."""
    out = dict(values)

    def rel(p: str) -> str:
        return p if os.path.isabs(p) else str((base_dir / p).resolve())

    for name in ("data", "weights", "filters_from"):
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


def _read_file(path: Path) -> Any:
    text = read_text(path, MAX_JSON_BYTES, "experiment file")  # a regular file, bounded: never a FIFO or device
    try:
        if path.suffix == ".json":
            return loads(text, path)
        try:
            import tomllib
        except ImportError:  # Python 3.10
            try:
                import tomli as tomllib
            except ImportError:
                raise MasterkeyError(
                    f"{path}: TOML needs Python 3.11+ (or pip install tomli); or write the experiment as .json"
                ) from None
        return tomllib.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MasterkeyError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'TOML'} ({exc})") from None


def load_experiment(path: str | Path) -> Experiment:
    """Read an experiment file (``.toml`` or ``.json``); see the module docstring for the format."""
    path = Path(path)
    if not os.path.lexists(path):
        raise MasterkeyError(f"{option('path', path, flag='--experiment')}: no such file")
    raw = _read_file(path)
    if not isinstance(raw, dict):
        raise MasterkeyError(f"{path}: expected a table with seeds, [base] and [[arms]]")
    unknown = sorted(set(raw) - {"seeds", "train_sizes", "base", "arms"})
    if unknown:
        raise MasterkeyError(f"{path}: unknown top-level entries {unknown} (expected seeds, train_sizes, base, arms)")
    seeds = raw.get("seeds", [0, 1, 2])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise MasterkeyError(f"{path}: seeds must be a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise MasterkeyError(f"{path}: seeds {seeds} repeat a seed")
    sizes = check_sizes(raw["train_sizes"], f"{path}: train_sizes") if "train_sizes" in raw else None
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
    experiment = Experiment(base, arms, list(seeds), str(path), sizes)
    for arm in arms:
        experiment.config(arm, seeds[0])  # every arm must make a valid config before anything trains
    return experiment
