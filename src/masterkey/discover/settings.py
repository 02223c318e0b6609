"""Settings of key discovery that the command line shows in its help: the autoencoder's hyper-parameters, the
baselines and k-means' sample size. They live here, apart from the torch code that uses them, so that
``masterkey discover --help`` shows the real defaults without importing torch."""

from __future__ import annotations

from dataclasses import dataclass

from masterkey.errors import MasterkeyError

#: Losses of the autoencoder (see :func:`masterkey.discover.autoencoder.sign_invariant_loss`).
LOSSES = ("cosine", "mse")

#: Baselines scored beside the discovered keys (see :mod:`masterkey.discover.baselines`).
BASELINES = ("kmeans", "pca", "random", "impulse", "paper8")

#: k-means learns its keys on at most this many filters: a seeded sample drawn with the objective's weights (so
#: sources count as they do in the objective); the keys are then polished and scored on every filter. The default
#: bank's largest kernel size (9,742 filters) is below it and is clustered whole.
KMEANS_SAMPLE = 16384


@dataclass(frozen=True)
class AutoencoderConfig:
    """Hyper-parameters of :func:`masterkey.discover.autoencoder.train_autoencoder` (the defaults train in a few
    seconds on 2 CPU cores)."""

    hidden: int = 64  #: width of the hidden layers
    steps: int = 1200  #: optimisation steps
    batch_size: int = 256
    lr: float = 1e-2  #: peak learning rate of Adam (linear warm-up over 5% of the steps, then cosine decay)
    weight_decay: float = 0.0
    loss: str = "cosine"  #: "cosine" (1 - |cos|) or "mse" (min over the two signs)
    spread: float = 1.0  #: weight of the uniform-latent term (0 turns it off; see :func:`uniform_latent_penalty`)
    seed: int = 0
    checkpoint_every: int = 250  #: steps between checkpoints (when a checkpoint path is given)
    cpu_threads: int | None = 1  #: torch threads while training on CPU (None: leave torch's setting)

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise MasterkeyError(f"autoencoder loss {self.loss!r}: expected one of {', '.join(LOSSES)}")
        for name in ("hidden", "steps", "batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise MasterkeyError(f"autoencoder {name} must be at least 1, got {getattr(self, name)}")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise MasterkeyError(f"autoencoder cpu_threads must be at least 1, got {self.cpu_threads}")
        if not self.lr > 0:
            raise MasterkeyError(f"autoencoder lr must be positive, got {self.lr}")
