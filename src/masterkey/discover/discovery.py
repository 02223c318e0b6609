"""What a discovery returns: :class:`Discovery` (one kernel size's keys, path, candidates, baselines and rounds) and
:class:`AccuracyRecord` (what the accuracy objective scored on), with the helpers that make them strict JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from masterkey import jsonio
from masterkey.discover.autoencoder import TrainedAutoencoder
from masterkey.discover.candidates import Candidates
from masterkey.discover.greedy import GreedyPath
from masterkey.discover.settings import DiscoverConfig
from masterkey.keys import KeySet

__all__ = ["NULLS", "AccuracyRecord", "Discovery", "objective_unit"]

#: Why a ``summary.json`` field can be null (JSON has no NaN): said once, in the summary itself.
NULLS = {
    "comparison": "null: the method has no set of that size (PCA: at most k*k-1 directions; paper8 and impulse have "
    "fixed sizes; the greedy path does not reach it)",
    "baselines.ci95": "null: one key set (no seeds to vary)",
    "baselines.span_objective": "null: the objective scores one key per channel only (accuracy)",
    "baselines.round": "null: baselines have no greedy round",
}


def objective_unit(objective: str) -> str:
    """The unit of an objective's values: ``percent`` for ``accuracy``, ``cos2`` for the others."""
    return "percent" if objective == "accuracy" else "cos2"


@dataclass
class AccuracyRecord:
    """What the accuracy objective scored on, for the summary: the setup's description and the model's layers."""

    description: dict[str, Any]  #: model / weights / data / split, as :class:`AccuracySetup` describes them
    held_out_images: int
    swapped_layers: int  #: depthwise layers of the discovered kernel size (swapped in every evaluation)
    layers_left_alone: list[str]  #: depthwise layers of other kernel sizes
    unswapped_objective: float  #: the model's own held-out top-1 (percent), before any swap


@dataclass
class Discovery:
    """What a discovery on one kernel size found."""

    kernel_size: int
    objective: str
    keys: KeySet
    candidates: list[Candidates]  #: per round
    paths: list[GreedyPath]  #: per round
    final_round: int  #: the round the keys come from (from 1)
    autoencoder: TrainedAutoencoder
    n_filters: int
    sources: list[str]
    config: DiscoverConfig
    baselines: pd.DataFrame = field(default_factory=pd.DataFrame)  #: see :data:`comparison.COLUMNS`
    baseline_keys: dict[str, KeySet] = field(default_factory=dict)
    excluded: dict[str, int] = field(default_factory=dict)  #: filters of this size left out, by reason
    accuracy: AccuracyRecord | None = None  #: with the accuracy objective
    subsampled: dict[str, dict[str, int]] = field(default_factory=dict)  #: baselines learned on a sample
    trained_with: list[int] = field(default_factory=list)  #: kernel sizes whose autoencoders trained in one stack
    timings: dict[str, float] = field(default_factory=dict)
    baseline_timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    universality: pd.DataFrame | None = None

    @property
    def elbows(self) -> dict[int, int]:
        return {i + 1: p.elbow() for i, p in enumerate(self.paths)}

    @property
    def objective_at_k(self) -> float:
        """The objective of the keys (the final round's path at their size)."""
        return self.paths[self.final_round - 1].objective_at(len(self.keys))

    @property
    def objective_unit(self) -> str:
        """The unit of every objective value: ``percent`` (held-out top-1, as
        :data:`~masterkey.runformats.ACCURACY_UNIT`) or ``cos2`` (a mean explained fraction, 0 to 1)."""
        return objective_unit(self.objective)

    def path_frame(self) -> pd.DataFrame:
        """``path.csv``: round, n_keys, objective, removed (the candidate index within that round's candidates),
        objective_unit."""
        frame = pd.concat([p.to_frame(i + 1) for i, p in enumerate(self.paths)], ignore_index=True)
        return frame.assign(objective_unit=self.objective_unit)

    def baselines_frame(self) -> pd.DataFrame:
        """``baselines.csv``: :data:`~masterkey.discover.comparison.COLUMNS` and objective_unit (of ``objective``
        and ``ci95``; ``span_objective`` is always cos²)."""
        return self.baselines.assign(objective_unit=self.objective_unit)

    def comparison(self) -> pd.DataFrame:
        """Objective vs K: one row per set size, one column per method (random: mean, with ``random_ci95``)."""
        table = self.baselines
        if table.empty:
            return pd.DataFrame({"n_keys": pd.Series(dtype=int)})
        out = table.pivot_table(index="n_keys", columns="method", values="objective", aggfunc="first")
        order = [m for m in ("discovered", "kmeans", "pca", "random", "paper8", "impulse") if m in out.columns]
        out = out[order + [c for c in out.columns if c not in order]]
        if "random" in set(table["method"]):
            ci = table[table["method"] == "random"].set_index("n_keys")["ci95"]
            out["random_ci95"] = ci.reindex(out.index)
        out.columns.name = None
        return out.reset_index()

    def span_is_degenerate(self) -> bool:
        """Whether K keys plus a constant span every k x k filter (K >= k*k - 1), so that every least-squares mix
        scores 1.0 whatever the keys: the one-key-vs-mix table says nothing then."""
        return len(self.keys) >= self.kernel_size**2 - 1

    def summary(self) -> dict[str, Any]:
        """Every number of the discovery as strict JSON (non-finite values are null; ``nulls`` says why)."""
        k = len(self.keys)
        ae = self.autoencoder
        out = {
            "kernel_size": self.kernel_size,
            "protocol": self.config.protocol,
            "objective": self.objective,
            "objective_unit": self.objective_unit,
            "n_keys": k,
            "stop": self.config.stop,
            "objective_at_k": self.objective_at_k,
            "final_round": self.final_round,
            "elbows": {str(r): e for r, e in self.elbows.items()},
            "n_filters": self.n_filters,
            "excluded": self.excluded,
            "sources": self.sources,
            "n_candidates": [len(c) for c in self.candidates],
            "evaluations": [p.evaluations for p in self.paths],
            "keys": {
                "labels": self.keys.key_labels(),
                "latents": self.keys.provenance.get("latents"),
                "shares": self.keys.provenance.get("shares"),
            },
            "autoencoder": {
                "config": asdict(ae.config),
                "steps": ae.steps,
                "stopped_early": ae.stopped_early,
                "final_loss": ae.losses[-1][1] if ae.losses else None,
                "resumed_from_step": ae.resumed_from,
                "trained_with_kernel_sizes": self.trained_with,
            },
            "span_degenerate": self.span_is_degenerate(),
            "comparison": self.comparison().to_dict(orient="records"),
            "baselines": self.baselines.to_dict(orient="records"),
            "universality": None if self.universality is None else self.universality.to_dict(orient="records"),
            "accuracy": None if self.accuracy is None else asdict(self.accuracy),
            "subsampled": self.subsampled,
            "timings_s": self.timings,
            "baseline_timings_s": self.baseline_timings,
            "notes": self.notes,
            "nulls": NULLS,
        }
        return jsonio.strict(out)[0]
