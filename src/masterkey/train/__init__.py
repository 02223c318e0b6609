"""Training DS-CNNs with trainable, frozen, key-initialised, key-mixing, scale-space or transferred depthwise filters
(the paper's Tables 2–3; docs/design.md, pipeline step 6).

- :mod:`masterkey.train.config` — :class:`TrainConfig`, the one dataclass that defines a run.
- :mod:`masterkey.train.recipes` — ``--recipe`` presets, every value with its source: ``cifar`` (the defaults),
  ``imagenet`` (the paper authors' fine-tuning command; ConvNeXt-V2's values for the other sizes).
- :mod:`masterkey.train.model` — the starting network: weights, a pretrained (FCMAE) encoder, the head init scale.
- :mod:`masterkey.train.optim` — AdamW with ConvNeXt-V2's layer-wise lr decay, warm-up + cosine, the loss.
- :mod:`masterkey.train.loop` — :func:`train`, top to bottom: data, state, epochs, checkpoints, summary.
- :mod:`masterkey.train.loader` — the data path: in memory or streamed by DataLoader workers (auto by size).
- :mod:`masterkey.data` — the images themselves: cached decoded images, on-device augmentation, (seed, epoch)-derived
  order, the evaluation after each epoch.
- :mod:`masterkey.train.state` — model, AdamW, warm-up + cosine, EMA, RNG states, checkpoints.
- :mod:`masterkey.train.epoch` — one epoch of steps (the evaluation after it: :func:`masterkey.data.evaluate.evaluate`).
- :mod:`masterkey.train.rundir` — ``OUT.partial`` / ``OUT``, metrics files, exports.
- :mod:`masterkey.train.distributed` — torchrun / DDP on one node or many (nccl on GPUs, gloo on CPUs).
- :mod:`masterkey.train.experiment` — experiments: arms x seeds (x training-set sizes), read from files;
  :func:`~masterkey.train.experiment.plan`: what a set of options asks for (one run or an experiment).
- :mod:`masterkey.train.runner` — :func:`run_experiment`: every run in turn (or several at once), resumable.
- :mod:`masterkey.train.summary` — mean ± 95% CI per arm, paired differences, the data-efficiency table.
- :mod:`masterkey.train.collect` — :func:`collect_experiments`: experiments trained apart, summarised as one.
"""

from typing import TYPE_CHECKING

from masterkey.lazy import lazy_attributes

if TYPE_CHECKING:
    from masterkey.train.collect import collect_experiments
    from masterkey.train.config import TrainConfig
    from masterkey.train.experiment import Arm, Experiment, load_experiment, plan
    from masterkey.train.loop import TrainResult, train
    from masterkey.train.runner import run_experiment
    from masterkey.train.summary import summarize_runs

__getattr__, __dir__ = lazy_attributes(
    __name__,
    {
        "collect_experiments": "masterkey.train.collect",
        "TrainConfig": "masterkey.train.config",
        "Arm": "masterkey.train.experiment",
        "Experiment": "masterkey.train.experiment",
        "load_experiment": "masterkey.train.experiment",
        "plan": "masterkey.train.experiment",
        "TrainResult": "masterkey.train.loop",
        "train": "masterkey.train.loop",
        "run_experiment": "masterkey.train.runner",
        "summarize_runs": "masterkey.train.summary",
    },
)

__all__ = [
    "Arm",
    "Experiment",
    "TrainConfig",
    "TrainResult",
    "collect_experiments",
    "load_experiment",
    "plan",
    "run_experiment",
    "summarize_runs",
    "train",
]
