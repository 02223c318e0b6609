"""The configuration of key discovery: :class:`AutoencoderConfig`, :class:`DiscoverConfig` and the two protocols.

They live here, apart from the torch code that uses them, so that ``masterkey discover --help`` shows the real
defaults without importing torch.

Protocols: ``"masterkey"`` (the default) and ``"paper"``, the pipeline as the paper and its authors describe it
(SPEC §2 items 3–5): a plain autoencoder (no sign symmetry, ReLU, the loss ``1 - cos``, no latent-spread term),
filters sampled uniformly, ~50 latents evenly spaced over [0, 1], no de-duplication, the keys where the greedy path
of the second round bends (its elbow), in path order. :func:`protocol_config` builds either; docs/discover.md lists
every difference with its measured effect.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from masterkey.errors import MasterkeyError, option

#: Losses of the autoencoder (see :func:`masterkey.discover.autoencoder.reconstruction_loss`).
LOSSES = ("cosine", "mse", "signed-cosine")
#: Activations of the autoencoder's hidden layers.
ACTIVATIONS = ("silu", "relu")

#: Baselines scored beside the discovered keys (see :mod:`masterkey.discover.baselines`).
BASELINES = ("kmeans", "pca", "random", "impulse", "paper8")

#: k-means learns its keys on at most this many filters: a seeded sample drawn with the objective's weights (so
#: sources count as they do in the objective); the keys are then polished and scored on every filter. The default
#: bank's largest kernel size (9,742 filters) is below it and is clustered whole.
KMEANS_SAMPLE = 16384

#: How candidate latents are spread (see :func:`masterkey.discover.candidates.latent_grid`).
SPACINGS = ("range", "unit", "quantile")
#: What counts equally in the autoencoder's sampling and the data-free objective.
WEIGHTINGS = ("source", "filter")
#: Where the greedy path stops: at K keys, or at the elbow of the final round's path.
STOPS = ("k", "elbow")
#: Which round's keys are kept: the better at K, or the last round's.
ROUND_CHOICES = ("best", "last")
#: How the final keys are ordered: by their share of the filters, or as on the greedy path (by candidate index).
ORDERS = ("share", "path")
#: The protocols :func:`protocol_config` knows.
PROTOCOLS = ("masterkey", "paper")


@dataclass(frozen=True)
class AutoencoderConfig:
    """Hyper-parameters of :func:`masterkey.discover.training.train_autoencoders`.

    The defaults (800 steps of 512 filters at a peak learning rate of 0.02) replaced 1,200 steps of 256 at 0.01:
    a third fewer steps, and a higher objective at K = 8 on the default bank (bench/results/discover-main-job.md).

    Stopping early (``patience``, off by default): every ``check_every`` steps the member's candidates are scored
    (the mean best cos² of a sample of its filters with 50 candidates decoded over the latents' range, the start of
    the greedy path); training stops once the best of the last ``patience`` scores is not ``stop_tol`` above the
    best before them. On the default bank it stopped while the learning rate was still high and lost keys
    (docs/discover.md), so it is off."""

    hidden: int = 64  #: width of the hidden layers
    steps: int = 800  #: optimisation steps (at most, with ``patience``)
    batch_size: int = 512
    lr: float = 2e-2  #: peak learning rate of Adam (linear warm-up over 5% of the steps, then cosine decay)
    weight_decay: float = 0.0
    loss: str = "cosine"  #: "cosine" (1 - |cos|, centred), "mse" (min over the two signs), "signed-cosine" (paper)
    spread: float = 1.0  #: weight of the uniform-latent term (0 turns it off; see :func:`uniform_latent_penalty`)
    symmetric: bool = True  #: sign-symmetrised first encoder layer (encode(x) == encode(-x))
    activation: str = "silu"  #: "silu" or "relu"
    check_every: int = 50  #: steps between loss records and stopping checks
    patience: int | None = None  #: checks without improvement before stopping (None: never stop early)
    stop_tol: float = 1e-3  #: the improvement (in mean cos²) that counts
    seed: int = 0
    checkpoint_every: int = 250  #: steps between checkpoints (when a checkpoint path is given)

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise MasterkeyError(f"autoencoder loss {self.loss!r}: expected one of {', '.join(LOSSES)}")
        if self.activation not in ACTIVATIONS:
            raise MasterkeyError(
                f"autoencoder activation {self.activation!r}: expected one of {', '.join(ACTIVATIONS)}"
            )
        for name in ("hidden", "steps", "batch_size", "checkpoint_every", "check_every"):
            if getattr(self, name) < 1:
                raise MasterkeyError(f"autoencoder {name} must be at least 1, got {getattr(self, name)}")
        if self.patience is not None and self.patience < 1:
            raise MasterkeyError(f"autoencoder patience must be at least 1 (or None), got {self.patience}")
        if not self.lr > 0:
            raise MasterkeyError(f"autoencoder lr must be positive, got {self.lr}")
        if not self.stop_tol >= 0:
            raise MasterkeyError(f"autoencoder stop_tol must be at least 0, got {self.stop_tol}")


@dataclass(frozen=True)
class DiscoverConfig:
    """Everything that shapes a discovery (saved in ``run.json`` and the keys' provenance)."""

    n_keys: int = 8  #: K, the size of the final key set (with ``stop="elbow"``: the size compared at)
    n_candidates: int = 50  #: latents decoded per round
    spacing: str = "range"  #: how latents are spread (see :func:`masterkey.discover.candidates.latent_grid`)
    dedupe: float | None = 0.995  #: candidates with |cos| at least this with an earlier one are dropped (None: off)
    rounds: int = 2  #: 1, or 2 for the paper's second round around the best ``round2_best``
    round2_best: int = 10
    floor: int = 1  #: the greedy path goes down to this many keys (the elbow needs the path below K)
    weighting: str = "source"  #: "source" (every source counts equally) or "filter" (every filter does)
    stop: str = "k"  #: "k": the path's set of K keys; "elbow": the set at the elbow of the final round's path
    keep_round: str = "best"  #: "best": the round with the better objective at K; "last": the last round
    order: str = "share"  #: "share": keys ordered by their share of the filters; "path": by candidate index
    protocol: str = "masterkey"  #: the protocol the configuration started from (see :func:`protocol_config`)
    compare_k: tuple[int, ...] = (1, 2, 4, 8, 16)  #: set sizes of the comparison table (K is always added)
    baselines: tuple[str, ...] = BASELINES
    random_seeds: int = 10  #: seeds of the random baseline (mean and 95% CI)
    kmeans_init: int = 3  #: k-means restarts
    kmeans_sample: int = KMEANS_SAMPLE  #: k-means learns on a seeded sample of at most this many filters
    seed: int = 0  #: seeds the autoencoder (and k-means)
    cpu_threads: int | None = 1  #: torch CPU threads during discovery (None: leave torch's setting)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)

    def __post_init__(self) -> None:
        if self.n_keys < 1:
            raise MasterkeyError(
                f"{option('n_keys', flag='-k')}: the number of keys must be at least 1, got {self.n_keys}"
            )
        if self.n_candidates < 2:
            raise MasterkeyError(
                f"{option('n_candidates', flag='--candidates')} must be at least 2, got {self.n_candidates}"
            )
        if self.n_keys > self.n_candidates:
            raise MasterkeyError(
                f"{option('n_keys', self.n_keys, flag='-k')} is larger than the candidate count {self.n_candidates}; "
                f"lower {option('n_keys', flag='-k')} or raise {option('n_candidates', flag='--candidates')}"
            )
        if self.rounds not in (1, 2):
            raise MasterkeyError(f"{option('rounds')} must be 1 or 2, got {self.rounds}")
        if not 1 <= self.floor <= self.n_keys:
            raise MasterkeyError(
                f"{option('floor', flag='--path-to')} must lie in 1..K ({self.n_keys}), got {self.floor}"
            )
        for name, allowed in (
            ("spacing", SPACINGS),
            ("weighting", WEIGHTINGS),
            ("stop", STOPS),
            ("keep_round", ROUND_CHOICES),
            ("order", ORDERS),
            ("protocol", PROTOCOLS),
        ):
            if getattr(self, name) not in allowed:
                raise MasterkeyError(f"{option(name, repr(getattr(self, name)))}: expected one of {', '.join(allowed)}")
        if self.dedupe is not None and not 0 < self.dedupe <= 1:
            raise MasterkeyError(f"{option('dedupe')} must lie in (0, 1], got {self.dedupe}")
        unknown = [b for b in self.baselines if b not in BASELINES]
        if unknown:
            raise MasterkeyError(f"unknown baseline(s) {unknown}: expected some of {', '.join(BASELINES)}")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise MasterkeyError(
                f"{option('cpu_threads', flag='--threads')} must be at least 1, got {self.cpu_threads}"
            )
        largest = max((*self.compare_k, self.n_keys))
        if self.kmeans_sample < largest:
            raise MasterkeyError(
                f"{option('kmeans_sample', self.kmeans_sample)}: k-means needs at least as many filters as keys "
                f"({largest})"
            )
        if self.random_seeds < 1:
            raise MasterkeyError(f"{option('random_seeds')} must be at least 1, got {self.random_seeds}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: What the paper's protocol changes in masterkey's defaults (SPEC §2 items 3–5). The autoencoder's width, steps,
#: batch and learning rate are not given by the paper; masterkey's serve.
PAPER_AUTOENCODER = {"symmetric": False, "activation": "relu", "loss": "signed-cosine", "spread": 0.0}
PAPER_DISCOVERY = {
    "weighting": "filter",
    "spacing": "unit",
    "dedupe": None,
    "keep_round": "last",
    "stop": "elbow",
    "order": "path",
    "round2_best": 10,
}


def protocol_config(protocol: str = "masterkey", **overrides: Any) -> DiscoverConfig:
    """The :class:`DiscoverConfig` of ``protocol`` (``"masterkey"`` or ``"paper"``), with ``overrides`` on top.

    ``overrides`` may name any field of :class:`DiscoverConfig`, and ``autoencoder`` may be a dict of
    :class:`AutoencoderConfig` fields that change the protocol's autoencoder (rather than replace it)."""
    if protocol not in PROTOCOLS:
        raise MasterkeyError(f"{option('protocol', repr(protocol))}: expected one of {', '.join(PROTOCOLS)}")
    paper = protocol == "paper"
    ae_changes = overrides.pop("autoencoder", None) or {}
    ae = AutoencoderConfig(**(PAPER_AUTOENCODER if paper else {}))
    ae = replace(ae, **ae_changes) if isinstance(ae_changes, dict) else ae_changes
    base = {**(PAPER_DISCOVERY if paper else {}), "protocol": protocol}
    return DiscoverConfig(**{**base, **overrides, "autoencoder": ae})
