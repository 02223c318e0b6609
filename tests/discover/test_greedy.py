from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from masterkey.discover.greedy import find_elbow, greedy_backward
from masterkey.discover.objectives import Score, VarianceObjective
from masterkey.errors import MasterkeyError
from masterkey.normalize import center_norm


@settings(max_examples=80, deadline=None)
@given(
    st.integers(1, 5),  # smallest set size
    st.integers(2, 30),  # kink offset
    st.integers(2, 30),  # tail length
    st.floats(0.5, 10.0),  # steep slope
    st.floats(0.0, 0.4),  # shallow slope, as a fraction of the steep one
)
def test_elbow_is_the_kink_of_a_concave_piecewise_linear_path(
    low: int, offset: int, tail: int, steep: float, ratio: float
) -> None:
    kink = low + offset
    n = np.arange(low, kink + tail + 1)
    f = np.where(n <= kink, steep * (n - low), steep * offset + ratio * steep * (n - kink))
    assert find_elbow(n[::-1], f[::-1]) == kink


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0.0, 1.0), min_size=3, max_size=25),
    st.floats(0.01, 100.0),
    st.floats(-100.0, 100.0),
)
def test_elbow_ignores_shifting_and_scaling_the_objective(values: list[float], scale: float, shift: float) -> None:
    f = np.maximum.accumulate(np.asarray(values))  # a path that never loses by adding keys
    assume(f[-1] - f[0] > 1e-3)
    n = np.arange(1, len(f) + 1)
    assert find_elbow(n, f) == find_elbow(n, scale * f + shift)


def test_elbow_edge_cases() -> None:
    assert find_elbow([3, 2, 1], [0.5, 0.5, 0.5]) == 1  # flat: the smallest set is as good
    assert find_elbow([4], [0.2]) == 4
    assert find_elbow([1, 2, 3, 4], [0.0, 1.0, 2.0, 3.0]) == 4  # straight line: never above the chord
    with pytest.raises(MasterkeyError, match="NaN"):
        find_elbow([1, 2], [0.1, float("nan")])
    with pytest.raises(MasterkeyError, match="matching"):
        find_elbow([1, 2], [0.1])


def _objective(seed: int, n_filters: int = 60, n_cands: int = 7, groups: bool = True) -> VarianceObjective:
    g = torch.Generator().manual_seed(seed)
    filters = center_norm(torch.randn(n_filters, 3, 3, generator=g))
    cands = center_norm(torch.randn(n_cands, 3, 3, generator=g))
    weights = None
    if groups:
        from masterkey.discover.objectives import source_weights

        weights = source_weights(np.array(["a", "b", "b"] * (n_filters // 3)), n_filters)
    return VarianceObjective(filters, cands, weights)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000))
def test_removal_values_are_exact(seed: int) -> None:
    obj = _objective(seed)
    subset = [0, 2, 3, 5, 6]
    values = obj.removal_values(subset)
    for c in subset:
        assert values[c].value == pytest.approx(obj.value([m for m in subset if m != c]).value, abs=1e-12)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000))
def test_greedy_takes_the_best_removal_each_step(seed: int) -> None:
    obj = _objective(seed)
    path = greedy_backward(obj, progress=False)
    assert [s.n_keys for s in path.steps] == list(range(7, 0, -1))
    for before, after in itertools.pairwise(path.steps):
        best = max(obj.value([m for m in before.subset if m != c]).value for c in before.subset)
        assert after.objective == pytest.approx(best, abs=1e-12)
        assert set(after.subset) == set(before.subset) - {after.removed}
    # Removing keys never helps a best-fit objective.
    assert all(a.objective >= b.objective - 1e-12 for a, b in itertools.pairwise(path.steps))


def test_greedy_checkpoint_resumes(tmp_path: Path) -> None:
    obj = _objective(3)
    ckpt = tmp_path / "greedy.json"
    full = greedy_backward(obj, checkpoint=ckpt, progress=False)
    saved = json.loads(ckpt.read_text())
    saved["steps"] = saved["steps"][:3]  # as if interrupted after two removals
    ckpt.write_text(json.dumps(saved))

    calls = []

    class Counting:
        name, n_candidates, candidates = obj.name, obj.n_candidates, obj.candidates

        def value(self, subset: list[int]) -> Score:
            return obj.value(subset)

        def removal_values(self, subset: list[int]) -> dict[int, Score]:
            calls.append(len(subset))
            return obj.removal_values(subset)

        def score_keys(self, keys: object) -> Score:
            raise AssertionError

    resumed = greedy_backward(Counting(), checkpoint=ckpt, progress=False)
    assert [s.subset for s in resumed.steps] == [s.subset for s in full.steps]
    assert calls == [5, 4, 3, 2]  # only the removals after the checkpoint were evaluated


def test_greedy_rejects_bad_requests() -> None:
    obj = _objective(0)
    with pytest.raises(MasterkeyError, match="cannot reduce"):
        greedy_backward(obj, start=[0, 1], floor=3, progress=False)
    with pytest.raises(MasterkeyError, match="0..6"):
        greedy_backward(obj, start=[0, 9], progress=False)
    path = greedy_backward(obj, floor=4, progress=False)
    with pytest.raises(MasterkeyError, match="no set of 2 keys"):
        path.subset_at(2)


class _Scripted:
    """An objective whose removal scores are given: ``scores[frozenset(subset)]`` (default 0)."""

    name = "scripted"
    candidates = None

    def __init__(self, n: int, scores: dict[frozenset[int], Score]) -> None:
        self.n_candidates = n
        self.scores = scores

    def value(self, subset) -> Score:
        return self.scores.get(frozenset(subset), Score(0.0))

    def removal_values(self, subset) -> dict[int, Score]:
        return {c: self.value([m for m in subset if m != c]) for c in subset}

    def score_keys(self, keys) -> Score:
        raise AssertionError


def test_greedy_ties_go_to_the_lower_candidate_index() -> None:
    """Removing 1 or 3 scores the same (and better than removing 0 or 2): candidate 1 goes, whatever order the
    objective lists them in."""
    tie = Score(0.5, 0.25)
    scores = {frozenset({0, 2, 3}): tie, frozenset({0, 1, 2}): tie, frozenset({1, 2, 3}): Score(0.4)}
    path = greedy_backward(_Scripted(4, scores), floor=3, progress=False)
    assert path.steps[1].removed == 1


def test_greedy_breaks_ties_of_the_value_by_the_secondary_score() -> None:
    """Equal top-1 (value), different log-likelihood (secondary): the removal that keeps the higher secondary wins,
    even when it is the higher candidate index."""
    scores = {frozenset({1, 2}): Score(0.5, -2.0), frozenset({0, 1}): Score(0.5, -1.0)}
    path = greedy_backward(_Scripted(3, scores), floor=2, progress=False)
    assert path.steps[1].removed == 2
    assert (path.steps[1].objective, path.steps[1].secondary) == (0.5, -1.0)


def test_a_damaged_greedy_checkpoint_is_named_and_rebuilt(tmp_path: Path, caplog) -> None:
    import logging

    obj = _objective(4)
    ckpt = tmp_path / "greedy.json"
    full = greedy_backward(obj, checkpoint=ckpt, progress=False)
    ckpt.write_text('{"fingerprint": ')  # cut off
    with caplog.at_level(logging.WARNING, logger="masterkey"):
        again = greedy_backward(obj, checkpoint=ckpt, progress=False)
    assert f"{ckpt}: damaged greedy checkpoint" in caplog.text
    assert [s.subset for s in again.steps] == [s.subset for s in full.steps]
    assert json.loads(ckpt.read_text())["steps"][-1]["n_keys"] == 1  # rewritten, complete


def test_the_kept_round_is_the_best_at_k_or_the_last() -> None:
    from masterkey.discover.greedy import GreedyPath, GreedyStep
    from masterkey.discover.rounds import choose_round

    def path(values: dict[int, float]) -> GreedyPath:
        return GreedyPath(
            [GreedyStep(n, v, 0.0, None, tuple(range(n))) for n, v in sorted(values.items(), reverse=True)]
        )

    first, second = path({4: 0.9, 3: 0.8, 2: 0.5}), path({4: 0.95, 3: 0.7, 2: 0.6})
    paths, sizes = [first, second], [4, 4]
    assert choose_round(paths, sizes, 3, "best") == 0 and choose_round(paths, sizes, 2, "best") == 1
    assert choose_round(paths, sizes, 3, "last") == 1
    assert choose_round([first, path({4: 0.9, 3: 0.8})], sizes, 3, "best") == 0  # ties: the first round
    assert choose_round(paths, sizes, 1, "best") is None  # no path reaches 1
