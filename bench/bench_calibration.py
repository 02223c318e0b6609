"""Benchmark: BatchNorm recalibration after a swap, on training images vs cross-fitted on the evaluation set (issue 27).

MobileNetV2 (torchvision, ImageNet weights) on all 1,000 imagenet-samples, paper8 centre-cropped to 3x3 swapped into
every depthwise layer, nothing fine-tuned. Two ways to re-estimate the BatchNorm statistics, each with N seeds:

- **training images** (the documented default): ``--calib`` images drawn (class-stratified, seeded) from
  ``../shared/data/imagenette-128/train`` — the only ImageNet-class training split in ../shared (10 classes, 128 px
  upscaled to 224); it never sees the evaluation images;
- **cross-fitted** (transductive: it uses the evaluation distribution): the 1,000 evaluation images dealt into 2 folds,
  each fold classified after recalibrating on ``--calib`` images of the other (seeded).

Each seed recalibrates the unswapped model (a control: what the calibration images alone do) and the swapped one.
Mean ± 95% Student-t CI over seeds (:func:`masterkey.stats.mean_ci95`). Every row, its seed and its CPU time go to
``bench/results/calibration.raw.json`` (:mod:`raw`), written after every seed; a rerun with ``--resume`` continues.
The size of the decoded-image cache entry of the evaluation set is measured too (the README quotes it).

Usage: nice -n 10 python bench/bench_calibration.py [--seeds 5] [--calib 250] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from masterkey.data.cache import cache_entries
from masterkey.data.preprocessing import preprocessing_for
from masterkey.data.selection import CROSSFIT_NOTE, calibration_images, load_eval_images
from masterkey.files import write_text
from masterkey.networks.surgery import swap_depthwise
from masterkey.stats import mean_ci95
from masterkey.swap import Calibration, SwapSession, load_model
from raw import RawRecord, raw_note, raw_path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MASTERKEY_SHARED", REPO.parent / "shared"))
EVAL = SHARED / "data" / "imagenet-samples" / "val"
TRAIN = SHARED / "data" / "imagenette-128" / "train"
WEIGHTS = SHARED / "models" / "mobilenet_v2_imagenet.pth"
PAGE = REPO / "bench" / "results" / "calibration.md"


def measure(args: argparse.Namespace, record: RawRecord, done: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    model, arch, _ = load_model("torchvision:mobilenet_v2", WEIGHTS)
    prep = preprocessing_for(model)
    cpu = time.process_time()
    images = load_eval_images(EVAL, prep, max_images=args.quick)
    cache = [e for e in cache_entries()[0] if e["root"] == str(EVAL)]
    session = SwapSession(model, images, prep, batch_size=100, calib_batch_size=50)
    rows: list[dict[str, Any]] = done.get("rows", [])
    if not rows:
        base = session.baseline()
        base_row = {"keys": "none", "calibration": "none", "seed": None, "top1": base["top1"], "top5": base["top5"]}
        rows.append(base_row | {"n_images": base["n"], "cpu_s": time.process_time() - cpu})
        start = time.process_time()
        swapped, _ = session.run("paper8", resize=True)
        rows.append({"keys": "paper8", "calibration": "none", "seed": None, **_acc(swapped[0])})
        rows[-1]["cpu_s"] = time.process_time() - start
    n_calib = min(args.calib, len(images) // 2)
    session.restore()
    swap_depthwise(model, "paper8", resize=True)  # deterministic: swapped once, its state reused for every seed
    swapped_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    session.restore()
    for seed in range(args.seeds):
        if any(r["seed"] == seed for r in rows):
            continue
        training = Calibration(
            images=calibration_images(TRAIN, prep, n_calib, seed=seed, exclude=EVAL),
            name=f"training images (seed {seed})",
        )
        crossfit = Calibration(crossfit=2, n_images=n_calib, seed=seed, name=f"crossfit 2 folds (seed {seed})")
        for how, calibration in (("training", training), ("crossfit", crossfit)):
            for keys, state in (("none", session.original), ("paper8", swapped_state)):
                start = time.process_time()
                model.load_state_dict(state)
                acc = session.evaluate_recalibrated(calibration, f"{keys} seed {seed}")
                row = {"keys": keys, "calibration": how, "seed": seed, "top1": acc["top1"], "top5": acc["top5"]}
                rows.append(row | {"label": calibration.label(str(EVAL)), "cpu_s": time.process_time() - start})
            session.restore()
            print(f"seed {seed} {how}: unswapped {rows[-2]['top1']:.1f}%, paper8 {rows[-1]['top1']:.1f}%", flush=True)
        measurements = _measurements(args, arch, prep.to_dict(), len(images), n_calib, rows, cache)
        record.write(raw_path(args.out), measurements, page=args.out)
    return _measurements(args, arch, prep.to_dict(), len(images), n_calib, rows, cache)


def _acc(row: dict[str, Any]) -> dict[str, Any]:
    """The numbers of a session row, its calibration label kept as ``label``."""
    out = {k: row[k] for k in ("top1", "top5", "n_images", "calib_images") if k in row}
    return out | {"label": row.get("calibration", "")}


def _measurements(
    args: argparse.Namespace, arch: str, prep: dict, n_images: int, n_calib: int, rows: list, cache: list
) -> dict[str, Any]:
    return {
        "model": arch,
        "weights": "../shared/models/mobilenet_v2_imagenet.pth",
        "eval_data": "../shared/data/imagenet-samples/val",
        "calibration_data": "../shared/data/imagenette-128/train",
        "preprocessing": prep,
        "n_eval_images": n_images,
        "n_calib_images": n_calib,
        "seeds": args.seeds,
        "accuracy_unit": "percent",
        "rows": rows,
        "eval_cache_entries": [{k: e[k] for k in ("path", "bytes", "shape", "data")} for e in cache],
    }


def _cell(values: list[float]) -> str:
    mean, half = mean_ci95(values)
    return f"{mean:.1f}" if len(values) < 2 else f"{mean:.1f} ± {half:.1f}"


def findings(pick: Any) -> str:
    """The paragraph under the table, its numbers read off the rows."""

    def mean(keys: str, how: str) -> float:
        values = pick(keys, how)
        return sum(values) / len(values) if values else float("nan")

    base, base_train, base_cross = mean("none", "none"), mean("none", "training"), mean("none", "crossfit")
    swap, swap_train, swap_cross = mean("paper8", "none"), mean("paper8", "training"), mean("paper8", "crossfit")
    return (
        f"Headline (non-transductive): paper8 {swap:.1f}% → {swap_train:.1f}% after recalibrating on training images, "
        "which never see the evaluation set. They are Imagenette (10 ImageNet classes, 128 px upscaled to 224), so "
        f"part of what they cost is a domain shift: the unswapped model calibrated on them goes from {base:.1f}% to "
        f"{base_train:.1f}%. Cross-fitting classifies no image with statistics it contributed to, but the statistics "
        f"come from the distribution being evaluated: the unswapped model goes from {base:.1f}% to {base_cross:.1f}%, "
        f"and paper8 to {swap_cross:.1f}%. Quote cross-fitted numbers only as such."
    )


def page(m: dict[str, Any], command: str) -> str:
    rows = m["rows"]

    def pick(keys: str, how: str, col: str = "top1") -> list[float]:
        return [r[col] for r in rows if r["keys"] == keys and r["calibration"] == how]

    seeds = len({r["seed"] for r in rows if r["seed"] is not None})
    lines = [
        "# BatchNorm recalibration: training images vs the evaluation distribution",
        "",
        f"MobileNetV2 (torchvision, ImageNet weights) on the {m['n_eval_images']:,} imagenet-samples (resize 256, "
        "crop 224), paper8 centre-cropped to 3x3 swapped into every depthwise layer, nothing fine-tuned. "
        f"Recalibration re-estimates every BatchNorm running mean / variance on {m['n_calib_images']} images. "
        f"Top-1 / top-5 in percent, mean ± 95% CI (Student t) over {seeds} seed(s) (the draw of calibration images; "
        "for cross-fitting also the fold assignment).",
        "",
        "| model | recalibration | top-1 % | top-5 % |",
        "| --- | --- | ---: | ---: |",
    ]
    labels = {
        "none": "none",
        "training": f"{m['n_calib_images']} training images (imagenette-128/train)",
        "crossfit": f"crossfit 2 folds x {m['n_calib_images']} (**{CROSSFIT_NOTE}**)",
    }
    for keys, name in (("none", "unswapped"), ("paper8", "paper8 (3x3 crop)")):
        for how in ("none", "training", "crossfit"):
            top1, top5 = pick(keys, how), pick(keys, how, "top5")
            if top1:
                lines.append(f"| {name} | {labels[how]} | {_cell(top1)} | {_cell(top5)} |")
    if seeds < m["seeds"]:
        lines += [
            "",
            f"**Partial run: {seeds} of {m['seeds']} seeds measured** (intervals over so few seeds are wide); "
            "`python bench/bench_calibration.py --seeds 3 --resume` continues from the raw file.",
        ]
    cache = m["eval_cache_entries"]
    size = f"{cache[0]['bytes'] / 1e6:.1f} MB ({cache[0]['shape']} uint8)" if cache else "not measured"
    lines += [
        "",
        findings(pick),
        "",
        f"Decoded-image cache entry of the 1,000 evaluation images at 224 px: {size}.",
        "",
        "Command:",
        "",
        f"    {command}",
        "",
        "CPU sandbox (2 shared cores); CPU time per row in the raw file.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--calib", type=int, default=250, help="calibration images per recalibration")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", type=int, default=None, metavar="N", help="evaluate on N images only (a dry run)")
    p.add_argument("--out", type=Path, default=PAGE)
    p.add_argument("--resume", action="store_true", help="continue from the raw file of an interrupted run")
    p.add_argument("--page-only", action="store_true", help="write the page from the raw file (seeds done so far)")
    args = p.parse_args(argv)
    if args.page_only:
        measurements = json.loads(raw_path(args.out).read_text())
        write_text(args.out, f"{page(measurements, measurements['command'])}\n\n{raw_note(args.out)}\n")
        return 0
    record = RawRecord("cpu")
    done: dict[str, Any] = {}
    if args.resume and raw_path(args.out).is_file():
        done = json.loads(raw_path(args.out).read_text())
    measurements = measure(args, record, done)
    record.write(raw_path(args.out), measurements, page=args.out)
    write_text(args.out, f"{page(measurements, record.command)}\n\n{raw_note(args.out)}\n")
    print(f"wrote {args.out} and {raw_path(args.out)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
