"""The training loop: one flat function, :func:`train`, in the style of small single-file trainers.

AdamW (no weight decay on 1-D parameters: norms, biases, key offsets / scales), linear warm-up then cosine decay
per step, label smoothing, optional mixup / cutmix and EMA, bf16 autocast on CUDA, channels-last on CUDA, DDP
under torchrun. A run directory is filled while training under ``OUT.partial`` (every file written atomically;
``checkpoint.pt`` after every epoch) and renamed to ``OUT`` when training ends, so ``OUT`` is always complete.

Exact resume: the checkpoint holds model, optimiser, scheduler, EMA and RNG states, the metrics so far and the
resolved config. The data order, crops, flips, mixup draws and the global RNG of every epoch are derived from
``(seed, epoch)``, so a run killed anywhere in an epoch and resumed replays that epoch bit for bit (on CPU; CUDA
kernels may be non-deterministic).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import random
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from masterkey.errors import MasterkeyError
from masterkey.files import atomic_write, replace_directory, write_json, write_lock, write_text
from masterkey.keys import load_keys
from masterkey.networks.keyconv import (
    TRANSFER_MODES,
    ConvertedLayer,
    convert_to_keys,
    depthwise_epoch_stats,
    depthwise_summary,
    export_state_dict,
    key_counts,
    parameter_counts,
    transfer_filters,
)
from masterkey.runs import write_run_info
from masterkey.train import data as D
from masterkey.train.config import TrainConfig, config_differences
from masterkey.train.distributed import (
    Distributed,
    all_reduce_sum,
    barrier,
    init_distributed,
    run_on_main,
    shard_batch,
    shard_eval,
    shutdown,
)

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = "masterkey-train-checkpoint/1"
EPOCH_COLUMNS = ["epoch", "step", "lr", "train_loss", "train_acc", "test_loss", "test_top1", "test_top5", "seconds"]
StepCallback = Callable[[int, int], None]


@dataclass
class TrainResult:
    """What :func:`train` returns: the summary (also ``summary.json``), the trained model (DDP / compile wrappers
    removed; frozen layers are :class:`~masterkey.networks.keyconv.KeyConv2d`), the EMA model if any, and the run
    dir."""

    summary: dict[str, Any]
    model: nn.Module
    ema_model: nn.Module | None
    out: Path | None


def partial_dir(out: str | Path) -> Path:
    """Where a run lives until it completes: ``OUT.partial`` beside ``OUT``."""
    out = Path(out)
    return out.with_name(f"{out.name}.partial")


# ---------------------------------------------------------------------- building blocks
def build_model(config: TrainConfig) -> tuple[nn.Module, list[ConvertedLayer]]:
    """The network of ``config`` (timm / torchvision by name with ``model_kwargs``), optionally loaded from
    ``config.weights``, then given keys (or the filters of ``config.filters_from``) as ``config.mode`` says. Seed
    the global RNG first for a fixed init."""
    from masterkey.networks.models import build_architecture, load_weights, read_state_dict

    model = build_architecture(config.model, **config.model_kwargs)
    if config.weights:
        state, _ = read_state_dict(config.weights)
        try:
            load_weights(model, state, source=config.weights, new_head=config.new_head)
        except MasterkeyError as exc:
            if "class-count mismatch" not in str(exc):
                raise
            raise MasterkeyError(f"{exc}; to fine-tune on the data's classes pass --new-head") from None
    if config.mode in TRANSFER_MODES:
        assert config.filters_from is not None
        return model, transfer_filters(model, config.filters_from, freeze=config.mode == "transfer-frozen")
    converted = convert_to_keys(
        model,
        config.keys,
        config.mode,
        config.assignment,
        seed=config.seed,
        learn_scale=config.learn_scale,
        key_gain=config.key_gain,
        resize=config.resize_keys,
        sigma_scope=config.sigma_scope,
    )
    return model, converted


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:200]


def make_optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW; 1-D parameters (norms, biases, key offsets and scales) get no weight decay (timm's grouping)."""
    from timm.optim import param_groups_weight_decay

    groups = param_groups_weight_decay(model, config.weight_decay)
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.999), fused=device.type == "cuda")


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Multiplier of the base lr at ``step``: linear warm-up to 1 over ``warmup_steps``, then cosine to
    ``min_ratio`` at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int) -> Any:
    """Per-step warm-up + cosine schedule (a ``LambdaLR``; its state is just the step count)."""
    total = config.epochs * steps_per_epoch
    warmup = min(total, round(config.warmup_epochs * steps_per_epoch))
    ratio = config.min_lr / config.lr
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup, total, ratio))


def loss_fn(logits: Tensor, targets: Tensor, label_smoothing: float) -> Tensor:
    """Cross-entropy on hard labels (with smoothing) or on soft targets (already smoothed and mixed)."""
    if targets.ndim == 2:
        return F.cross_entropy(logits.float(), targets)
    return F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    mean: Tensor,
    std: Tensor,
    batch_size: int,
    info: Distributed | None = None,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> dict[str, float]:
    """Loss (plain cross-entropy), top-1 and top-5 accuracy (percent) of ``model`` on uint8 ``images``.

    Under DDP each rank evaluates a disjoint shard and the sums are all-reduced, so the numbers are exact.
    """
    info = info or Distributed()
    was_training = model.training
    model.eval()
    device = images.device
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, count
    index = shard_eval(len(labels), info.rank, info.world_size).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for chunk in index.split(batch_size):
        if len(chunk) == 0:  # a rank with no test images left still joins the all-reduce below
            continue
        x = D.normalize_images(images[chunk], mean, std).contiguous(memory_format=fmt)
        y = labels[chunk]
        with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
            logits = model(x)
        logits = logits.float()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        sums[0] += F.cross_entropy(logits, y, reduction="sum").double()
        sums[1] += (top[:, 0] == y).sum()
        sums[2] += (top == y[:, None]).any(dim=1).sum()
        sums[3] += len(y)
    all_reduce_sum(sums, info)
    model.train(was_training)
    n = max(1.0, float(sums[3]))
    return {"loss": float(sums[0]) / n, "top1": 100 * float(sums[1]) / n, "top5": 100 * float(sums[2]) / n}


# ---------------------------------------------------------------------- state
def rng_state() -> dict[str, Any]:
    """Global RNG states (torch CPU / CUDA, numpy, Python), in a form ``torch.load(weights_only=True)`` reads."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A training checkpoint written by :func:`train` (read with ``weights_only=True``)."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise MasterkeyError(f"{path}: not a readable training checkpoint ({_first_line(exc)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise MasterkeyError(f"{path}: not a masterkey training checkpoint (format {CHECKPOINT_FORMAT})")
    return ckpt


def _csv_text(rows: list[dict[str, Any]]) -> str:
    columns = list(EPOCH_COLUMNS)
    for row in rows:
        columns += [c for c in row if c not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_metrics(run_dir: Path, epoch_rows: list[dict[str, Any]], step_rows: list[dict[str, Any]]) -> None:
    """``metrics.csv`` (one row per epoch) and ``metrics.jsonl`` (step rows and epoch rows in step order)."""
    write_text(run_dir / "metrics.csv", _csv_text(epoch_rows))
    merged = sorted([*step_rows, *epoch_rows], key=lambda r: (r["step"], "test_top1" in r))
    write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in merged))


def _check_out(out: Path, resume: bool, overwrite: bool) -> bool:
    """Check the output location (changing nothing); returns whether a checkpoint will be resumed from."""
    partial = partial_dir(out)
    if out.exists() and not overwrite:
        if resume:
            raise MasterkeyError(f"{out} is already complete; nothing to resume (pass --overwrite to train again)")
        raise MasterkeyError(f"{out} already exists (pass --overwrite to replace it)")
    if partial.exists():
        if resume:
            return (partial / CHECKPOINT).is_file()
        if not overwrite:
            raise MasterkeyError(
                f"{partial} holds an interrupted run: pass --resume to continue it or --overwrite to start over"
            )
    elif resume:
        raise MasterkeyError(f"nothing to resume: neither {out} nor {partial} exists")
    return False


def _start_out(out: Path, resume: bool) -> None:
    """Create ``OUT.partial`` (an old interrupted one is removed unless resuming), once the inputs are checked."""
    partial = partial_dir(out)
    if partial.exists() and not resume:
        shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)


def publish(partial: Path, out: Path) -> None:
    """Rename the finished ``OUT.partial`` to ``OUT`` (replacing an old ``OUT`` only now)."""
    replace_directory(partial, out)


# ---------------------------------------------------------------------- the loop
def train(
    config: TrainConfig,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    on_step: StepCallback | None = None,
) -> TrainResult:
    """Train ``config`` and write a run directory to ``out`` (nothing is written when ``out`` is None).

    ``resume`` continues ``OUT.partial`` from its last checkpoint (refused when the checkpoint's config differs
    in anything but runtime fields). ``on_step(epoch, global_step)`` is called after every optimiser step.
    Under ``torchrun`` every rank calls this; rank 0 writes the files.
    """
    from masterkey.networks.models import resolve_model_name

    config = config.validated()
    resolve_model_name(config.model)  # an unknown name fails before any data is read
    threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    info, device = init_distributed(config.device)
    try:
        return _train(config, Path(out) if out is not None else None, info, device, resume, overwrite, on_step)
    finally:
        shutdown(info)
        torch.set_num_threads(threads)


def _train(
    config: TrainConfig,
    out: Path | None,
    info: Distributed,
    device: torch.device,
    resume: bool,
    overwrite: bool,
    on_step: StepCallback | None,
) -> TrainResult:
    run_dir = partial_dir(out) if out is not None else None
    with contextlib.ExitStack() as stack:
        if out is not None and info.is_main:
            stack.enter_context(write_lock(out))
        has_checkpoint = run_on_main(info, lambda: _check_out(out, resume, overwrite) if out is not None else False)

        # Data: rank 0 decodes (and fills the cache) first, the other ranks then read the cache.
        def load() -> D.TrainData:
            return D.load_train_data(
                config.data, config.image_size, config.max_train_images, config.max_test_images, config.normalize
            )

        loaded: list[D.TrainData] = []
        run_on_main(info, lambda: loaded.append(load()))
        data = loaded[0] if loaded else load()
        n_classes = len(data.classes)
        kwargs = dict(config.model_kwargs)
        if kwargs.setdefault("num_classes", n_classes) != n_classes:
            raise MasterkeyError(
                f"--model-kwargs num_classes={kwargs['num_classes']} but {data.train_dir} has {n_classes} classes"
            )
        if config.normalize == "auto":
            normalize = "cifar10" if data.mean == D.CIFAR10_MEAN else "imagenet"
        else:
            normalize = config.normalize
        config = config.replace(model_kwargs=kwargs, normalize=normalize)

        ckpt = None
        if has_checkpoint:
            assert run_dir is not None
            ckpt = load_checkpoint(run_dir / CHECKPOINT)
            diffs = config_differences(ckpt["config"], config)
            if diffs:
                raise MasterkeyError(
                    f"{run_dir / CHECKPOINT} was written by a different config: {'; '.join(diffs)} "
                    "(resume with the same options, or start over with --overwrite)"
                )

        # Model, optimiser, schedule, EMA.
        torch.manual_seed(D.derive_seed(config.seed, "init"))
        model, converted = build_model(config)
        model.to(device)
        channels_last = config.channels_last if config.channels_last is not None else device.type == "cuda"
        if channels_last:
            model.to(memory_format=torch.channels_last)
        amp_dtype = torch.bfloat16 if config.amp == "bf16" or (config.amp == "auto" and device.type == "cuda") else None
        steps = D.steps_per_epoch(len(data.train), config.batch_size)
        if config.batch_size % info.world_size:
            raise MasterkeyError(
                f"--batch-size {config.batch_size} is not a multiple of the {info.world_size} processes"
            )
        optimizer = make_optimizer(model, config, device)
        scheduler = make_scheduler(optimizer, config, steps)
        ema = None
        if config.ema_decay is not None:
            from timm.utils import ModelEmaV3

            ema = ModelEmaV3(model, decay=config.ema_decay)
        start_epoch, global_step, train_seconds = 0, 0, 0.0
        epoch_rows: list[dict[str, Any]] = []
        step_rows: list[dict[str, Any]] = []
        if ckpt is not None:
            from masterkey.networks.models import describe_mismatch

            try:
                model.load_state_dict(ckpt["model"], strict=True)
            except RuntimeError:
                raise MasterkeyError(
                    f"{run_dir}/{CHECKPOINT}: {describe_mismatch(ckpt['model'], model.state_dict())}"
                ) from None
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            if ema is not None and ckpt.get("ema") is not None:
                ema.load_state_dict(ckpt["ema"])
            set_rng_state(ckpt["rng"])
            start_epoch, global_step = int(ckpt["epoch"]), int(ckpt["step"])
            train_seconds = float(ckpt.get("train_seconds", 0.0))
            epoch_rows, step_rows = list(ckpt["rows"]), list(ckpt["step_rows"])
        net: nn.Module = model
        if info.enabled:
            net = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )
        if config.compile:
            net = torch.compile(net)

        # Images stay uint8 on the device; normalisation and augmentation happen there, per batch.
        train_images, train_labels = data.train.images.to(device), data.train.labels.to(device)
        test_images, test_labels = data.test.images.to(device), data.test.labels.to(device)
        mean = torch.tensor(data.mean, device=device)
        std = torch.tensor(data.std, device=device)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        per_rank = config.batch_size // info.world_size
        mixing = config.mixup > 0 or config.cutmix > 0
        augment = config.crop_padding > 0 or config.hflip

        keyset = load_keys(config.keys) if config.mode not in ("trainable", *TRANSFER_MODES) else None
        resolved = config.to_dict()
        if out is not None:
            run_on_main(info, lambda: _start_out(out, resume))  # only now: bad input leaves nothing behind
        if run_dir is not None and info.is_main:
            write_run_info(run_dir, "train", resolved)
        writer = None
        if config.tensorboard and run_dir is not None and info.is_main:
            from masterkey.networks.models import import_optional

            import_optional("tensorboard", "tensorboard")
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(run_dir / "tensorboard"))
        from tqdm.auto import tqdm

        show = None if config.progress is None else config.progress
        net.train()
        for epoch in range(start_epoch, config.epochs):
            # The global RNG (drop-path, dropout) restarts from (seed, epoch, rank) every epoch: exact replay.
            torch.manual_seed(D.derive_seed(config.seed, epoch, info.rank, "torch"))
            order = D.epoch_order(len(data.train), config.seed, epoch)
            sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, correct, count
            window = torch.zeros(2, dtype=torch.float64, device=device)  # loss, count since the last step row
            start = time.perf_counter()
            bar = tqdm(
                total=steps,
                desc=f"epoch {epoch + 1}/{config.epochs}",
                disable=(not info.is_main) or (None if show is None else not show),
                leave=False,
                file=sys.stderr,
            )
            for step in range(steps):
                index = shard_batch(D.global_batch(order, step, config.batch_size), info.rank, info.world_size)
                index = index.to(device, non_blocking=True)
                x = D.normalize_images(train_images[index], mean, std)
                if augment:
                    params = D.crop_flip_params(
                        config.batch_size, config.crop_padding, config.hflip, config.seed, epoch, step
                    ).slice(info.rank * per_rank, (info.rank + 1) * per_rank)
                    x = D.random_crop_flip(x, config.crop_padding, params)
                x = x.contiguous(memory_format=fmt)
                y = train_labels[index]
                targets: Tensor = y
                if mixing:
                    targets = D.soft_targets(y, n_classes, config.label_smoothing)
                    x, targets = D.mix_batch(
                        x, targets, config.mixup, config.cutmix, config.seed, epoch, step, info.rank
                    )
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp_dtype is not None):
                    logits = net(x)
                loss = loss_fn(logits, targets, config.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                lr = optimizer.param_groups[0]["lr"]
                optimizer.step()
                scheduler.step()
                if ema is not None:
                    ema.update(model, step=global_step)
                global_step += 1
                detached = loss.detach().double()
                sums[0] += detached * len(y)
                sums[1] += (logits.detach().argmax(dim=1) == y).sum()
                sums[2] += len(y)
                window[0] += detached
                window[1] += 1
                if global_step % config.log_every == 0 or step == steps - 1:
                    all_reduce_sum(window, info)
                    mean_loss = float(window[0] / window[1])
                    window.zero_()
                    step_rows.append({"step": global_step, "epoch": epoch + 1, "lr": lr, "train_loss": mean_loss})
                    bar.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{lr:.2e}", refresh=False)
                    if writer is not None:
                        writer.add_scalar("train/loss", mean_loss, global_step)
                        writer.add_scalar("train/lr", lr, global_step)
                bar.update()
                if on_step is not None:
                    on_step(epoch, global_step)
            bar.close()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            train_time = time.perf_counter() - start
            train_seconds += train_time
            all_reduce_sum(sums, info)
            row: dict[str, Any] = {
                "epoch": epoch + 1,
                "step": global_step,
                "lr": lr,
                "train_loss": float(sums[0] / sums[2]),
                "train_acc": 100 * float(sums[1] / sums[2]),
            }
            evaluation = evaluate(
                model, test_images, test_labels, mean, std, config.eval_batch_size, info, amp_dtype, channels_last
            )
            row.update({f"test_{k}": v for k, v in evaluation.items()})
            if ema is not None:
                ema_eval = evaluate(
                    ema.module, test_images, test_labels, mean, std, config.eval_batch_size, info, amp_dtype,
                    channels_last,
                )  # fmt: skip
                row.update({f"ema_test_{k}": v for k, v in ema_eval.items()})
            row["seconds"] = time.perf_counter() - start
            row["images_per_second"] = steps * config.batch_size / train_time
            row.update(depthwise_epoch_stats(model))  # learned σ / mixing weights (span, scalespace modes)
            epoch_rows.append(row)
            if info.is_main:
                line = (
                    f"epoch {epoch + 1}/{config.epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.2f}%"
                    f"  test loss {row['test_loss']:.4f} top-1 {row['test_top1']:.2f}%  {row['seconds']:.1f} s"
                )
                tqdm.write(line, file=sys.stderr)
                if writer is not None:
                    for name in ("train_loss", "train_acc", "test_loss", "test_top1", "test_top5"):
                        writer.add_scalar(name.replace("_", "/", 1), row[name], epoch + 1)
            if run_dir is not None and info.is_main:
                checkpoint = {
                    "format": CHECKPOINT_FORMAT,
                    "config": resolved,
                    "epoch": epoch + 1,
                    "step": global_step,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "ema": ema.state_dict() if ema is not None else None,
                    "rng": rng_state(),
                    "rows": epoch_rows,
                    "step_rows": step_rows,
                    "train_seconds": train_seconds,
                }
                with atomic_write(run_dir / CHECKPOINT) as f:
                    torch.save(checkpoint, f)
                write_metrics(run_dir, epoch_rows, step_rows)

        if writer is not None:
            writer.close()
        last = epoch_rows[-1]
        summary: dict[str, Any] = {
            "model": config.model,
            "model_kwargs": config.model_kwargs,
            "mode": config.mode,
            "keys": keyset.name if keyset is not None else None,
            "assignment": config.assignment if config.mode not in ("trainable", *TRANSFER_MODES) else None,
            "learn_scale": config.learn_scale,
            "seed": config.seed,
            "epochs": config.epochs,
            "steps": global_step,
            "batch_size": config.batch_size,
            "n_train": len(data.train),
            "n_test": len(data.test),
            "classes": data.classes,
            "image_shape": list(data.image_shape),
            **{k: last[k] for k in ("train_loss", "train_acc", "test_loss", "test_top1", "test_top5")},
            "best_test_top1": max(r["test_top1"] for r in epoch_rows),
            "train_seconds": train_seconds,
            "images_per_second": config.epochs * steps * config.batch_size / max(train_seconds, 1e-9),
            "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
            "world_size": info.world_size,
            "amp": "bf16" if amp_dtype is not None else "none",
            "channels_last": channels_last,
            "parameters": parameter_counts(model),
            "key_counts": key_counts(model, len(keyset) if keyset is not None else None),
            "converted_layers": [layer.__dict__ for layer in converted],
        }
        summary.update(_depthwise_entries(config, model))
        if ema is not None:
            summary.update({k: last[k] for k in ("ema_test_loss", "ema_test_top1", "ema_test_top5")})
        if run_dir is not None and info.is_main:
            assert out is not None
            _write_final(run_dir, model, ema, config, summary)
            publish(run_dir, out)
        barrier(info)
        return TrainResult(summary, model, ema.module if ema is not None else None, out)


def _depthwise_entries(config: TrainConfig, model: nn.Module) -> dict[str, Any]:
    """Summary entries of the newer modes (none for trainable / frozen / key-init: their summaries are unchanged)."""
    out: dict[str, Any] = {}
    if config.mode == "scalespace":
        out["sigma_scope"] = config.sigma_scope
    if config.mode in TRANSFER_MODES:
        out["filters_from"] = config.filters_from
    learned = depthwise_summary(model)
    if learned:
        out["depthwise_layers"] = learned
    return out


def _write_final(run_dir: Path, model: nn.Module, ema: Any, config: TrainConfig, summary: dict[str, Any]) -> None:
    from safetensors.torch import save

    meta = {
        "arch": config.model.partition(":")[2] or config.model,
        "model_kwargs": json.dumps(config.model_kwargs, sort_keys=True),
        "mode": config.mode,
        "keys": str(summary["keys"]),
        "seed": str(config.seed),
        "epochs": str(config.epochs),
        "test_top1": f"{summary['test_top1']:.2f}",
        "format": "pt",
    }
    for name in ("num_classes", "patch_size", "in_chans"):
        if name in config.model_kwargs:
            meta[name] = str(config.model_kwargs[name])
    for name, net in (("model", model), ("model_ema", ema.module if ema is not None else None)):
        if net is None:
            continue
        state = {k: v.contiguous() for k, v in export_state_dict(net).items()}
        with atomic_write(run_dir / f"{name}.safetensors") as f:
            f.write(save(state, metadata=meta))
    write_json(run_dir / "summary.json", summary)
