"""Training speed, side by side in one process: a plain eager PyTorch loop vs ``masterkey.train.train`` with the
depthwise filters trainable vs frozen to keys (and frozen with a learnable scale), on the same timm model.

The masterkey variants run the real training loop (``train()`` on a CIFAR-10 subset, its own data pipeline with
uint8 images on the device, on-device crop / flip, label smoothing, the warm-up + cosine schedule, metric
accumulation); their step times come from the loop's ``on_step`` callback. The plain loop feeds one pre-normalised
float batch to ``model -> cross_entropy -> backward -> AdamW.step`` with the *same* optimiser as masterkey (AdamW
with timm's weight-decay parameter groups, fused on CUDA: :func:`masterkey.train.state.make_optimizer`), the same
precision and the same memory layout, so the ratio compares the loops, not two optimisers.
Variants are interleaved over several rounds so that load from other processes hits all of them alike; the
first ``--warmup`` steps of every measurement are dropped. Each measurement times a window of ``--steps`` steps with
the device synchronised only at its two ends, as in real training (a synchronisation after every step would stall
the host between steps and charge the loop's per-step host work twice). Reported: images/s (median over rounds)
and the ratios the issue asks for. Because loop-level numbers on a shared machine are noisy, the cost
of the frozen-key module itself is also measured on the bare model with trainable and frozen steps alternated one
by one (median of the paired ratios).

    python bench/bench_train.py                                # CPU: convnext_atto, patch 2, batch 64, 1 thread
    python bench/bench_train.py --device cuda --patch-size 1 --batch-size 512 --steps 40

``-o FILE.json`` writes every round's seconds per step and every paired step (not only the medians) with the
machine, command, commit and load average (:mod:`raw`); for the CPU section of ``bench/results/train.md`` that
file is ``bench/results/train.raw.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from masterkey.train import TrainConfig, train
from masterkey.train.distributed import resolve_device
from masterkey.train.state import make_optimizer
from raw import RawRecord


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_eager(
    config: TrainConfig, warmup: int, steps: int, device: torch.device, amp: bool, channels_last: bool
) -> float:
    """Seconds per step of the textbook loop on one fixed batch, over ``steps`` steps after ``warmup``."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(config.model, **config.model_kwargs).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = make_optimizer(model, config, device)
    x = torch.randn(config.batch_size, 3, 32, 32, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (config.batch_size,), device=device)
    start = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            sync(device)
            start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(x)
        loss = F.cross_entropy(out.float(), y, label_smoothing=config.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    return (time.perf_counter() - start) / steps


def paired_model_steps(
    config: TrainConfig, pairs: int, device: torch.device, amp: bool, channels_last: bool
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """The frozen-key module's own cost: single training steps of the same timm model with trainable and with
    frozen depthwise filters, alternated step by step (so load changes hit both alike); (the median paired ratio
    and the median speeds, the seconds of every step)."""
    import timm

    from masterkey.nn import convert_to_keys

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    models = {}
    for mode in ("trainable", "frozen"):
        torch.manual_seed(0)
        model = timm.create_model(config.model, **config.model_kwargs)
        convert_to_keys(model, "paper8", mode)
        model = model.to(device).to(memory_format=fmt)
        models[mode] = (model, make_optimizer(model, config, device))
    x = torch.randn(config.batch_size, 3, 32, 32, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (config.batch_size,), device=device)

    def step(mode: str) -> float:
        model, opt = models[mode]
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(x)
        loss = F.cross_entropy(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    for _ in range(3):
        step("trainable"), step("frozen")
    times: dict[str, list[float]] = {"trainable": [], "frozen": []}
    ratios = []
    for _ in range(pairs):
        a, b = step("trainable"), step("frozen")
        times["trainable"].append(a)
        times["frozen"].append(b)
        ratios.append(a / b)
    summary = {
        "trainable images/s": config.batch_size / statistics.median(times["trainable"]),
        "frozen images/s": config.batch_size / statistics.median(times["frozen"]),
        "median paired speed ratio frozen / trainable": statistics.median(ratios),
    }
    return summary, times


def masterkey_loop(config: TrainConfig, warmup: int, steps: int, device: torch.device) -> float:
    """Seconds per step of ``train()`` itself over steps ``warmup + 1 .. warmup + steps``, clocked by its
    ``on_step`` callback (called after each step), which synchronises only at the window's two ends."""
    stamps: dict[int, float] = {}

    def on_step(epoch: int, step: int) -> None:
        if step in (warmup, warmup + steps):
            sync(device)
            stamps[step] = time.perf_counter()

    train(config, on_step=on_step)
    return (stamps[warmup + steps] - stamps[warmup]) / steps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"))
    p.add_argument("--model", default="convnext_atto")
    p.add_argument("--patch-size", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=12, help="measured steps per variant and round")
    p.add_argument("--warmup", type=int, default=3, help="steps dropped at the start of every measurement")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--pairs", type=int, default=60, help="alternating trainable / frozen steps of the bare model")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (1: no oversubscription on a busy box)")
    p.add_argument("-o", "--out", help="also write the results as JSON here")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    record = RawRecord(device, None if argv is None else [sys.argv[0], *argv])
    cuda = device.type == "cuda"
    if args.warmup < 1 or args.steps < 1:
        p.error("--warmup and --steps must be at least 1 (the clock starts after a warm-up step)")
    total = args.warmup + args.steps
    base = TrainConfig(
        model=args.model,
        model_kwargs={"num_classes": 10, "patch_size": args.patch_size},
        data=args.data,
        max_train_images=total * args.batch_size,
        max_test_images=10,
        epochs=1,
        batch_size=args.batch_size,
        device=str(device),
        threads=args.threads if not cuda else None,
        progress=False,
        log_every=10**6,
    )
    variants = {
        "plain eager PyTorch loop": None,
        "masterkey train, trainable": base.replace(mode="trainable"),
        "masterkey train, frozen paper8": base.replace(mode="frozen", keys="paper8"),
        "masterkey train, frozen paper8 + scale": base.replace(mode="frozen", keys="paper8", learn_scale=True),
    }
    per_round: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(args.rounds):
        for name, config in variants.items():
            if config is None:
                seconds = plain_eager(base, args.warmup, args.steps, device, amp=cuda, channels_last=cuda)
            else:
                seconds = masterkey_loop(config, args.warmup, args.steps, device)
            per_round[name].append(seconds)
            print(f"round {r + 1} {name}: {args.batch_size / per_round[name][-1]:.1f} images/s", file=sys.stderr)
    speed = {name: args.batch_size / statistics.median(v) for name, v in per_round.items()}
    paired, paired_seconds = paired_model_steps(base, args.pairs, device, amp=cuda, channels_last=cuda)
    eager, trainable = speed["plain eager PyTorch loop"], speed["masterkey train, trainable"]
    frozen = speed["masterkey train, frozen paper8"]
    result: dict[str, Any] = {
        "torch": torch.__version__,
        "device": str(device),
        "threads": args.threads if not cuda else None,
        "model": f"{args.model} (num_classes=10, patch_size={args.patch_size})",
        "batch_size": args.batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "amp": "bf16" if cuda else "none",
        "channels_last": cuda,
        "images_per_second": speed,
        "ratios": {
            "frozen / trainable (masterkey)": frozen / trainable,
            "masterkey trainable / plain eager": trainable / eager,
            "masterkey frozen / plain eager": frozen / eager,
        },
        "paired_model_steps": paired,
        "seconds_per_step_by_round": per_round,
        "paired_step_seconds": paired_seconds,
    }
    lines = [
        f"machine: {record.machine}; torch {torch.__version__}; device {device}"
        + (f", {args.threads} thread(s)" if not cuda else ", bf16 autocast, channels_last"),
        f"model: {result['model']}; batch {args.batch_size}; median of {args.rounds} interleaved rounds, each timing "
        f"{args.steps} steps (after {args.warmup} warm-up steps) between two synchronisations",
        "",
        "| variant | images/s |",
        "| --- | --- |",
        *(f"| {name} | {value:.1f} |" for name, value in speed.items()),
        "",
        "| ratio | value |",
        "| --- | --- |",
        *(f"| {name} | {value:.3f} |" for name, value in result["ratios"].items()),
        "",
        f"the module alone, {args.pairs} alternating single steps of the bare model (masterkey's AdamW, no data "
        "pipeline):",
        "",
        "| measure | value |",
        "| --- | --- |",
        *(f"| {name} | {value:.3f} |" for name, value in paired.items()),
    ]
    print("\n".join(lines))
    if args.out:
        print(f"wrote {record.write(args.out, result, 'train.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
