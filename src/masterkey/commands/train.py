"""masterkey train: options -> TrainConfig fields -> :func:`masterkey.train.experiment.plan` -> ``train`` or
``run_experiment`` (merging, validation, output checks and clean-up all live in the stage)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from masterkey.commands._common import (
    BATCH,
    IMAGES,
    MAX_STEPS,
    SEED,
    THREADS,
    WORKERS,
    device_arg,
    float_arg,
    int_arg,
    note,
    note_written,
    output_arg,
    parse_kwargs,
    print_json,
)
from masterkey.errors import MasterkeyError
from masterkey.nn.modes import MODES, SIGMA_SCOPES, modes_help
from masterkey.tables import format_table

NAME = "train"
ORDER = 6
HELP = "train a DS-CNN with trainable, frozen-key, key-mixing, scale-space or transferred depthwise filters"
DESCRIPTION = """Train a timm / torchvision model on DATA/train and evaluate on DATA/test (or DATA/val) with its
depthwise filters trainable, frozen to keys (per-channel key + learnable offset b, optional scale a), initialised
from keys, mixed from all keys, generated from scale-space models with learnable σ, or copied from a trained model.
One seed writes a train run; --seeds or --experiment write an experiment (arms x seeds) with mean ± 95% CI and
curves; --train-sizes repeats it at several training-set sizes. Runs checkpoint every epoch; --resume continues an
interrupted run exactly. Under torchrun the same command trains with DDP on several GPUs (or CPU processes).

modes (--mode; what the depthwise filters are and what of them trains):
{modes}
keys: paper8, random:K[:SEED], impulse, scalespace8, or a key file (safetensors / text)
assignment: auto (default: the published ConvNeXtV2-B proportions for the paper's own keys paper8 / scalespace8,
  uniform for any other key set) | convnextv2-b | hornet-t | uniform | proportions:P1,... | fit:FITDIR | model:W;
  the rule used is recorded in run.json and summary.json
recipes (--recipe; options given override it one by one; docs/train.md cites every value):
  cifar     the defaults (the CIFAR-10 ConvNeXts of ../shared/models)
  imagenet  the paper authors' ImageNet command (tonylindeberg/masterfiltmodel experiments/README.md): fine-tune
            ConvNeXt-V2-Tiny from its FCMAE encoder (--init-from FILE, or timm's .fcmae weights online), 300
            epochs, batch 8192, blr 8e-4, layer-wise lr decay 0.9, EMA; other ConvNeXt-V2 sizes take
            ConvNeXt-V2 TRAINING.md's values for their size (or borrow the nearest size's, said when used)

examples:
  masterkey train --model convnext_atto --model-kwargs num_classes=10,patch_size=1 \\
      --data ../shared/data/cifar10 --mode frozen --keys paper8 --epochs 20 --batch-size 512 -o runs/frozen
  masterkey train --model convnext_atto --model-kwargs patch_size=1 --data ../shared/data/cifar10 \\
      --mode frozen --keys random:8:0 --assignment uniform --seeds 0,1,2 -o runs/frozen-random
  masterkey train --experiment bench/train_cifar_cpu.toml -o runs/bench       # the whole matrix
  masterkey train --model convnext_atto --model-kwargs num_classes=10,patch_size=2 --data ../shared/data/cifar10 \\
      --mode transfer-frozen --filters-from ../shared/models/cifar10-convnext/convnext_atto_s2_e55.safetensors \\
      --train-sizes 500,2000 --seeds 0,1,2 -o runs/transfer                    # a data-efficiency sweep
  masterkey train ... -o runs/frozen --resume                                  # after an interruption
  masterkey train ... -o runs/frozen --resume --epochs 40                      # train a finished run longer
  torchrun --nproc_per_node=8 -m masterkey train --recipe imagenet --mode frozen --keys paper8 \\
      --init-from convnextv2_tiny_1k_224_fcmae.pt --data /data/imagenet -o runs/in1k   # the authors' command
""".replace("{modes}", modes_help())

_F01, _POS, _PCT = float_arg(0, 1), float_arg(0, 100, open_low=True), float_arg(0, 1, open_low=True)
_NORM = float_arg(0, 1e9, open_low=True)
# (group, flag, argparse keywords): every dest is a TrainConfig field, except those of the last two groups.
_OPTIONS: list[tuple[str, str, dict[str, Any]]] = [
    ("model", "--model", {"metavar": "NAME", "help": "timm or torchvision model name (default convnext_atto)"}),
    ("model", "--model-kwargs", {"metavar": "K=V,...", "help": "e.g. num_classes=10,patch_size=1 (or JSON)"}),
    ("model", "--drop-path", {"type": float_arg(0, 1), "metavar": "RATE", "help": "stochastic depth rate"}),
    ("model", "--weights", {"metavar": "FILE", "help": "start from these weights instead of a random init"}),
    ("model", "--new-head", {"action": "store_true", "help": "with --weights: a fresh classifier for the data"}),
    ("model", "--init-from", {"metavar": "FILE|timm:TAG", "help": "a pretrained encoder (FCMAE) and a new head"}),
    ("model", "--head-init-scale", {"type": _POS, "metavar": "S", "help": "a fresh head: trunc-normal(.02) x S"}),
    ("depthwise filters", "--mode", {"metavar": "MODE", "help": "see above (default trainable)"}),
    ("depthwise filters", "--keys", {"metavar": "KEYS", "help": "built-in, key file, discover run (default paper8)"}),
    ("depthwise filters", "--assignment", {"metavar": "SPEC", "help": "channel -> key rule (default auto)"}),
    ("depthwise filters", "--learn-scale", {"action": "store_true", "help": "frozen mode: learn a per-channel scale"}),
    ("depthwise filters", "--key-gain", {"type": float_arg(-1e6, 1e6), "metavar": "G", "help": "G x unit-norm key"}),
    ("depthwise filters", "--resize-keys", {"action": "store_true", "help": "crop / pad keys of another size"}),
    ("depthwise filters", "--sigma-scope", {"choices": SIGMA_SCOPES, "help": "scalespace: σ per key / channel"}),
    ("depthwise filters", "--filters-from", {"metavar": "WEIGHTS", "help": "transfer modes: the trained model"}),
    ("data", "--data", {"metavar": "DATA", "help": "DATA/train and DATA/test (or val): folders or tar shards"}),
    ("data", "--dataset", {"metavar": "NAME", "help": "a timm data set read from --data: torch/cifar10 ..."}),
    ("data", "--image-size", {"type": int_arg(1, 1024), "metavar": "N", "help": "size the model sees"}),
    ("data", "--crop-pct", {"type": _PCT, "metavar": "F", "help": "test: resize N/F, crop N"}),
    ("data", "--interpolation", {"choices": ("bilinear", "bicubic", "nearest"), "help": "resizing (bilinear)"}),
    ("data", "--max-train-images", {"type": IMAGES, "metavar": "N", "help": "class-balanced training subset"}),
    ("data", "--max-test-images", {"type": IMAGES, "metavar": "N", "help": "class-balanced test subset"}),
    ("data", "--normalize", {"choices": ("auto", "cifar10", "imagenet", "dataset"), "help": "norm. statistics"}),
    ("data", "--data-mode", {"choices": ("auto", "memory", "stream"), "help": "decode once / in workers (auto)"}),
    ("data", "--memory-budget", {"metavar": "SIZE", "help": "budget of --data-mode auto, e.g. 16G"}),
    ("data", "--workers", {"type": WORKERS, "metavar": "N", "help": "DataLoader processes per rank (0-64)"}),
    ("augmentation", "--train-crop", {"choices": ("pad", "rrc"), "help": "pad crop (default) | RandomResizedCrop"}),
    ("augmentation", "--crop-padding", {"type": int_arg(0, 256), "metavar": "P", "help": "reflect padding (4)"}),
    ("augmentation", "--no-hflip", {"dest": "hflip", "action": "store_false", "help": "no horizontal flips"}),
    ("augmentation", "--auto-augment", {"metavar": "POLICY", "help": "timm policy, e.g. rand-m9-mstd0.5-inc1"}),
    ("augmentation", "--re-prob", {"type": _F01, "metavar": "P", "help": "random erasing probability (0)"}),
    ("augmentation", "--mixup", {"type": float_arg(0, 100), "metavar": "ALPHA", "help": "mixup alpha; 0 off"}),
    ("augmentation", "--cutmix", {"type": float_arg(0, 100), "metavar": "ALPHA", "help": "cutmix alpha; 0 off"}),
    ("optimisation", "--epochs", {"type": int_arg(1, 100_000), "help": "epochs (default 20)"}),
    ("optimisation", "--batch-size", {"type": BATCH, "help": "global batch size (default 512)"}),
    ("optimisation", "--update-freq", {"type": int_arg(1, 4096), "metavar": "N", "help": "micro-batches per step (1)"}),
    ("optimisation", "--lr", {"type": _POS, "help": "peak learning rate of AdamW (default 3e-3)"}),
    ("optimisation", "--base-lr", {"type": _POS, "metavar": "LR", "help": "lr = LR x batch / 256 (not with --lr)"}),
    ("optimisation", "--weight-decay", {"type": float_arg(0, 100), "help": "AdamW weight decay (default 0.05)"}),
    ("optimisation", "--layer-decay", {"type": _F01, "metavar": "D", "help": "layer-wise lr decay (off)"}),
    ("optimisation", "--layer-decay-type", {"choices": ("single", "group"), "help": "ConvNeXt-V2's strategies"}),
    ("optimisation", "--warmup-epochs", {"type": float_arg(0, 100_000), "help": "linear warm-up epochs (1)"}),
    ("optimisation", "--min-lr", {"type": float_arg(0, 100), "help": "final learning rate of the cosine (0)"}),
    ("optimisation", "--label-smoothing", {"type": _F01, "help": "label smoothing (default 0.1)"}),
    ("optimisation", "--grad-clip", {"type": _NORM, "metavar": "NORM", "help": "clip the gradient norm"}),
    ("optimisation", "--ema", {"dest": "ema_decay", "type": _PCT, "metavar": "DECAY", "help": "EMA, e.g. 0.999"}),
    ("optimisation", "--no-ema-eval", {"dest": "ema_eval", "action": "store_false", "help": "do not test the EMA"}),
    ("optimisation", "--eval-batch-size", {"type": BATCH, "help": "evaluation batch size (default 1024)"}),
    ("runtime", "--device", {"type": device_arg, "help": "auto (default) | cpu | cuda | cuda:N"}),
    ("runtime", "--amp", {"choices": ("auto", "bf16", "none"), "help": "autocast: auto = bf16 on CUDA"}),
    ("runtime", "--channels-last", {"action": argparse.BooleanOptionalAction, "help": "default: on CUDA only"}),
    ("runtime", "--compile", {"action": "store_true", "help": "torch.compile the model"}),
    ("runtime", "--threads", {"type": THREADS, "metavar": "N", "help": "CPU threads for torch"}),
    ("runtime", "--log-every", {"type": int_arg(1, MAX_STEPS), "metavar": "STEPS", "help": "per-step rows (10)"}),
    ("runtime", "--checkpoint-every", {"type": int_arg(1, MAX_STEPS), "metavar": "STEPS", "help": "+ mid-epoch"}),
    ("runtime", "--tensorboard", {"action": "store_true", "help": "also write TensorBoard logs"}),
    ("seeds and experiments", "--seed", {"type": SEED, "help": "seed of one run (default 0)"}),
    ("seeds and experiments", "--seeds", {"metavar": "LIST", "help": "several seeds, e.g. 0,1,2: an experiment"}),
    ("seeds and experiments", "--experiment", {"metavar": "FILE", "help": "experiment file: base, arms, seeds"}),
    ("seeds and experiments", "--arms", {"metavar": "A,B", "help": "only these arms (or define one new one)"}),
    ("seeds and experiments", "--train-sizes", {"metavar": "N,N", "help": "repeat at these training-set sizes"}),
    ("seeds and experiments", "--collect", {"nargs": "+", "metavar": "DIR", "help": "train nothing: join runs"}),
    ("seeds and experiments", "--jobs", {"type": int_arg(1, 64), "default": 1, "metavar": "N", "help": "runs at once"}),
    ("output", "--resume", {"action": "store_true", "help": "continue OUT.partial, or OUT with more --epochs"}),
    ("output", "--overwrite", {"action": "store_true", "help": "replace OUT (or an interrupted OUT.partial)"}),
    ("output", "--json", {"action": "store_true", "help": "print the summary as JSON"}),
]
_NOT_CONFIG = ("seeds and experiments", "output")  # groups whose options are not TrainConfig fields (but --seed)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from masterkey.train.recipes import RECIPES

    p.add_argument("--recipe", choices=RECIPES, help="preset of every training option; given options override it")
    groups: dict[str, Any] = {}
    for group, flag, kwargs in _OPTIONS:
        g = groups.setdefault(group, p.add_argument_group(group))
        if flag == "--mode":
            kwargs = {**kwargs, "choices": list(MODES)}
        unset = group not in _NOT_CONFIG or flag == "--seed"  # None: not given, the config (or recipe) decides
        g.add_argument(flag, **kwargs, **({"default": None} if unset and "action" in kwargs else {}))
    groups["output"].add_argument(
        "-o", "--out", type=output_arg, metavar="OUT", required=True, help="run / experiment dir"
    )


def options(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`~masterkey.train.TrainConfig` fields given on the command line."""
    from masterkey.train import TrainConfig

    fields = [f for f in TrainConfig.field_names() if f != "model_kwargs"]
    values = {f: getattr(args, f) for f in fields if getattr(args, f, None) is not None}
    if args.model_kwargs is not None:
        values["model_kwargs"] = parse_kwargs(args.model_kwargs)
    return values


def run(args: argparse.Namespace) -> int:
    from masterkey.train import TrainConfig, collect_experiments, run_experiment, train
    from masterkey.train.experiment import parse_seeds, parse_train_sizes, plan

    given = options(args)
    if args.collect:
        if args.experiment or args.seeds or args.train_sizes or "seed" in given or args.resume or args.jobs != 1:
            raise MasterkeyError("--collect trains nothing: it takes only run directories, -o OUT and --overwrite")
        return _report_experiment(collect_experiments(args.collect, args.out, overwrite=args.overwrite), args)
    planned = plan(
        given,
        experiment=args.experiment,
        seeds=parse_seeds(args.seeds) if args.seeds is not None else None,
        arms=[n.strip() for n in args.arms.split(",") if n.strip()] if args.arms else None,
        train_sizes=parse_train_sizes(args.train_sizes) if args.train_sizes else None,
    )
    if isinstance(planned, TrainConfig):
        if args.jobs != 1:
            raise MasterkeyError("--jobs trains several runs of an experiment at once: give --seeds or --experiment")
        result = train(planned, args.out, resume=args.resume, overwrite=args.overwrite)
        if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
            return 0
        _report_run(result.summary, args)
        return 0
    summary = run_experiment(planned, args.out, resume=args.resume, overwrite=args.overwrite, jobs=args.jobs)
    return _report_experiment(summary, args) if summary else 0  # empty: not rank 0


def _report_run(s: dict[str, Any], args: argparse.Namespace) -> None:
    if args.json:
        print_json(s)
        note_written(args.out)
        return
    keys = f" keys {s['keys']} ({s['assignment']})" if s["keys"] else ""
    print(f"{s['model']} {s['mode']}{keys} seed {s['seed']}: {s['epochs']} epochs, {s['steps']} steps")
    print(
        f"test top-1 {s['test_top1']:.2f}%  top-5 {s['test_top5']:.2f}%  loss {s['test_loss']:.4f}  "
        f"(train loss {s['train_loss']:.4f}, {s['images_per_second']:.0f} images/s on {s['device']})"
    )
    if "ema_test_top1" in s:
        best = s["best_ema_test_top1"]
        print(f"EMA test top-1 {s['ema_test_top1']:.2f}%  top-5 {s['ema_test_top5']:.2f}%  (best {best:.2f}%)")
    for line in s.get("warnings", []):
        note(f"warning: {line}")
    note_written(args.out)


def _report_experiment(summary: dict[str, Any], args: argparse.Namespace) -> int:
    if args.json:
        print_json(summary)
        note_written(args.out)
        return 0
    rows = []
    for arm, entry in summary["arms"].items():
        rows.append(
            {
                "arm": entry.get("arm", arm),
                **({"train_size": entry["train_size"]} if "train_size" in entry else {}),
                "mode": entry["train_mode"],
                "keys": entry["keys"] or "-",
                "n": entry["n"],
                "top1 %": entry["test_top1"]["mean"],
                "top1 ±95% CI": entry["test_top1"]["ci95"],
                "top5 %": entry["test_top5"]["mean"],
                "train_loss": entry["train_loss"]["mean"],
            }
        )
    print(format_table(rows, digits=2))
    note("test top-1 / top-5 in percent: mean and 95% CI half-width in points (Student t) over seeds")
    for line in summary.get("warnings", []):
        note(f"warning: {line}")
    note_written(args.out)
    return 0
