"""Training DS-CNNs with trainable, frozen or key-initialised depthwise filters (SPEC §2.7, Tables 2–3).

- :mod:`masterkey.train.config` — :class:`TrainConfig`, the one dataclass that defines a run.
- :mod:`masterkey.train.recipes` — ``--recipe`` presets: ``cifar`` (the defaults), ``imagenet`` (the paper's).
- :mod:`masterkey.train.loop` — :func:`train`, top to bottom: data, state, epochs, checkpoints, summary.
- :mod:`masterkey.train.loader` — the data path: in memory or streamed by DataLoader workers (auto by size).
- :mod:`masterkey.train.data` — cached decoded images, on-device augmentation, (seed, epoch)-derived order.
- :mod:`masterkey.train.state` — model, AdamW, warm-up + cosine, EMA, RNG states, checkpoints.
- :mod:`masterkey.train.epoch` — one epoch of steps and the evaluation after it.
- :mod:`masterkey.train.rundir` — ``OUT.partial`` / ``OUT``, metrics files, exports.
- :mod:`masterkey.train.distributed` — torchrun / DDP on one node or many (nccl on GPUs, gloo on CPUs).
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
