"""One epoch of training (:func:`train_epoch`); the evaluation after it is :func:`masterkey.data.evaluate.evaluate`.

Each step: this rank's share of the global batch (in memory or streamed, already normalised and augmented) →
mixup / cutmix → forward under autocast → loss → backward → optimiser, schedule and EMA step → metrics. Random
draws come from ``(seed, epoch, step)`` (crops, flips, mixing) or from the global torch RNG, reseeded from
``(seed, epoch, rank)`` at the start of every epoch (drop-path).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from masterkey.data.augment import derive_seed, mix_batch, soft_targets
from masterkey.data.batches import MAX_SKIPPED_FRACTION
from masterkey.errors import MasterkeyError
from masterkey.train.config import TrainConfig
from masterkey.train.distributed import Distributed, all_reduce_sum, gather_objects
from masterkey.train.optim import loss_fn, peak_lr
from masterkey.train.state import TrainState, set_rng_state

log = logging.getLogger("masterkey")
StepCallback = Callable[[int, int], None]
#: ``on_batch(epoch, step, index, x)``: after a batch is made, before mixing — the images this rank trains on.
BatchCallback = Callable[[int, int, Tensor, Tensor], None]


def _epoch_start(state: TrainState, config: TrainConfig, info: Distributed, epoch: int, device: torch.device) -> dict:
    """The running sums of an epoch: fresh (and the global RNG reseeded) at step 0, this rank's saved ones when the
    epoch resumes mid-way."""
    partial, state.partial = state.partial, None
    if state.epoch_step == 0 or partial is None:
        # The global RNG (drop-path, dropout) restarts from (seed, epoch, rank) every epoch: exact replay.
        torch.manual_seed(derive_seed(config.seed, epoch, info.rank, "torch"))
        partial = {"sums": torch.zeros(3, dtype=torch.float64), "window": torch.zeros(2, dtype=torch.float64)}
        partial.update(wait=0.0, seconds=0.0, skipped=0, rng=None)
    elif partial.get("rng") is not None:
        set_rng_state(partial["rng"])
    else:
        torch.manual_seed(derive_seed(config.seed, epoch, state.epoch_step, info.rank, "torch"))
    return {
        "sums": partial["sums"].to(device),  # loss, correct, count
        "window": partial["window"].to(device),  # loss, count since the last step row
        "wait": float(partial["wait"]),
        "seconds": float(partial["seconds"]),
        "skipped": int(partial["skipped"]),
    }


def train_epoch(
    state: TrainState,
    batches: Any,
    config: TrainConfig,
    info: Distributed,
    device: torch.device,
    epoch: int,
    n_classes: int,
    *,
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
    on_step: StepCallback | None = None,
    on_batch: BatchCallback | None = None,
    bar: Any = None,
    writer: Any = None,
) -> dict[str, Any]:
    """Train the steps ``state.epoch_step ...`` of ``epoch``; returns the epoch's train metrics (all ranks summed).
    ``checkpoint(running)`` is called every ``config.checkpoint_every`` steps inside the epoch."""
    run = _epoch_start(state, config, info, epoch, device)
    lr = peak_lr(state.optimizer)
    start = time.perf_counter() - run["seconds"]
    for batch in batches.epoch(epoch, state.epoch_step):
        step = state.epoch_step
        run["wait"] += batch.wait
        if batch.skipped:
            _note_skipped(batch.skipped, run, state, batches.steps * config.batch_size // info.world_size, epoch)
        x = batch.x.contiguous(memory_format=state.memory_format)
        y = batch.y
        if on_batch is not None:
            on_batch(epoch, step, batch.index, x)
        state.optimizer.zero_grad(set_to_none=True)
        loss, correct = _accumulate(state, x, y, config, info, device, epoch, step, n_classes)
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(state.model.parameters(), config.grad_clip)
        lr = peak_lr(state.optimizer)
        state.optimizer.step()
        state.scheduler.step()
        if state.ema is not None:
            state.ema.update(state.model, step=state.global_step)
        state.global_step += 1
        state.epoch_step += 1
        detached = loss.double()
        run["sums"][0] += detached * len(y)
        run["sums"][1] += correct
        run["sums"][2] += len(y)
        run["window"][0] += detached
        run["window"][1] += 1
        if state.global_step % config.log_every == 0 or state.epoch_step == batches.steps:
            _log_step(state, run, info, epoch, lr, bar, writer)
        if bar is not None:
            bar.update()
        every = config.checkpoint_every
        # The epoch's end writes its own checkpoint.
        if checkpoint is not None and every and state.global_step % every == 0 and state.epoch_step < batches.steps:
            run["seconds"] = time.perf_counter() - start
            checkpoint(run)
        if on_step is not None:
            on_step(epoch, state.global_step)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return _epoch_row(state, run, info, epoch, lr, seconds, batches.steps * config.batch_size)


def _accumulate(
    state: TrainState,
    x: Tensor,
    y: Tensor,
    config: TrainConfig,
    info: Distributed,
    device: torch.device,
    epoch: int,
    step: int,
    n_classes: int,
) -> tuple[Tensor, Tensor]:
    """Forward and backward this rank's share of one step in ``config.update_freq`` micro-batches (gradients add
    up to those of the whole share: each micro-batch's loss is weighted by its share of the images). Mixup /
    cutmix draw per micro-batch, from ``(seed, epoch, step * update_freq + micro-batch, rank)`` — one draw per step
    when ``update_freq`` is 1. Returns the share's mean loss (float64) and its count of correct top-1 predictions."""
    pieces = [
        (xs, ys)
        for xs, ys in zip(x.tensor_split(config.update_freq), y.tensor_split(config.update_freq), strict=True)
        if len(ys)
    ]
    loss_sum: Tensor | None = None
    correct: Tensor | None = None
    for i, (xs, ys) in enumerate(pieces):
        targets: Tensor = ys
        if config.mixup > 0 or config.cutmix > 0:
            targets = soft_targets(ys, n_classes, config.label_smoothing)
            index = step * config.update_freq + i
            xs, targets = mix_batch(xs, targets, config.mixup, config.cutmix, config.seed, epoch, index, info.rank)
        # Under DDP the gradients are all-reduced once per step, with the last micro-batch.
        last = i == len(pieces) - 1
        with contextlib.nullcontext() if last or not hasattr(state.net, "no_sync") else state.net.no_sync():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=state.amp_dtype is not None):
                logits = state.net(xs)
            loss = loss_fn(logits, targets, config.label_smoothing)
            (loss if len(pieces) == 1 else loss * (len(ys) / len(y))).backward()
        hits = (logits.detach().argmax(dim=1) == ys).sum()
        if len(pieces) == 1:
            return loss.detach().double(), hits
        part = loss.detach().double() * len(ys)
        loss_sum = part if loss_sum is None else loss_sum + part
        correct = hits if correct is None else correct + hits
    assert loss_sum is not None and correct is not None
    return loss_sum / len(y), correct


def _log_step(state: TrainState, run: dict, info: Distributed, epoch: int, lr: float, bar: Any, writer: Any) -> None:
    window = run["window"]
    all_reduce_sum(window, info)
    mean_loss = float(window[0] / window[1])
    window.zero_()
    state.step_rows.append({"step": state.global_step, "epoch": epoch + 1, "lr": lr, "train_loss": mean_loss})
    if bar is not None:
        bar.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{lr:.2e}", refresh=False)
    if writer is not None:
        writer.add_scalar("train/loss", mean_loss, state.global_step)
        writer.add_scalar("train/lr", lr, state.global_step)


def _note_skipped(errors: list[str], run: dict, state: TrainState, rank_images: int, epoch: int) -> None:
    """Count unreadable training images, warn about each, and stop when this rank's share of an epoch
    (``rank_images``) loses more than 1% of them."""
    run["skipped"] += len(errors)
    state.skipped_images += len(errors)
    for error in errors:
        log.warning(
            f"warning: skipped an unreadable training image in epoch {epoch + 1} ({state.skipped_images} so far, "
            f"counted in the metrics as skipped_images): {error}"
        )
    if run["skipped"] > max(10, MAX_SKIPPED_FRACTION * rank_images):
        raise MasterkeyError(
            f"{run['skipped']} training images of epoch {epoch + 1} could not be decoded (more than "
            f"{MAX_SKIPPED_FRACTION:.0%}): the data set looks damaged; last: {errors[-1]}"
        )


def _epoch_row(
    state: TrainState, run: dict, info: Distributed, epoch: int, lr: float, seconds: float, n_images: int
) -> dict[str, Any]:
    sums = all_reduce_sum(run["sums"], info)
    skipped = all_reduce_sum(torch.tensor([run["skipped"]], dtype=torch.float64, device=sums.device), info)
    per_rank = gather_objects((n_images / info.world_size / max(seconds, 1e-9), run["wait"]), info)
    state.train_seconds += seconds
    return {
        "epoch": epoch + 1,
        "step": state.global_step,
        "lr": lr,
        "train_loss": float(sums[0] / sums[2]),
        "train_acc": 100 * float(sums[1] / sums[2]),
        "train_seconds": seconds,
        "images_per_second": n_images / max(seconds, 1e-9),
        "data_wait_seconds": max(w for _, w in per_rank),
        "skipped_images": int(skipped[0]),
        "rank_images_per_second": [round(r, 1) for r, _ in per_rank],
        "rank_data_wait_seconds": [round(w, 3) for _, w in per_rank],
    }


def running_share(run: dict, info: Distributed) -> dict[str, Any]:
    """This rank's running sums and RNG state mid-epoch, for a checkpoint (see :mod:`masterkey.train.state`)."""
    from masterkey.train.state import rng_state

    return {
        "sums": run["sums"].cpu(),
        "window": run["window"].cpu(),
        "wait": run["wait"],
        "seconds": run["seconds"],
        "skipped": run["skipped"],
        "rng": rng_state(),
    }
