"""Data-path speed and memory, side by side in one run:

1. ``loader``: images/s of masterkey's streamed training loader (:class:`masterkey.train.loader.StreamBatches`:
   per-image seeding from (seed, epoch, image), the global-batch sampler, drop-and-count of unreadable images)
   against timm's own loader (``timm.data.create_dataset`` + ``timm.data.create_loader``, no prefetcher) reading
   the same folder with the same transform (RandomResizedCrop, flip, RandAugment rand-m9-mstd0.5-inc1, bicubic,
   random erasing 0.25 per pixel), the same batch size and the same number of worker processes. The two are
   interleaved over ``--rounds`` rounds (ABAB...) so that load from other processes hits both alike; the first
   ``--warmup`` batches of every pass are dropped. Target: masterkey >= 0.95x timm.
2. ``cifar``: the in-memory path against the streamed one on CIFAR-10 with the cifar recipe: (a) the data alone
   (batches/s of MemoryBatches vs StreamBatches, normalised and cropped / flipped), (b) one epoch of ``train()`` on a
   subset with a tiny ConvNeXt (same weights either way: the paths are bitwise equal for this recipe).
3. ``rss``: peak resident memory (main process or any worker) of one epoch on 1,000 vs 8,500 Imagenette images at
   128 px, in memory and streamed (each in a fresh subprocess).
4. ``percore``: images/s of one loader worker with the ``imagenet`` recipe's transform at 224 px on the ImageNet
   samples (JPEGs of at most 256 px; real ImageNet JPEGs are larger): the data side of the time-per-epoch estimate.

    python bench/bench_data.py -o bench/results/data.raw.json   # all four parts, 2 workers (this machine: 2 cores)
    python bench/bench_data.py --only loader --workers 8 --batch-size 256 --rounds 5

``-o`` writes every round's numbers (not only the medians) with the machine, command, commit and load average
(:mod:`raw`); the results page they feed is ``bench/results/data.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from raw import RawRecord

SHARED = Path(os.environ.get("MASTERKEY_SHARED", Path(__file__).resolve().parents[2] / "shared"))
TINY = {"dims": [8, 16, 24, 32], "depths": [1, 1, 1, 1], "patch_size": 2}
PARTS = ("loader", "cifar", "rss", "percore")


def timed_images(batches: Any, warmup: int, count: int) -> float:
    """Images per second over ``count`` batches after ``warmup`` batches of an iterator of image batches."""
    it = iter(batches)
    for _ in range(warmup):
        next(it)
    start, images = time.perf_counter(), 0
    for _ in range(count):
        images += len(next(it))
    return images / (time.perf_counter() - start)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by the processes ``pids`` (Linux /proc)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


def timed_loader(loader: Any, batches: Any, warmup: int, count: int) -> tuple[float, float]:
    """Images per second (wall) and CPU milliseconds per image (this process and the loader's workers, which
    does not depend on what else runs on the machine) over ``count`` batches after ``warmup``."""
    it = iter(batches)
    for _ in range(warmup):
        next(it)
    pids = [os.getpid(), *(w.pid for w in loader._iterator._workers)]
    cpu0, start, images = cpu_seconds(pids), time.perf_counter(), 0
    for _ in range(count):
        images += len(next(it))
    wall = time.perf_counter() - start
    return images / wall, 1000 * (cpu_seconds(pids) - cpu0) / images


def loader_bench(args: argparse.Namespace) -> dict[str, Any]:
    from timm.data import create_dataset, create_loader

    from masterkey.data.augment import pillow_safe_posterize, worker_transform
    from masterkey.data.batches import StreamBatches, TrainSamples
    from masterkey.data.samples import list_samples
    from masterkey.train import TrainConfig

    root = SHARED / "data" / "imagenette-128" / "train"
    size, mean, std = args.image_size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    config = TrainConfig(
        data=str(root.parent), image_size=size, train_crop="rrc", auto_augment="rand-m9-mstd0.5-inc1",
        re_prob=0.25, interpolation="bicubic", batch_size=args.batch_size, seed=0,
    )  # fmt: skip
    samples = list_samples(root)
    dataset = TrainSamples(samples, None, size, "bicubic", worker_transform(config, size, mean, std), False, 0)
    ours = StreamBatches(dataset, config, 0, 1, torch.device("cpu"), mean, std, args.workers)
    timm_dataset = create_dataset("", root=str(root), split="train", is_training=True)
    theirs = create_loader(
        timm_dataset, input_size=(3, size, size), batch_size=args.batch_size, is_training=True, re_prob=0.25,
        re_mode="pixel", auto_augment="rand-m9-mstd0.5-inc1", interpolation="bicubic", mean=mean, std=std,
        num_workers=args.workers, use_prefetcher=False, persistent_workers=True, device=torch.device("cpu"),
    )  # fmt: skip
    pillow_safe_posterize(timm_dataset.transform)  # the same fix as ours (timm RandAugment vs Pillow 13)
    rates: dict[str, list[float]] = {"masterkey": [], "timm": []}
    cpu: dict[str, list[float]] = {"masterkey": [], "timm": []}
    for r in range(args.rounds):
        for name in ("masterkey", "timm") if r % 2 == 0 else ("timm", "masterkey"):
            if name == "masterkey":
                rate, ms = timed_loader(ours.loader, (b.x for b in ours.epoch(r)), args.warmup, args.batches)
            else:
                rate, ms = timed_loader(theirs, (x for x, _ in theirs), args.warmup, args.batches)
            rates[name].append(rate)
            cpu[name].append(ms)
            print(f"  loader round {r + 1}: {name:9s} {rate:8.1f} images/s  {ms:6.2f} CPU ms/image", file=sys.stderr)
    ours_m, theirs_m = statistics.median(rates["masterkey"]), statistics.median(rates["timm"])
    ours_c, theirs_c = statistics.median(cpu["masterkey"]), statistics.median(cpu["timm"])
    return {
        "cpu_ms_per_image": cpu,
        "cpu_median": {"masterkey": ours_c, "timm": theirs_c},
        "cpu_speed_ratio_masterkey_over_timm": theirs_c / ours_c,
        "paired_ratio_median": statistics.median(a / b for a, b in zip(rates["masterkey"], rates["timm"], strict=True)),
        "folder": str(root),
        "images": len(samples),
        "transform": f"RRC {size} bicubic, hflip, rand-m9-mstd0.5-inc1, random erasing 0.25 (pixel)",
        "batch_size": args.batch_size,
        "workers": args.workers,
        "batches_per_pass": args.batches,
        "images_per_second": {"masterkey": rates["masterkey"], "timm": rates["timm"]},
        "median": {"masterkey": ours_m, "timm": theirs_m},
        "ratio_masterkey_over_timm": ours_m / theirs_m,
    }


def percore_bench(args: argparse.Namespace) -> dict[str, Any]:
    from masterkey.data.augment import worker_transform
    from masterkey.data.batches import StreamBatches, TrainSamples
    from masterkey.data.samples import list_samples
    from masterkey.train import TrainConfig

    root = SHARED / "data" / "imagenet-samples" / "val"
    config = TrainConfig.from_dict({"recipe": "imagenet", "data": str(root), "batch_size": 32})
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    transform = worker_transform(config, 224, mean, std)
    dataset = TrainSamples(list_samples(root), None, 224, "bicubic", transform, False, 0)
    loader = StreamBatches(dataset, config, 0, 1, torch.device("cpu"), mean, std, 1)
    measured = [timed_loader(loader.loader, (b.x for b in loader.epoch(r)), 2, 20) for r in range(args.rounds)]
    rates, cpu = [m[0] for m in measured], [m[1] for m in measured]
    print(
        f"  percore: {[round(r) for r in rates]} images/s, {[round(c, 1) for c in cpu]} CPU ms/image", file=sys.stderr
    )
    return {"folder": str(root), "transform": "the imagenet recipe's at 224 px", "workers": 1, "batch_size": 32,
            "images_per_second": rates, "median": statistics.median(rates), "cpu_ms_per_image": cpu,
            "cpu_median": statistics.median(cpu), "images_per_cpu_second": 1000 / statistics.median(cpu)}  # fmt: skip


def cifar_bench(args: argparse.Namespace) -> dict[str, Any]:
    from masterkey.train import TrainConfig, train
    from masterkey.train.distributed import Distributed
    from masterkey.train.loader import open_train_inputs

    torch.set_num_threads(1)
    config = TrainConfig(
        model="convnext_atto", model_kwargs={"num_classes": 10, **TINY}, data=str(SHARED / "data" / "cifar10"),
        max_train_images=args.cifar_images, max_test_images=1000, batch_size=args.batch_size, epochs=1,
        workers=args.workers, progress=False, eval_batch_size=500,
    )  # fmt: skip
    data_rates: dict[str, list[float]] = {"memory": [], "stream": []}
    inputs = {mode: open_train_inputs(config.replace(data_mode=mode), Distributed(), torch.device("cpu"))
              for mode in ("memory", "stream")}  # fmt: skip
    for r in range(args.rounds):
        for mode in ("memory", "stream") if r % 2 == 0 else ("stream", "memory"):
            batches = inputs[mode].batches
            n = min(args.batches, batches.steps - args.warmup)
            rate = timed_images((b.x for b in batches.epoch(r)), args.warmup, n)
            data_rates[mode].append(rate)
            print(f"  cifar data round {r + 1}: {mode:6s} {rate:9.1f} images/s", file=sys.stderr)
    train_rates: dict[str, list[float]] = {"memory": [], "stream": []}
    tops: dict[str, float] = {}
    for r in range(max(1, args.rounds // 2)):
        for mode in ("memory", "stream") if r % 2 == 0 else ("stream", "memory"):
            result = train(config.replace(data_mode=mode))
            train_rates[mode].append(result.summary["images_per_second"])
            tops[mode] = result.summary["test_top1"]
            print(f"  cifar train round {r + 1}: {mode:6s} {train_rates[mode][-1]:8.1f} images/s", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in data_rates.items()}
    tmed = {k: statistics.median(v) for k, v in train_rates.items()}
    return {
        "train_images": args.cifar_images,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "data_images_per_second": data_rates,
        "data_median": med,
        "data_ratio_stream_over_memory": med["stream"] / med["memory"],
        "train_images_per_second": train_rates,
        "train_median": tmed,
        "train_ratio_stream_over_memory": tmed["stream"] / tmed["memory"],
        "test_top1": tops,
    }


_PEAK = """
import json, resource, sys, torch
torch.set_num_threads(1)
from masterkey.train import TrainConfig, train
result = train(TrainConfig.from_dict(json.loads(sys.argv[1])))
peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
summary = result.summary
print(json.dumps({"peak_mib": peak / 1024, "n_train": summary["n_train"], "seconds": summary["train_seconds"]}))
"""


def rss_bench(args: argparse.Namespace) -> dict[str, Any]:
    base = {
        "model": "convnext_atto", "model_kwargs": {**TINY, "patch_size": 8},
        "data": str(SHARED / "data" / "imagenette-128"), "batch_size": 250, "epochs": 1, "max_test_images": 100,
        "workers": args.workers, "progress": False, "eval_batch_size": 100, "normalize": "imagenet",
    }  # fmt: skip
    out: dict[str, Any] = {}
    for mode in ("memory", "stream"):
        for n in (1000, 8500):
            config = {**base, "data_mode": mode, "max_train_images": n}
            env = {**os.environ, "MASTERKEY_CACHE": str(Path(args.cache))}
            done = subprocess.run([sys.executable, "-c", _PEAK, json.dumps(config)], capture_output=True, text=True,
                                  env=env, check=True)  # fmt: skip
            out[f"{mode}-{n}"] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"  rss {mode} {n}: {out[f'{mode}-{n}']['peak_mib']:.0f} MiB", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=PARTS, action="append", help="run only these parts (default: all)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (default 2)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=112, help="RandomResizedCrop size for the loader part")
    p.add_argument("--batches", type=int, default=40, help="timed batches per pass")
    p.add_argument("--warmup", type=int, default=5, help="batches dropped at the start of every pass")
    p.add_argument("--rounds", type=int, default=4, help="interleaved rounds (ABAB...)")
    p.add_argument("--cifar-images", type=int, default=5000, help="CIFAR-10 training images for the cifar part")
    p.add_argument("--cache", default="/tmp/masterkey-bench-cache", help="decoded-image cache for the rss part")
    p.add_argument("-o", "--out", help="write every measurement as JSON here (e.g. bench/results/data.raw.json)")
    args = p.parse_args(argv)
    parts = args.only or list(PARTS)
    record = RawRecord("cpu", None if argv is None else [sys.argv[0], *argv])
    print(f"machine: {record.machine}", file=sys.stderr)
    result: dict[str, Any] = {"parts": parts}
    for part in parts:
        fn = {"loader": loader_bench, "cifar": cifar_bench, "rss": rss_bench, "percore": percore_bench}[part]
        if part in parts:
            print(f"{part} ...", file=sys.stderr)
            result[part] = fn(args)
    print(json.dumps(result, indent=2))
    if args.out:
        print(f"wrote {record.write(args.out, result, 'data.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
