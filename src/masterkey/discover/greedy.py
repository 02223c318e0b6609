"""Greedy backward elimination of candidate keys (docs/design.md, step 3), the elbow of its path, its checkpoints.

From a set of candidates, repeatedly remove the one whose removal hurts the objective least, recording the
objective at every set size down to a floor. The path (set size vs objective) shows how many keys the bank needs;
:func:`find_elbow` picks the size where removing more starts to cost much more.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from masterkey.discover.objectives import Objective, Score
from masterkey.errors import MasterkeyError
from masterkey.files import write_json
from masterkey.progress import progress_bar

log = logging.getLogger("masterkey")

#: The greedy checkpoint is written after a removal once this many seconds have passed since the last write.
SAVE_EVERY_S = 2.0


@dataclass(frozen=True)
class GreedyStep:
    """The set after a removal: its size, score, the candidate removed to reach it (None at the start)."""

    n_keys: int
    objective: float
    secondary: float
    removed: int | None
    subset: tuple[int, ...]


@dataclass
class GreedyPath:
    """Every set along a greedy reduction, from the start set down to the floor."""

    steps: list[GreedyStep] = field(default_factory=list)
    evaluations: int = 0  #: objective evaluations this run spent (0 when everything was resumed)

    def subset_at(self, n_keys: int) -> tuple[int, ...]:
        """The candidate indices of the set with ``n_keys`` members."""
        for step in self.steps:
            if step.n_keys == n_keys:
                return step.subset
        sizes = [s.n_keys for s in self.steps]
        raise MasterkeyError(f"the greedy path has no set of {n_keys} keys (sizes {min(sizes)}..{max(sizes)})")

    def objective_at(self, n_keys: int) -> float:
        return next(s.objective for s in self.steps if s.n_keys == n_keys)

    @property
    def n_keys(self) -> np.ndarray:
        return np.array([s.n_keys for s in self.steps])

    @property
    def objective(self) -> np.ndarray:
        return np.array([s.objective for s in self.steps])

    def elbow(self) -> int:
        """Set size at the elbow of the path (see :func:`find_elbow`)."""
        return find_elbow(self.n_keys, self.objective)

    def to_frame(self, round_: int = 1) -> pd.DataFrame:
        """Columns ``round, n_keys, objective, removed`` (``removed`` is -1 for the start set)."""
        return pd.DataFrame(
            {
                "round": round_,
                "n_keys": self.n_keys,
                "objective": self.objective,
                "removed": [-1 if s.removed is None else s.removed for s in self.steps],
            }
        )

    def to_json(self) -> list[dict[str, Any]]:
        return [
            {
                "n_keys": s.n_keys,
                "objective": s.objective,
                "secondary": s.secondary,
                "removed": s.removed,
                "subset": list(s.subset),
            }
            for s in self.steps
        ]

    @classmethod
    def from_json(cls, rows: Sequence[dict[str, Any]]) -> GreedyPath:
        return cls(
            [
                GreedyStep(
                    int(r["n_keys"]),
                    float(r["objective"]),
                    float(r["secondary"]),
                    None if r["removed"] is None else int(r["removed"]),
                    tuple(int(x) for x in r["subset"]),
                )
                for r in rows
            ]
        )


def find_elbow(n_keys: Sequence[int] | np.ndarray, objective: Sequence[float] | np.ndarray) -> int:
    """The set size at the elbow of a path of (set size, objective) points.

    Kneedle rule: scale both axes to [0, 1] between the path's extremes and take the point that lies farthest above
    the chord from the smallest to the largest set — the size beyond which adding keys gains least per key. Ties go
    to the smaller size. The rule is invariant to shifting and positively scaling either axis. A path whose largest
    set is no better than its smallest has its elbow at the smallest size; a path that is never above its chord, at
    the largest.
    """
    n = np.asarray(n_keys, dtype=float)
    f = np.asarray(objective, dtype=float)
    if n.shape != f.shape or n.ndim != 1 or len(n) == 0:
        raise MasterkeyError("elbow: need matching, non-empty sequences of set sizes and objectives")
    if not np.all(np.isfinite(f)):
        raise MasterkeyError("elbow: the objective holds NaN or Inf values")
    order = np.argsort(n, kind="stable")
    n, f = n[order], f[order]
    if len(n) == 1 or n[-1] == n[0]:
        return int(n[0])
    lo, hi = f[0], f[-1]
    if hi - lo <= 1e-12 * max(1.0, float(np.abs(f).max())):
        return int(n[0])  # the largest set is no better than the smallest
    x = (n - n[0]) / (n[-1] - n[0])
    y = (f - lo) / (hi - lo)
    gain = y - x
    best = float(gain.max())
    if best <= 1e-12:
        return int(n[-1])
    return int(n[np.flatnonzero(gain >= best - 1e-12)[0]])


def _fingerprint(objective: Objective, start: Sequence[int], extra: str) -> str:
    h = hashlib.sha256()
    unit = getattr(objective, "unit", "")  # a checkpoint of fractions never resumes a path of percent
    h.update(
        json.dumps([objective.name, objective.n_candidates, list(start), extra, *([unit] if unit else [])]).encode()
    )
    candidates = getattr(objective, "candidates", None)
    if candidates is not None:
        h.update(np.ascontiguousarray(candidates.detach().cpu().numpy()).tobytes())
    return h.hexdigest()[:32]


def greedy_backward(
    objective: Objective,
    start: Sequence[int] | None = None,
    floor: int = 1,
    checkpoint: str | Path | None = None,
    checkpoint_tag: str = "",
    progress: bool = False,
    desc: str = "greedy",
    on_step: Callable[[GreedyStep], None] | None = None,
) -> GreedyPath:
    """Remove candidates one at a time, each time the one whose removal leaves the best score, down to ``floor``.

    ``start`` are the candidate indices to start from (all by default). Ties of the score (value, then secondary)
    go to the lower candidate index. With ``checkpoint`` (a JSON file) the path is saved atomically after a removal
    once :data:`SAVE_EVERY_S` have passed since the last save, and at the end, and a run with the same objective,
    candidates and start resumes from it (``checkpoint_tag`` adds anything else that must match); a damaged
    checkpoint is named in a warning and rebuilt.
    """
    members = sorted(range(objective.n_candidates) if start is None else {int(c) for c in start})
    if not members:
        raise MasterkeyError("greedy: no candidates to start from")
    if any(not 0 <= c < objective.n_candidates for c in members):
        raise MasterkeyError(f"greedy: start indices must lie in 0..{objective.n_candidates - 1}")
    if not 1 <= floor <= len(members):
        raise MasterkeyError(f"greedy: cannot reduce {len(members)} candidates to {floor}")
    path_file = Path(checkpoint) if checkpoint is not None else None
    fingerprint = _fingerprint(objective, members, checkpoint_tag)
    path = GreedyPath()
    if path_file is not None and path_file.is_file():
        try:
            saved = json.loads(path_file.read_text())
            if saved.get("fingerprint") == fingerprint:
                path = GreedyPath.from_json(saved["steps"])
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            log.warning(
                f"{path_file}: damaged greedy checkpoint ({type(exc).__name__}: {exc}); starting the path afresh"
            )
            path = GreedyPath()
    last_save = time.monotonic()

    def save(final: bool = False) -> None:
        # Every removal of an accuracy objective takes seconds and is worth keeping; the data-free one walks its
        # whole path in well under a second, where a file write per removal would cost more than the removals.
        nonlocal last_save
        if path_file is not None and (final or time.monotonic() - last_save >= SAVE_EVERY_S):
            write_json(path_file, {"fingerprint": fingerprint, "steps": path.to_json()})
            last_save = time.monotonic()

    evaluations_before = getattr(objective, "evaluations", 0)
    if not path.steps:
        score = objective.value(members)
        path.steps.append(GreedyStep(len(members), score.value, score.secondary, None, tuple(members)))
        save()
        if on_step is not None:
            on_step(path.steps[-1])
    current = list(path.steps[-1].subset)
    bar = progress_bar(
        total=len(members) - floor, initial=len(members) - len(current), desc=desc, unit="removal", enabled=progress
    )
    while len(current) > floor:
        values = objective.removal_values(current)
        best_c = max(current, key=lambda c: (values[c], -c))
        best: Score = values[best_c]
        current = [c for c in current if c != best_c]
        path.steps.append(GreedyStep(len(current), best.value, best.secondary, best_c, tuple(current)))
        save()
        if on_step is not None:
            on_step(path.steps[-1])
        bar.update(1)
        bar.set_postfix(objective=f"{best.value:.4f}")
    save(final=True)
    bar.close()
    path.evaluations = getattr(objective, "evaluations", 0) - evaluations_before
    return path
