"""Training DS-CNNs with trainable, frozen or key-initialised depthwise filters (SPEC §2.7, Tables 2–3).

- :mod:`masterkey.train.config` — :class:`TrainConfig`, the one dataclass that defines a run.
- :mod:`masterkey.train.data` — cached decoded images, on-device augmentation, (seed, epoch)-derived order.
- :mod:`masterkey.train.loop` — :func:`train`: AdamW, warm-up + cosine, EMA, bf16, exact resume.
- :mod:`masterkey.train.distributed` — torchrun / DDP (nccl on GPUs, gloo on CPUs).
- :mod:`masterkey.train.experiment` — matrices of modes x seeds with mean ± 95% CI and curves.
"""

from masterkey.train.config import TrainConfig
from masterkey.train.experiment import Arm, Experiment, load_experiment, run_experiment, summarize_runs
from masterkey.train.loop import TrainResult, train

__all__ = [
    "Arm",
    "Experiment",
    "TrainConfig",
    "TrainResult",
    "load_experiment",
    "run_experiment",
    "summarize_runs",
    "train",
]
