"""Key discovery (docs/design.md, pipeline step 3): 1-D-latent autoencoder → candidates → greedy backward
elimination, with baselines, an upper bound and a universality check.

Typical use::

    from masterkey.bank import open_bank
    from masterkey.discover import DiscoverConfig, discover_bank, write_discover_run

    found = discover_bank(open_bank(None), config=DiscoverConfig(n_keys=8))
    found[7].keys            # KeySet of the 8 discovered 7x7 keys
    found[7].comparison()    # objective vs K for discovered / k-means / PCA / random / paper8
"""

from typing import TYPE_CHECKING

from masterkey.lazy import lazy_attributes

if TYPE_CHECKING:
    from masterkey.discover.autoencoder import (
        KeyAutoencoder,
        TrainedAutoencoder,
        reconstruction_loss,
        sign_invariant_loss,
        uniform_latent_penalty,
    )
    from masterkey.discover.baselines import BASELINES, baseline_keysets, pca_keys, spherical_kmeans
    from masterkey.discover.candidates import Candidates, dedupe, latent_grid, make_candidates, resample_around
    from masterkey.discover.comparison import BaselineScores, score_baselines
    from masterkey.discover.greedy import GreedyPath, GreedyStep, find_elbow, greedy_backward
    from masterkey.discover.objectives import (
        AccuracyObjective,
        Objective,
        Score,
        VarianceObjective,
        explained_variance,
        source_weights,
        span_explained_variance,
    )
    from masterkey.discover.output import write_discover_run, write_discovery
    from masterkey.discover.pipeline import (
        AccuracyRecord,
        AccuracySetup,
        Discovery,
        discover_bank,
        discover_keys,
        prepare_filters,
    )
    from masterkey.discover.rounds import Rounds, choose_round, run_rounds
    from masterkey.discover.settings import AutoencoderConfig, DiscoverConfig, protocol_config
    from masterkey.discover.training import AutoencoderStack, train_autoencoder, train_autoencoders
    from masterkey.discover.universality import leave_one_source_out
    from masterkey.stats import mean_ci95

__getattr__, __dir__ = lazy_attributes(
    __name__,
    {
        "AutoencoderConfig": "masterkey.discover.settings",
        "AutoencoderStack": "masterkey.discover.training",
        "KeyAutoencoder": "masterkey.discover.autoencoder",
        "TrainedAutoencoder": "masterkey.discover.autoencoder",
        "reconstruction_loss": "masterkey.discover.autoencoder",
        "sign_invariant_loss": "masterkey.discover.autoencoder",
        "train_autoencoder": "masterkey.discover.training",
        "train_autoencoders": "masterkey.discover.training",
        "uniform_latent_penalty": "masterkey.discover.autoencoder",
        "BASELINES": "masterkey.discover.baselines",
        "baseline_keysets": "masterkey.discover.baselines",
        "pca_keys": "masterkey.discover.baselines",
        "spherical_kmeans": "masterkey.discover.baselines",
        "Candidates": "masterkey.discover.candidates",
        "dedupe": "masterkey.discover.candidates",
        "latent_grid": "masterkey.discover.candidates",
        "make_candidates": "masterkey.discover.candidates",
        "resample_around": "masterkey.discover.candidates",
        "GreedyPath": "masterkey.discover.greedy",
        "GreedyStep": "masterkey.discover.greedy",
        "find_elbow": "masterkey.discover.greedy",
        "greedy_backward": "masterkey.discover.greedy",
        "AccuracyObjective": "masterkey.discover.objectives",
        "Objective": "masterkey.discover.objectives",
        "Score": "masterkey.discover.objectives",
        "VarianceObjective": "masterkey.discover.objectives",
        "explained_variance": "masterkey.discover.objectives",
        "source_weights": "masterkey.discover.objectives",
        "span_explained_variance": "masterkey.discover.objectives",
        "BaselineScores": "masterkey.discover.comparison",
        "score_baselines": "masterkey.discover.comparison",
        "write_discover_run": "masterkey.discover.output",
        "write_discovery": "masterkey.discover.output",
        "AccuracyRecord": "masterkey.discover.pipeline",
        "AccuracySetup": "masterkey.discover.pipeline",
        "Discovery": "masterkey.discover.pipeline",
        "discover_bank": "masterkey.discover.pipeline",
        "discover_keys": "masterkey.discover.pipeline",
        "prepare_filters": "masterkey.discover.pipeline",
        "DiscoverConfig": "masterkey.discover.settings",
        "protocol_config": "masterkey.discover.settings",
        "Rounds": "masterkey.discover.rounds",
        "choose_round": "masterkey.discover.rounds",
        "run_rounds": "masterkey.discover.rounds",
        "leave_one_source_out": "masterkey.discover.universality",
        "mean_ci95": "masterkey.stats",
    },
)

__all__ = [
    "BASELINES",
    "AccuracyObjective",
    "AccuracyRecord",
    "AccuracySetup",
    "AutoencoderConfig",
    "AutoencoderStack",
    "BaselineScores",
    "Candidates",
    "DiscoverConfig",
    "Discovery",
    "GreedyPath",
    "GreedyStep",
    "KeyAutoencoder",
    "Objective",
    "Rounds",
    "Score",
    "TrainedAutoencoder",
    "VarianceObjective",
    "baseline_keysets",
    "choose_round",
    "dedupe",
    "discover_bank",
    "discover_keys",
    "explained_variance",
    "find_elbow",
    "greedy_backward",
    "latent_grid",
    "leave_one_source_out",
    "make_candidates",
    "mean_ci95",
    "pca_keys",
    "prepare_filters",
    "protocol_config",
    "reconstruction_loss",
    "resample_around",
    "run_rounds",
    "score_baselines",
    "sign_invariant_loss",
    "source_weights",
    "span_explained_variance",
    "spherical_kmeans",
    "train_autoencoder",
    "train_autoencoders",
    "uniform_latent_penalty",
    "write_discover_run",
    "write_discovery",
]
