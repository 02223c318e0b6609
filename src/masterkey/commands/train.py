"""masterkey train --model NAME --data DATA --mode MODE [--keys KEYS] [--seeds 0,1,2 | --experiment FILE] -o OUT"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from typing import Any

from masterkey.commands._common import (
    BATCH,
    IMAGES,
    MAX_SEED,
    MAX_SEEDS,
    MAX_STEPS,
    SEED,
    THREADS,
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
from masterkey.files import OutputBusyError, check_output, missing_parents, remove_empty_folders
from masterkey.nn.modes import MODES, SIGMA_SCOPES, modes_help
from masterkey.tables import format_table

NAME = "train"
ORDER = 6
HELP = "train a DS-CNN with trainable, frozen-key, key-mixing, scale-space or transferred depthwise filters"
DESCRIPTION = f"""Train a timm / torchvision model on DATA/train and evaluate on DATA/test (or DATA/val) with its
depthwise filters trainable (as usual), frozen to keys (per-channel key + learnable offset b, optional scale a),
initialised from keys, mixed from all keys, generated from scale-space models with learnable σ, or copied from a
trained model (frozen or as initialisation). One seed writes a train run; --seeds or --experiment write an
experiment (arms x seeds) with mean ± 95% CI and curves; --train-sizes repeats it at several training-set sizes.
Runs checkpoint every epoch; --resume continues an interrupted run exactly. Under torchrun the same command trains
with DDP on several GPUs (or CPU processes).

modes (--mode; what the depthwise filters are and what of them trains):
{modes_help()}
keys: paper8, random:K[:SEED], impulse, scalespace8, or a key file (safetensors / text)
assignment of keys to channels: auto (the default: the published ConvNeXtV2-B proportions for the paper's own keys
  paper8 / scalespace8, uniform for any other key set) | convnextv2-b | hornet-t (published proportions) | uniform
  | proportions:P1,... | fit:FITDIR (per-layer proportions of a 'masterkey fit' run) | model:WEIGHTS (best fit of a
  trained model); the rule used is recorded in run.json and summary.json

recipes (--recipe): cifar (the defaults) | imagenet (the paper's ConvNeXt-V2 ImageNet setup: AdamW, base lr
8e-4 x batch / 256, wd 0.05, 300 epochs, 40 warm-up, RandAugment, mixup 0.8 / cutmix 1.0, random erasing 0.25,
label smoothing 0.1, EMA 0.9999, drop-path by model size); any option given overrides the recipe's.
data: in memory (decoded once, augmented on the device) or streamed (decoded by DataLoader workers): --data-mode
auto picks memory when the decoded images fit half the free RAM (--memory-budget, MASTERKEY_MEMORY_BUDGET).

examples:
  masterkey train --model convnext_atto --model-kwargs num_classes=10,patch_size=1 \\
      --data ../shared/data/cifar10 --mode frozen --keys paper8 --epochs 20 --batch-size 512 -o runs/frozen
  masterkey train --model convnext_atto --model-kwargs patch_size=1 --data ../shared/data/cifar10 \\
      --mode frozen --keys random:8:0 --assignment uniform --seeds 0,1,2 -o runs/frozen-random
  masterkey train --experiment bench/train_cifar_cpu.toml -o runs/bench       # the whole matrix
  masterkey train --experiment bench/train_cifar_cpu.toml --arms frozen-discovered --mode frozen \\
      --keys runs/discover/keys.safetensors -o runs/bench-discovered           # one more arm
  masterkey train --model convnext_atto --model-kwargs num_classes=10,patch_size=2 --data ../shared/data/cifar10 \
      --mode transfer-frozen --filters-from ../shared/models/cifar10-convnext/convnext_atto_s2_e55.safetensors \
      --train-sizes 500,2000 --seeds 0,1,2 -o runs/transfer                    # a data-efficiency sweep
  masterkey train ... -o runs/frozen --resume                                  # after an interruption
  masterkey train ... -o runs/frozen --resume --epochs 40                      # train a finished run longer
  torchrun --nproc_per_node=8 -m masterkey train --recipe imagenet --model convnextv2_tiny \\
      --mode frozen --keys paper8 --data /data/imagenet --checkpoint-every 1000 -o runs/in1k   # 8 GPUs
"""

# CLI option -> TrainConfig field, for options that override a config (default None = not given).
_FIELDS = {
    "recipe": "recipe",
    "model": "model",
    "drop_path": "drop_path",
    "weights": "weights",
    "mode": "mode",
    "keys": "keys",
    "assignment": "assignment",
    "learn_scale": "learn_scale",
    "key_gain": "key_gain",
    "resize_keys": "resize_keys",
    "sigma_scope": "sigma_scope",
    "filters_from": "filters_from",
    "new_head": "new_head",
    "data": "data",
    "dataset": "dataset",
    "image_size": "image_size",
    "crop_pct": "crop_pct",
    "interpolation": "interpolation",
    "max_train_images": "max_train_images",
    "max_test_images": "max_test_images",
    "normalize": "normalize",
    "train_crop": "train_crop",
    "crop_padding": "crop_padding",
    "hflip": "hflip",
    "auto_augment": "auto_augment",
    "re_prob": "re_prob",
    "mixup": "mixup",
    "cutmix": "cutmix",
    "epochs": "epochs",
    "batch_size": "batch_size",
    "lr": "lr",
    "base_lr": "base_lr",
    "weight_decay": "weight_decay",
    "warmup_epochs": "warmup_epochs",
    "min_lr": "min_lr",
    "label_smoothing": "label_smoothing",
    "grad_clip": "grad_clip",
    "ema": "ema_decay",
    "seed": "seed",
    "eval_batch_size": "eval_batch_size",
    "device": "device",
    "amp": "amp",
    "channels_last": "channels_last",
    "compile": "compile",
    "threads": "threads",
    "data_mode": "data_mode",
    "memory_budget": "memory_budget",
    "workers": "workers",
    "checkpoint_every": "checkpoint_every",
    "log_every": "log_every",
    "tensorboard": "tensorboard",
    "progress": "progress",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from masterkey.train.recipes import RECIPES

    p.add_argument(
        "--recipe",
        choices=list(RECIPES),
        help="preset of every training option (cifar: the defaults; imagenet: the paper's ConvNeXt-V2 ImageNet "
        "setup); options given here override it one by one",
    )
    g = p.add_argument_group("model")
    g.add_argument("--model", metavar="NAME", help="timm or torchvision model name (default convnext_atto)")
    g.add_argument(
        "--model-kwargs",
        metavar="K=V,...",
        help="model keyword arguments, e.g. num_classes=10,patch_size=1 (or a JSON object for lists)",
    )
    g.add_argument(
        "--drop-path", type=float_arg(0, 1), metavar="RATE", help="stochastic depth rate (model drop_path_rate)"
    )
    g.add_argument("--weights", metavar="FILE", help="start from these weights instead of a random init")
    g.add_argument(
        "--new-head",
        action="store_true",
        default=None,
        help="with --weights: a fresh classifier when its class count differs from the data's (fine-tuning)",
    )
    g = p.add_argument_group("depthwise filters")
    g.add_argument("--mode", choices=list(MODES), help=" | ".join(MODES) + " (default trainable)")
    g.add_argument(
        "--keys", metavar="KEYS", help="key set: built-in, key file, discover run, DIR:METHOD (default paper8)"
    )
    g.add_argument(
        "--assignment", metavar="SPEC", help="channel -> key rule (default auto: convnextv2-b for paper8, else uniform)"
    )
    g.add_argument("--learn-scale", action="store_true", default=None, help="frozen mode: learn a per-channel scale")
    g.add_argument(
        "--key-gain", type=float_arg(-1e6, 1e6), metavar="G", help="kernels are G * unit-norm key (default 1)"
    )
    g.add_argument(
        "--resize-keys",
        action="store_true",
        default=None,
        help="centre-crop / zero-pad keys whose kernel size differs from the model's",
    )
    g.add_argument(
        "--sigma-scope",
        choices=SIGMA_SCOPES,
        help="scalespace mode: learn σ per key of a layer (default) or per channel",
    )
    g.add_argument(
        "--filters-from",
        metavar="WEIGHTS",
        help="transfer modes: the trained model (same architecture) whose depthwise filters are copied",
    )
    _add_data_arguments(p)
    _add_training_options(p)
    g = p.add_argument_group("runtime")
    g.add_argument("--device", type=device_arg, help="auto (default) | cpu | cuda | cuda:N")
    g.add_argument("--amp", choices=("auto", "bf16", "none"), help="autocast: auto = bf16 on CUDA (default)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None, help="default: on CUDA only")
    g.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    g.add_argument(
        "--threads", type=THREADS, metavar="N", help="CPU threads for torch (1 is fastest on a busy machine)"
    )
    g.add_argument(
        "--log-every",
        type=int_arg(1, MAX_STEPS),
        metavar="STEPS",
        help="steps between per-step metric rows (default 10)",
    )
    g.add_argument(
        "--checkpoint-every",
        type=int_arg(1, MAX_STEPS),
        metavar="STEPS",
        help="also checkpoint every N steps (mid-epoch)",
    )
    g.add_argument("--tensorboard", action="store_true", default=None, help="also write TensorBoard logs")
    g = p.add_argument_group("output")
    g.add_argument(
        "-o", "--out", type=output_arg, metavar="OUT", required=True, help="run (or experiment) directory to write"
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue OUT.partial from its last checkpoint, or a complete OUT with more --epochs",
    )
    g.add_argument("--overwrite", action="store_true", help="replace OUT (or an interrupted OUT.partial)")
    g.add_argument("--json", action="store_true", help="print the summary as JSON")


def _add_training_options(p: argparse.ArgumentParser) -> None:
    """The optimisation, seed and experiment options of ``train``."""
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int_arg(1, 100_000), help="epochs (default 20)")
    g.add_argument("--batch-size", type=BATCH, help="global batch size (default 512)")
    g.add_argument("--lr", type=float_arg(0, 100, open_low=True), help="peak learning rate of AdamW (default 3e-3)")
    g.add_argument(
        "--base-lr",
        type=float_arg(0, 100, open_low=True),
        metavar="LR",
        help="lr per 256 images: lr = LR * batch size / 256",
    )
    g.add_argument(
        "--weight-decay", type=float_arg(0, 100), help="AdamW weight decay (default 0.05; none on 1-D params)"
    )
    g.add_argument("--warmup-epochs", type=float_arg(0, 100_000), help="linear warm-up epochs (default 1)")
    g.add_argument("--min-lr", type=float_arg(0, 100), help="final learning rate of the cosine (default 0)")
    g.add_argument("--label-smoothing", type=float_arg(0, 1), help="label smoothing (default 0.1)")
    g.add_argument(
        "--grad-clip",
        type=float_arg(0, 1e9, open_low=True),
        metavar="NORM",
        help="clip the gradient norm (default off)",
    )
    g.add_argument(
        "--ema", type=float_arg(0, 1, open_low=True), metavar="DECAY", help="keep an EMA of the weights, e.g. 0.999"
    )
    g.add_argument("--eval-batch-size", type=BATCH, help="evaluation batch size (default 1024)")
    g = p.add_argument_group("seeds and experiments")
    g.add_argument("--seed", type=SEED, help="seed of one run (default 0)")
    g.add_argument("--seeds", metavar="LIST", help="several seeds, e.g. 0,1,2: writes an experiment with mean ± CI")
    g.add_argument("--experiment", metavar="FILE", help="experiment file (TOML / JSON): base options, arms, seeds")
    g.add_argument("--arms", metavar="A,B", help="run only these arms of the experiment (or define a new one)")
    g.add_argument(
        "--train-sizes",
        metavar="N,N",
        help="repeat the experiment at these training-set sizes (class-balanced nested subsets, e.g. 500,2000): "
        "accuracy vs size per arm with 95%% CIs",
    )
    g.add_argument(
        "--collect",
        nargs="+",
        metavar="DIR",
        help="train nothing: summarise the finished runs of these experiment (or run) directories as one "
        "experiment in OUT, e.g. arms trained on different machines",
    )
    g.add_argument(
        "--jobs",
        type=int_arg(1, 64),
        default=1,
        metavar="N",
        help="train N runs of the experiment at once, each in its own process on the same device (default 1; "
        "small models on a large GPU)",
    )


def _add_data_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        metavar="DATA",
        help="folder with DATA/train and DATA/test (or DATA/val): ImageFolders, folders of tar shards, or .tar files",
    )
    g.add_argument("--dataset", metavar="NAME", help="a timm data set read from --data: torch/cifar10, hfds/NAME ...")
    g.add_argument(
        "--image-size", type=int_arg(1, 1024), metavar="N", help="size the model sees (resize + centre crop / RRC)"
    )
    g.add_argument(
        "--crop-pct",
        type=float_arg(0, 1, open_low=True),
        metavar="F",
        help="test images: resize to N / F, crop N (default 1)",
    )
    g.add_argument("--interpolation", choices=("bilinear", "bicubic", "nearest"), help="resizing (default bilinear)")
    g.add_argument("--max-train-images", type=IMAGES, metavar="N", help="class-balanced subset of the training set")
    g.add_argument("--max-test-images", type=IMAGES, metavar="N", help="class-balanced subset of the test set")
    g.add_argument("--normalize", choices=("auto", "cifar10", "imagenet", "dataset"), help="normalisation statistics")
    g.add_argument(
        "--data-mode",
        choices=("auto", "memory", "stream"),
        help="memory: decode once, hold on the device; stream: decode in DataLoader workers; auto (default): "
        "memory when the decoded set fits the memory budget",
    )
    g.add_argument(
        "--memory-budget", metavar="SIZE", help="budget of --data-mode auto, e.g. 16G (default: half the free RAM)"
    )
    g.add_argument("--workers", type=int_arg(0, 256), metavar="N", help="DataLoader processes per rank when streaming")
    g = p.add_argument_group("augmentation")
    g.add_argument(
        "--train-crop", choices=("pad", "rrc"), help="pad: crop of the padded image (default) | rrc: RandomResizedCrop"
    )
    g.add_argument(
        "--crop-padding", type=int_arg(0, 256), metavar="P", help="random crop with P reflect padding (default 4)"
    )
    g.add_argument("--no-hflip", dest="hflip", action="store_false", default=None, help="no horizontal flips")
    g.add_argument("--auto-augment", metavar="POLICY", help="timm policy, e.g. rand-m9-mstd0.5-inc1 (RandAugment)")
    g.add_argument("--re-prob", type=float_arg(0, 1), metavar="P", help="random erasing probability (default 0)")
    g.add_argument("--mixup", type=float_arg(0, 100), metavar="ALPHA", help="mixup Beta(alpha, alpha); 0 off (default)")
    g.add_argument(
        "--cutmix", type=float_arg(0, 100), metavar="ALPHA", help="cutmix Beta(alpha, alpha); 0 off (default)"
    )


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    values = {field: getattr(args, opt) for opt, field in _FIELDS.items() if getattr(args, opt) is not None}
    if args.model_kwargs is not None:
        text = args.model_kwargs.strip()
        if text.startswith("{"):
            try:
                kwargs = json.loads(text)
            except ValueError as exc:
                raise MasterkeyError(f"--model-kwargs: not a JSON object ({exc})") from None
            if not isinstance(kwargs, dict):
                raise MasterkeyError("--model-kwargs: expected a JSON object")
        else:
            kwargs = parse_kwargs(text)
        values["model_kwargs"] = kwargs
    return values


def _seeds(text: str) -> list[int]:
    parts = [s.strip() for s in text.split(",") if s.strip()]
    if not parts or not all(p.isdigit() and int(p) <= MAX_SEED for p in parts):
        raise MasterkeyError(
            f"--seeds {text!r}: expected integers from 0 to {MAX_SEED:,} separated by commas, e.g. 0,1,2"
        )
    seeds = [int(p) for p in parts]
    if len(set(seeds)) != len(seeds):
        raise MasterkeyError(f"--seeds {text!r}: each seed once, e.g. 0,1,2")
    if len(seeds) > MAX_SEEDS:
        raise MasterkeyError(f"--seeds: {len(seeds):,} seeds, at most {MAX_SEEDS:,}")
    return seeds


def build_experiment(args: argparse.Namespace) -> Any:
    """The experiment the options describe, or None for a single run."""
    from masterkey.train import TrainConfig
    from masterkey.train.experiment import Arm, Experiment, arm_name, load_experiment, parse_train_sizes

    overrides = _overrides(args)
    if args.seed is not None and (args.seeds is not None or args.experiment):
        raise MasterkeyError("--seed is for one run; with --seeds or --experiment give the seeds there")
    if args.experiment:
        experiment = load_experiment(args.experiment)

        # Options typed on the command line win over the file, for every arm; model kwargs are merged into the
        # file's (an arm without its own model kwargs inherits the merged base ones).
        def merged(values: dict[str, Any], inherit: bool) -> dict[str, Any]:
            out = {**values, **{k: v for k, v in overrides.items() if k != "model_kwargs"}}
            if "model_kwargs" in overrides and ("model_kwargs" in values or not inherit):
                out["model_kwargs"] = {**values.get("model_kwargs", {}), **overrides["model_kwargs"]}
            return out

        experiment.base = merged(experiment.base, inherit=False)
        experiment.arms = [Arm(a.name, merged(a.overrides, inherit=True)) for a in experiment.arms]
        if args.seeds is not None:
            experiment.seeds = _seeds(args.seeds)
        if args.train_sizes:
            experiment.train_sizes = parse_train_sizes(args.train_sizes, "--train-sizes")
        if args.arms:
            names = [n.strip() for n in args.arms.split(",") if n.strip()]
            known = {a.name for a in experiment.arms}
            new = [n for n in names if n not in known]
            if new and len(names) == 1 and args.mode is not None:
                experiment.arms.append(Arm(new[0], dict(overrides)))
            elif new:
                raise MasterkeyError(
                    f"--arms: no arm named {', '.join(new)} in {args.experiment} (arms: {', '.join(sorted(known))}); "
                    "to define a new one give a single name with --mode (and --keys)"
                )
            experiment = experiment.select(names)
        for arm in experiment.arms:
            experiment.config(arm, experiment.seeds[0])
        return experiment
    if args.arms:
        raise MasterkeyError("--arms selects arms of an --experiment file")
    sizes = parse_train_sizes(args.train_sizes, "--train-sizes") if args.train_sizes else None
    if args.seeds is not None or sizes:
        config = TrainConfig.from_dict(overrides, source="options")
        seeds = _seeds(args.seeds) if args.seeds is not None else [config.seed]
        return Experiment(overrides, [Arm(arm_name(config), {})], seeds, None, sizes)
    return None


def run(args: argparse.Namespace) -> int:
    from masterkey.networks.models import resolve_model_name
    from masterkey.train import TrainConfig, run_experiment, train

    if args.collect:
        from masterkey.train.collect import collect_experiments

        if (
            args.experiment
            or args.seeds is not None
            or args.train_sizes
            or args.seed is not None
            or args.resume
            or args.jobs != 1
        ):
            raise MasterkeyError("--collect trains nothing: it takes only run directories, -o OUT and --overwrite")

        _check_out(args, args.collect)
        summary = collect_experiments(args.collect, args.out, overwrite=args.overwrite)
        return _report_experiment(summary, args)
    experiment = build_experiment(args)
    if args.recipe and os.environ.get("RANK", "0") == "0":
        from masterkey.train.recipes import describe

        note(describe(args.recipe, _overrides(args)))
    if experiment is None:
        if args.jobs != 1:
            raise MasterkeyError("--jobs trains several runs of an experiment at once: give --seeds or --experiment")
        config = TrainConfig.from_dict(_overrides(args), source="options")
        _check_out(args, [config.data, config.weights, config.keys if MODES[config.mode].uses_keys else None])
        resolve_model_name(config.model)
        with _failed_run_cleanup(args.out):
            result = train(config, args.out, resume=args.resume, overwrite=args.overwrite)
        if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
            return 0
        if args.json:
            print_json(result.summary)
            note_written(args.out)
            return 0
        s = result.summary
        keys = f" keys {s['keys']} ({s['assignment']})" if s["keys"] else ""
        print(f"{s['model']} {s['mode']}{keys} seed {s['seed']}: {s['epochs']} epochs, {s['steps']} steps")
        print(
            f"test top-1 {s['test_top1']:.2f}%  top-5 {s['test_top5']:.2f}%  loss {s['test_loss']:.4f}  "
            f"(train loss {s['train_loss']:.4f}, {s['images_per_second']:.0f} images/s on {s['device']})"
        )
        note_written(args.out)
        return 0
    configs = [experiment.config(arm, experiment.seeds[0]) for arm in experiment.arms]
    inputs = [
        args.experiment,
        *(x for c in configs for x in (c.data, c.weights, c.keys if MODES[c.mode].uses_keys else None)),
    ]
    _check_out(args, inputs)
    for config in configs:
        resolve_model_name(config.model)
    with _failed_run_cleanup(args.out):
        summary = run_experiment(experiment, args.out, resume=args.resume, overwrite=args.overwrite, jobs=args.jobs)
    if not summary:  # not rank 0
        return 0
    return _report_experiment(summary, args)


def _check_out(args: argparse.Namespace, inputs: list[Any]) -> None:
    """The output rule for OUT and OUT.partial, before anything is read or trained."""
    from masterkey.train.loop import partial_dir

    check_output(args.out, "train", overwrite=args.overwrite or args.resume, inputs=inputs)
    check_output(partial_dir(args.out), "train", overwrite=True, inputs=inputs)


@contextlib.contextmanager
def _failed_run_cleanup(out: str) -> Iterator[None]:
    """When training fails, an ``OUT.partial`` this command started is removed unless it holds work to resume (a
    checkpoint or a finished run); then the error says that ``--resume`` continues it."""
    from masterkey.train.loop import partial_dir

    partial = partial_dir(out)
    existed, created = partial.exists(), missing_parents(out)
    try:
        yield
    except OutputBusyError:
        raise
    except Exception as exc:
        kept = partial.is_dir() and any(p.name in ("checkpoint.pt", "summary.json") for p in partial.rglob("*"))
        if partial.is_dir() and not existed and not kept:
            shutil.rmtree(partial, ignore_errors=True)
            remove_empty_folders(created)
        if kept and isinstance(exc, MasterkeyError):
            raise MasterkeyError(f"{exc}; the work so far is kept in {partial}: rerun with --resume") from exc
        raise


def _report_experiment(summary: dict[str, Any], args: argparse.Namespace) -> int:
    if args.json:
        print_json(summary)
        note_written(args.out)
        return 0
    rows = []
    for arm, entry in summary["arms"].items():
        top1 = entry["test_top1"]
        rows.append(
            {
                "arm": entry.get("arm", arm),
                **({"train_size": entry["train_size"]} if "train_size" in entry else {}),
                "mode": entry["train_mode"],
                "keys": entry["keys"] or "-",
                "n": entry["n"],
                "top1 %": top1["mean"],
                "top1 ±95% CI": top1["ci95"],
                "top5 %": entry["test_top5"]["mean"],
                "train_loss": entry["train_loss"]["mean"],
            }
        )
    print(format_table(rows, digits=2))
    note("test top-1 / top-5 in percent: mean and 95% CI half-width in points (Student t) over seeds")
    note_written(args.out)
    return 0
