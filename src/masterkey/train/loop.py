"""The training loop, :func:`train`, read top to bottom in :func:`_train`: check the output, open the data (in
memory or streamed), build or restore the state, train epoch by epoch (evaluate, log, checkpoint), summarise.

AdamW (no weight decay on 1-D parameters: norms, biases, key offsets / scales), linear warm-up then cosine decay
per step, label smoothing, optional mixup / cutmix and EMA, bf16 autocast on CUDA, channels-last on CUDA, DDP
under torchrun (one node or many). A run directory is filled while training under ``OUT.partial`` (every file
written atomically; ``checkpoint.pt`` after every epoch and every ``checkpoint_every`` steps) and renamed to
``OUT`` when training ends, so ``OUT`` is always complete.

Exact resume: the checkpoint holds model, optimiser, scheduler, EMA and RNG states, the position (epoch, step in
the epoch), every rank's partial sums and RNG state mid-epoch, the metrics so far and the resolved config. The data
order, crops, flips, per-image augmentation and mixup draws are functions of ``(seed, epoch, step / image)``, so a
run killed anywhere resumes bit for bit (on CPU; CUDA kernels may be non-deterministic). Pieces:
:mod:`~masterkey.train.loader` (data), :mod:`~masterkey.train.state` (state, optimiser, checkpoints),
:mod:`~masterkey.train.epoch` (one epoch, evaluation), :mod:`~masterkey.train.rundir` (files).
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from masterkey.data.evaluate import check_class_count
from masterkey.errors import MasterkeyError, option
from masterkey.files import atomic_write, write_lock
from masterkey.keys import load_keys
from masterkey.nn.modes import MODES
from masterkey.nn.summary import depthwise_epoch_stats, depthwise_summary, key_counts, parameter_counts
from masterkey.progress import progress_bar
from masterkey.runs import write_run_info
from masterkey.threads import torch_threads
from masterkey.train.config import TrainConfig, config_differences
from masterkey.train.distributed import (
    Distributed,
    all_reduce_sum,
    barrier,
    broadcast_object,
    gather_objects,
    init_distributed,
    run_on_main,
    shutdown,
)
from masterkey.train.epoch import BatchCallback, StepCallback, running_share, train_epoch
from masterkey.train.loader import TrainInputs, open_train_inputs
from masterkey.train.model import build_model
from masterkey.train.optim import schedule_steps
from masterkey.train.recipes import describe, recipe_for
from masterkey.train.rundir import (
    EPOCH_COLUMNS,
    EXTEND,
    FRESH,
    RESUME,
    already_complete,
    check_out,
    checkpoint_path,
    config_inputs,
    failed_run_cleanup,
    partial_dir,
    publish,
    start_out,
    write_final,
    write_metrics,
)
from masterkey.train.state import (
    CHECKPOINT,
    CHECKPOINT_FORMAT,
    TrainState,
    build_state,
    load_checkpoint,
    lr_factor,
    rng_state,
)

__all__ = [
    "CHECKPOINT",
    "EPOCH_COLUMNS",
    "BatchCallback",
    "StepCallback",
    "TrainResult",
    "build_model",
    "lr_factor",
    "partial_dir",
    "publish",
    "train",
]
log = logging.getLogger("masterkey")


@dataclass
class TrainResult:
    """What :func:`train` returns: the summary (also ``summary.json``), the trained model (DDP / compile wrappers
    removed; frozen layers hold a :class:`~masterkey.nn.layers.KeyKernel`), the EMA model if any, and the run
    dir."""

    summary: dict[str, Any]
    model: nn.Module
    ema_model: nn.Module | None
    out: Path | None


def train(
    config: TrainConfig,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    on_step: StepCallback | None = None,
    on_batch: BatchCallback | None = None,
) -> TrainResult:
    """Train ``config`` and write a run directory to ``out`` (nothing is written when ``out`` is None).

    ``resume`` continues ``OUT.partial`` from its last checkpoint (refused when the checkpoint's config differs in
    anything but runtime fields and ``epochs``), or a complete ``OUT`` with more ``epochs``. ``on_step(epoch,
    global_step)`` is called after every optimiser step; ``on_batch(epoch, step, index, x)`` with every batch this
    rank trains on. Under ``torchrun`` every rank calls this; rank 0 writes the files.
    """
    from masterkey.networks.models import resolve_model_name

    config = config.validated()
    resolve_model_name(config.model)  # an unknown name fails before any data is read
    with torch_threads(config.threads):
        info, device = init_distributed(config.device)
        try:
            out_path = Path(out) if out is not None else None
            main = out_path is not None and info.is_main
            with failed_run_cleanup(out_path) if main else contextlib.nullcontext():
                return _train(config, out_path, info, device, resume, overwrite, on_step, on_batch)
        finally:
            shutdown(info)


def _train(
    config: TrainConfig,
    out: Path | None,
    info: Distributed,
    device: torch.device,
    resume: bool,
    overwrite: bool,
    on_step: StepCallback | None,
    on_batch: BatchCallback | None,
) -> TrainResult:
    run_dir = partial_dir(out) if out is not None else None
    with contextlib.ExitStack() as stack:
        if out is not None and info.is_main:
            stack.enter_context(write_lock(out))
        reads = config_inputs(config)
        plan = run_on_main(
            info, lambda: check_out(out, resume, overwrite, config.epochs, reads) if out is not None else FRESH
        )
        if config.recipe and info.is_main:
            log.info(describe(config.recipe, config.to_dict()))

        inputs = open_train_inputs(config, info, device)
        config = _resolve(config, inputs)
        steps = inputs.batches.steps
        if config.update_freq > config.batch_size // info.world_size:
            raise MasterkeyError(
                f"{option('update_freq', config.update_freq)}: more micro-batches than the "
                f"{config.batch_size // info.world_size} images each process takes per step"
            )
        notes = schedule_warnings(config, steps)
        if info.is_main:
            for line in notes:
                log.warning(f"warning: {line}")
        ckpt = _read_checkpoint(out, plan, config, info, steps) if plan in (RESUME, EXTEND) else None
        state = build_state(config, steps, info, device, ckpt, build_model)
        # One test image through the model before any work: images it cannot take (1x1) fail here, in one line.
        how = _evaluation(state, config, inputs, device)
        check_class_count(state.model, inputs.test, inputs.preprocessing, how=how)

        keyset = load_keys(config.keys) if MODES[config.mode].uses_keys else None
        resolved = config.to_dict()
        if out is not None:
            run_on_main(info, lambda: start_out(out, plan))  # only now: bad input leaves nothing behind
        if run_dir is not None and info.is_main:
            recipe = recipe_for(config.recipe, config.model).provenance() if config.recipe else None
            write_run_info(run_dir, "train", resolved, recipe=recipe, warnings=notes)
        writer = _tensorboard(config, run_dir, info)

        def save(running: dict[str, Any] | None = None) -> None:
            """Checkpoint (every rank takes part: mid-epoch, each rank's sums and RNG state are gathered)."""
            shares = gather_objects(running_share(running, info), info) if running is not None else None
            if run_dir is not None and info.is_main:
                buffer = io.BytesIO()  # serialised first, so that a full disk is an OSError of the write below
                torch.save(_checkpoint(state, resolved, shares), buffer)
                with atomic_write(run_dir / CHECKPOINT) as f:
                    f.write(buffer.getbuffer())
                write_metrics(run_dir, state.epoch_rows, state.step_rows)

        state.net.train()
        for epoch in range(state.epoch, config.epochs):
            bar = _progress(config, info, epoch, inputs.batches.steps, state.epoch_step)
            row = train_epoch(
                state, inputs.batches, config, info, device, epoch, len(inputs.classes),
                checkpoint=save, on_step=on_step, on_batch=on_batch, bar=bar, writer=writer,
            )  # fmt: skip
            bar.close()
            eval_start = time.perf_counter()
            row.update(_evaluate_models(state, inputs, config, info, device))
            row["seconds"] = row.pop("train_seconds") + time.perf_counter() - eval_start
            row.update(depthwise_epoch_stats(state.model))  # learned σ / mixing weights (span, scalespace modes)
            state.epoch_rows.append(row)
            state.epoch, state.epoch_step = epoch + 1, 0
            _log_epoch(row, config, info, writer, inputs)
            save()

        if writer is not None:
            writer.close()
        summary = _summary(config, state, inputs, keyset, info, device)
        summary["warnings"] = notes
        if run_dir is not None and info.is_main:
            assert out is not None
            write_final(run_dir, state.model, state.ema, config, summary, inputs.preprocessing)
            publish(run_dir, out)
        barrier(info)
        return TrainResult(summary, state.model, state.ema.module if state.ema is not None else None, out)


# ---------------------------------------------------------------------- pieces of _train, in the order used
def schedule_warnings(config: TrainConfig, steps_per_epoch: int) -> list[str]:
    """What about the run's schedule could mislead a reader of its numbers (one line each; also in ``run.json``,
    ``summary.json`` and the report): a run whose steps are all warm-up never reaches the cosine decay, so its
    accuracy says little about the recipe (a 1-epoch run with the default 1 warm-up epoch is one)."""
    warmup, total = schedule_steps(config, steps_per_epoch)
    if warmup >= total and config.warmup_epochs > 0:
        return [
            f"all {total} steps are warm-up ({config.epochs} epoch{'s' * (config.epochs != 1)}, warmup_epochs "
            f"{config.warmup_epochs:g}): the "
            "learning rate only rises and never decays, so this run's accuracy is not that of the recipe (train "
            f"longer, or give fewer warm-up epochs with {option('warmup_epochs', 'N')})"
        ]
    return []


def _resolve(config: TrainConfig, inputs: TrainInputs) -> TrainConfig:
    """The config with what the data and keys decide: ``num_classes``, the normalisation actually used and the
    key assignment (``auto``: the published proportions for the paper's own keys, else uniform)."""
    n_classes = len(inputs.classes)
    kwargs = dict(config.model_kwargs)
    if kwargs.setdefault("num_classes", n_classes) != n_classes:
        raise MasterkeyError(
            f"{option('model_kwargs', 'num_classes=' + str(kwargs['num_classes']))} but {inputs.source} has "
            f"{n_classes} classes"
        )
    if config.normalize == "auto":
        from masterkey.data.preprocessing import CIFAR10_MEAN

        normalize = "cifar10" if inputs.mean == CIFAR10_MEAN else "imagenet"
    else:
        normalize = config.normalize
    return config.replace(model_kwargs=kwargs, normalize=normalize, assignment=config.key_assignment())


def _read_checkpoint(out: Path | None, plan: str, config: TrainConfig, info: Distributed, steps: int) -> dict[str, Any]:
    """Rank 0 reads the checkpoint, checks it was written by this config (``epochs`` may change) and hands it to
    every rank (so other nodes need not see the run directory)."""
    assert out is not None
    path = checkpoint_path(out, plan)
    read: list[dict[str, Any]] = []

    def check() -> None:
        ckpt = load_checkpoint(path)
        diffs = config_differences(ckpt["config"], config, ignore=("epochs",))
        if diffs:
            raise MasterkeyError(
                f"{path} was written by a different config: {'; '.join(diffs)} "
                f"(resume with the same options, or start over with {option('overwrite', True)})"
            )
        _check_epochs(ckpt, config, out, plan, steps)
        read.append(ckpt)

    run_on_main(info, check)  # an error on rank 0 stops every rank
    return broadcast_object(read[0] if read else None, info)


def _check_epochs(ckpt: dict[str, Any], config: TrainConfig, out: Path, plan: str, steps: int) -> None:
    """Fewer epochs than done are refused; another number than planned continues the run with the schedule
    recomputed over the new total from the current step (one warning)."""
    planned, done, step = int(ckpt["config"]["epochs"]), int(ckpt["epoch"]), int(ckpt["step"])
    if plan == EXTEND and config.epochs <= done:
        raise already_complete(out, done)
    if config.epochs < done or (config.epochs == done and ckpt["epoch_step"]):
        raise MasterkeyError(f"{option('epochs', config.epochs)}: the checkpoint has already trained {done} epochs")
    if config.epochs != planned:
        ratio = config.min_lr / config.lr
        warmup = round(config.warmup_epochs * steps)
        before = lr_factor(step, min(planned * steps, warmup), planned * steps, ratio)
        after = lr_factor(step, min(config.epochs * steps, warmup), config.epochs * steps, ratio)
        log.warning(
            f"warning: continuing a run planned for {planned} epochs to {config.epochs}: the warm-up + cosine "
            f"schedule is recomputed over {config.epochs} epochs from step {step}, so the learning rate goes from "
            f"{before:.0%} to {after:.0%} of its peak (not what a {config.epochs}-epoch run from the start would do)"
        )


def _evaluation(state: TrainState, config: TrainConfig, inputs: TrainInputs, device: torch.device) -> Any:
    """How the training model is evaluated: where it is, in its memory format and autocast."""
    from masterkey.data.evaluate import Evaluation

    return Evaluation(
        batch_size=config.eval_batch_size,
        device=device,
        workers=inputs.workers,
        amp_dtype=state.amp_dtype,
        memory_format=torch.channels_last if state.channels_last else torch.contiguous_format,
        place_model=False,
    )


def _evaluate_models(
    state: TrainState, inputs: TrainInputs, config: TrainConfig, info: Distributed, device: torch.device
) -> dict[str, float]:
    """``test_loss`` / ``test_top1`` / ``test_top5`` (percent) of the model and ``ema_test_*`` of its EMA (with
    ``config.ema_eval``), on the test images (in memory or streamed; under DDP each rank evaluates a shard and the
    sums are all-reduced)."""
    from masterkey.data.batches import shard_eval
    from masterkey.data.evaluate import evaluate

    how = _evaluation(state, config, inputs, device)
    index = shard_eval(len(inputs.test), info.rank, info.world_size)
    models = [("test", state.model)]
    if state.ema is not None and config.ema_eval:
        models.append(("ema_test", state.ema.module))
    out = {}
    for prefix, model in models:
        metrics = evaluate(
            model, inputs.test, inputs.preprocessing, how=how, index=index,
            reduce=lambda sums: all_reduce_sum(sums, info), check_classes=False,
        )  # fmt: skip
        out.update({f"{prefix}_{k}": metrics[k] for k in ("loss", "top1", "top5")})
    return out


def _tensorboard(config: TrainConfig, run_dir: Path | None, info: Distributed) -> Any:
    if not (config.tensorboard and run_dir is not None and info.is_main):
        return None
    from masterkey.networks.models import import_optional

    import_optional("tensorboard", "tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(run_dir / "tensorboard"))


def _progress(config: TrainConfig, info: Distributed, epoch: int, steps: int, done: int) -> Any:
    show = sys.stderr.isatty() if config.progress is None else config.progress
    desc = f"epoch {epoch + 1}/{config.epochs}"
    return progress_bar(total=steps, initial=done, desc=desc, unit="step", enabled=info.is_main and show)


def _log_epoch(row: dict[str, Any], config: TrainConfig, info: Distributed, writer: Any, inputs: TrainInputs) -> None:
    if not info.is_main:
        return
    from tqdm.auto import tqdm

    line = (
        f"epoch {row['epoch']}/{config.epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.2f}%"
        f"  test loss {row['test_loss']:.4f} top-1 {row['test_top1']:.2f}%  {row['seconds']:.1f} s"
    )
    if inputs.mode.stream:
        line += f"  ({row['data_wait_seconds']:.1f} s waiting for data)"
    if row["skipped_images"]:
        line += f"  {row['skipped_images']} unreadable images skipped"
    tqdm.write(line, file=sys.stderr)
    if writer is not None:
        for name in ("train_loss", "train_acc", "test_loss", "test_top1", "test_top5"):
            writer.add_scalar(name.replace("_", "/", 1), row[name], row["epoch"])


def _checkpoint(state: TrainState, resolved: dict[str, Any], shares: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The checkpoint: everything needed to continue exactly where ``state`` is (``shares``: every rank's running
    sums and RNG state when taken mid-epoch)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "config": resolved,
        "epoch": state.epoch,  # epochs completed
        "epoch_step": state.epoch_step,  # steps done in the next epoch (0 at an epoch boundary)
        "step": state.global_step,
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "ema": state.ema.state_dict() if state.ema is not None else None,
        "rng": rng_state(),
        "partial": {"ranks": shares} if shares is not None else None,
        "rows": state.epoch_rows,
        "step_rows": state.step_rows,
        "train_seconds": state.train_seconds,
        "skipped_images": state.skipped_images,
    }


def _summary(
    config: TrainConfig, state: TrainState, inputs: TrainInputs, keyset: Any, info: Distributed, device: torch.device
) -> dict[str, Any]:
    """``summary.json``: what was trained, on what, how well, how fast."""
    last = state.epoch_rows[-1]
    rows = state.epoch_rows
    summary: dict[str, Any] = {
        "model": config.model,
        "model_kwargs": config.model_kwargs,
        "recipe": config.recipe,
        "mode": config.mode,
        "keys": keyset.name if keyset is not None else None,
        "assignment": config.assignment if MODES[config.mode].uses_keys else None,
        "learn_scale": config.learn_scale,
        "seed": config.seed,
        "epochs": config.epochs,
        "steps": state.global_step,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "n_train": inputs.n_train,
        "n_test": inputs.n_test,
        "classes": inputs.classes,
        "image_shape": list(inputs.image_shape),
        **{k: last[k] for k in ("train_loss", "train_acc", "test_loss", "test_top1", "test_top5")},
        "best_test_top1": max(r["test_top1"] for r in rows),
        "train_seconds": state.train_seconds,
        "images_per_second": state.global_step * config.batch_size / max(state.train_seconds, 1e-9),
        "data_mode": inputs.mode.mode,
        "data_workers": inputs.workers if inputs.mode.stream else 0,
        "skipped_images": state.skipped_images,
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "world_size": info.world_size,
        "amp": "bf16" if state.amp_dtype is not None else "none",
        "channels_last": state.channels_last,
        "parameters": parameter_counts(state.model),
        "key_counts": key_counts(state.model, len(keyset) if keyset is not None else None),
        "converted_layers": [layer.__dict__ for layer in state.converted.layers],
    }
    summary.update(_depthwise_entries(config, state.model))
    if state.ema is not None and config.ema_eval:
        summary.update({k: last[k] for k in ("ema_test_loss", "ema_test_top1", "ema_test_top5")})
        summary["best_ema_test_top1"] = max(r["ema_test_top1"] for r in rows)
    return summary


def _depthwise_entries(config: TrainConfig, model: nn.Module) -> dict[str, Any]:
    """Summary entries of the newer modes (none for trainable / frozen / key-init: their summaries are unchanged)."""
    out: dict[str, Any] = {}
    for name in MODES[config.mode].records:
        out[name] = getattr(config, name)
    learned = depthwise_summary(model)
    if learned:
        out["depthwise_layers"] = learned
    return out
