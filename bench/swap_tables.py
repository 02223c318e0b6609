"""Benchmark: swap key sets into pretrained networks, no fine-tuning (the paper's Table 1; issue 4).

Reproduces the tables of ``bench/results/swap.md``:
  - MobileNetV2 (torchvision, ImageNet weights) on the 1,000 imagenet-samples: unswapped, paper8 centre-cropped to
    3x3, impulse, random:8 (3 seeds, mean ± 95% CI), k-means keys of 50 / 25 / 10 / 8; paper8, random:8 and
    k-means 8 also after BatchNorm recalibration (cross-fitted on the evaluation images: 2 folds, each recalibrated
    on 250 images of the other; and, for comparison, on 250 Imagenette-128 training images);
  - EfficientNet-Lite0 (efficientnet_pytorch weights remapped onto timm): both timm implementations unswapped, and
    paper8 with and without recalibration;
  - the CIFAR-10 ConvNeXts on cifar10/test with 7x7 keys: convnext_atto_s2_e55 on all 10,000 test images (unswapped,
    paper8, k-means 8), all five models on a 1,000-image subset (the first 100 of each class: unswapped, paper8,
    impulse, random:8 over 3 seeds, k-means 8; k-means 50 / 25 / 10 for convnext_atto_s2_e55), and a per-stage
    sensitivity table.
k-means keys are spherical sign-invariant k-means (``masterkey.discover.baselines.spherical_kmeans``) of the
embedded default bank's filters of that kernel size, every source weighted equally (3x3: MobileNetV2 and
EfficientNet-Lite0; 7x7: the five CIFAR ConvNeXts) — so they include the evaluated model's own filters, as the
paper's key pool did (``masterkey discover``'s ``baseline_keys/kmeans.safetensors`` are the same keys).
``--discover DIR`` adds rows for a ``masterkey discover`` run's discovered keys.

Results are checkpointed per key set under ``--work``; a rerun resumes. CPU time is measured per row. Every row
of the checkpoint (per seed, with its CPU time and per-stage fits) goes beside the page as ``NAME.raw.json``
(:mod:`raw`), noting which rows an earlier, resumed run measured.
Usage: masterkey discover -o masterkey-runs/discover-default     # the discovered keys (optional)
       nice -n 10 python bench/swap_tables.py [--tables mnv2,convnext,lite0] [--discover DIR] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

# On a shared, oversubscribed CPU, spinning OpenMP threads burn CPU time waiting for each other; set before torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pandas as pd
import torch

from masterkey.bank import open_bank
from masterkey.data.preprocessing import preprocessing_for
from masterkey.data.selection import calibration_images, load_eval_images
from masterkey.files import write_json, write_text
from masterkey.keys import KeySet
from masterkey.swap import Calibration, SwapResults, SwapSession, load_model, markdown_summary
from raw import RawRecord, raw_note, raw_path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MASTERKEY_SHARED", REPO.parent / "shared"))
MODELS = SHARED / "models"
DATA = SHARED / "data"
CIFAR_MODELS = [
    "convnext_atto_s0_e20",
    "convnext_atto_s1_e20",
    "convnext_atto_s2_e55",
    "convnextv2_atto_s0_e20",
    "convnext_femto_s0_e20",
]
KMEANS_SIZES = (50, 25, 10, 8)


# ---------------------------------------------------------------------- k-means keys


def kmeans_keys(work: Path, kernel_size: int, n_keys: int) -> Path:
    """Spherical sign-invariant k-means keys of the default bank's k x k filters (cached under ``work``)."""
    from masterkey.discover.baselines import spherical_kmeans
    from masterkey.discover.objectives import source_weights
    from masterkey.discover.pipeline import prepare_filters

    path = work / f"kmeans{n_keys}_k{kernel_size}.safetensors"
    if not path.is_file():
        bank = open_bank(None)
        filters, sources, _ = prepare_filters(bank, kernel_size)
        weights = source_weights(sources, len(filters))
        keys, objective = spherical_kmeans(filters, n_keys, weights, seed=0, n_init=4)
        provenance = {
            "method": "spherical sign-invariant k-means (n_init 4, seed 0), sources weighted equally",
            "bank": "embedded default bank",
            "sources": sorted(set(sources.tolist())),
            "objective_mean_cos2": objective,
        }
        KeySet(f"kmeans{n_keys}", keys, provenance).save(path)
    return path


# ---------------------------------------------------------------------- checkpointed runs


class Checkpoint:
    """Rows per (table, key set), saved after every key set so that a rerun resumes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.state: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
        if self.state and self.state.get("accuracy_unit") != "percent":
            print(f"{path}: written before accuracies were percent; starting over", flush=True)
            self.state = {}
        self.state["accuracy_unit"] = "percent"
        self.resumed = sorted(k for k in self.state if k != "accuracy_unit")  # measured by an earlier run

    def get(self, key: str) -> Any:
        return self.state.get(key)

    def put(self, key: str, value: Any) -> None:
        self.state[key] = value
        write_json(self.path, self.state)


def run_table(
    ck: Checkpoint,
    table: str,
    session: SwapSession,
    conditions: list[tuple[str, str, list[Calibration]]],
    resize: bool,
) -> SwapResults:
    """Baseline and key sets of one table; ``conditions`` are (label, key spec, calibrations)."""
    rows: list[dict[str, Any]] = []
    stages: list[pd.DataFrame] = []
    for label, spec, calibrations in conditions:
        key = f"{table}|{label}|{'+'.join(c.name for c in calibrations)}"
        done = ck.get(key)
        if done is None:
            session.calibrations = calibrations
            cpu = time.process_time()
            if spec == "none":
                new, per_stage = session.baseline_rows(recalibrate=bool(calibrations)), []
            else:
                new, report = session.run(spec, resize=resize, recalibrate=bool(calibrations))
                frame = report.per_stage()
                frame.insert(0, "keys", label)
                per_stage = frame.to_dict(orient="records")
            for row in new:
                row["keys"] = label if row["keys"] != "none" else "none"
                if row["group"] != "none" and not row["group"].startswith("random:"):
                    row["group"] = label
            done = {"rows": new, "per_stage": per_stage, "cpu_s": round(time.process_time() - cpu, 1)}
            ck.put(key, done)
            print(f"[{table}] {label}: " + ", ".join(f"{r['top1']:.1f}%" for r in done["rows"]), flush=True)
        for row in done["rows"]:
            row["cpu_s"] = done["cpu_s"] / len(done["rows"])
        rows.extend(done["rows"])
        if done["per_stage"]:
            stages.append(pd.DataFrame(done["per_stage"]))
    info = session.describe()
    info["cpu_s"] = round(
        sum(ck.get(f"{table}|{lab}|{'+'.join(c.name for c in cal)}")["cpu_s"] for lab, _, cal in conditions), 1
    )
    return SwapResults(rows, pd.concat(stages, ignore_index=True) if stages else pd.DataFrame(), None, info)


def _sensitivity(ck: Checkpoint, table: str, session: SwapSession, keys: str, by: str) -> tuple[pd.DataFrame, float]:
    key = f"{table}|sensitivity|{keys}|{by}"
    done = ck.get(key)
    if done is None:
        cpu = time.process_time()
        frame = session.sensitivity(keys, by=by)
        done = {"rows": frame.to_dict(orient="records"), "cpu_s": round(time.process_time() - cpu, 1)}
        ck.put(key, done)
    return pd.DataFrame(done["rows"]), done["cpu_s"]


# ---------------------------------------------------------------------- the tables


def imagenet_table(args: argparse.Namespace, ck: Checkpoint, name: str) -> tuple[str, SwapResults]:
    torch.manual_seed(0)
    if name == "mnv2":
        model, arch, _ = load_model("torchvision:mobilenet_v2", MODELS / "mobilenet_v2_imagenet.pth")
    else:
        model, arch, _ = load_model("tf_efficientnet_lite0", MODELS / "efficientnet_lite0_imagenet.pth")
    prep = preprocessing_for(model)
    eval_dir = DATA / "imagenet-samples" / "val"
    images = load_eval_images(eval_dir, prep, max_images=args.quick_images)
    n_calib = min(250, len(images) // 2)
    crossfit = Calibration(
        crossfit=2,
        n_images=n_calib,
        seed=0,
        name=f"crossfit 2x{n_calib} (imagenet-samples; uses the evaluation distribution)",
    )
    session = SwapSession(model, images, prep, batch_size=100, device=args.device, progress=False)
    conditions: list[tuple[str, str, list[Calibration]]]
    if name == "mnv2":
        nette = Calibration(
            images=calibration_images(DATA / "imagenette-128" / "train", prep, n_calib, exclude=eval_dir),
            name=f"{n_calib} imagenette-128/train",
        )
        conditions = [
            ("none", "none", [crossfit, nette]),
            ("paper8 (3x3 crop)", "paper8", [crossfit, nette]),
            ("impulse", "impulse", []),
            *((f"random:8:{s}", f"random:8:{s}", [crossfit]) for s in range(args.seeds)),
            ("kmeans8", str(kmeans_keys(args.work, 3, 8)), [crossfit]),
            *((f"kmeans{k}", str(kmeans_keys(args.work, 3, k)), []) for k in KMEANS_SIZES if k != 8),
        ]
        if args.discover:
            conditions.append(("discovered", args.discover, [crossfit]))
    else:
        conditions = [("none", "none", []), ("paper8 (3x3, 5x5 crops)", "paper8", [crossfit])]
    results = run_table(ck, name, session, conditions, resize=True)
    results.info.update({"model": arch, "weights": str(_rel(MODELS / _weights_name(name)))})
    if name == "lite0":
        # The other timm implementation of the same weights (symmetric padding, eps 1e-5, ImageNet mean / std).
        key = "lite0|efficientnet_lite0 unswapped"
        done = ck.get(key)
        if done is None:
            cpu = time.process_time()
            other, _, _ = load_model("efficientnet_lite0", MODELS / "efficientnet_lite0_imagenet.pth")
            other_prep = preprocessing_for(other)
            other_images = load_eval_images(eval_dir, other_prep, max_images=args.quick_images)
            acc = SwapSession(other, other_images, other_prep, progress=False).baseline()
            done = {**acc, "cpu_s": round(time.process_time() - cpu, 1), "prep": other_prep.to_dict()}
            ck.put(key, done)
        results.info["efficientnet_lite0"] = done
    return arch, results


def _weights_name(name: str) -> str:
    return "mobilenet_v2_imagenet.pth" if name == "mnv2" else "efficientnet_lite0_imagenet.pth"


def _repo_rel(path: str | Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def _rel(path: Path) -> str:
    try:
        return "../shared/" + str(path.resolve().relative_to(SHARED.resolve()))
    except ValueError:
        return str(path)


def convnext_tables(args: argparse.Namespace, ck: Checkpoint) -> dict[str, Any]:
    kmeans = {k: str(kmeans_keys(args.work, 7, k)) for k in KMEANS_SIZES}
    out: dict[str, Any] = {"full": None, "subset": {}, "sensitivity": None}
    test_dir = DATA / "cifar10" / "test"
    randoms = [(f"random:8:{s}", f"random:8:{s}", []) for s in range(args.seeds)]
    for arch_file in CIFAR_MODELS:
        model, _, meta = load_model(None, MODELS / "cifar10-convnext" / f"{arch_file}.safetensors")
        prep = preprocessing_for(model, meta.get("dataset"))
        subset = load_eval_images(test_dir, prep, max_per_class=args.subset_per_class)
        session = SwapSession(model, subset, prep, batch_size=250, device=args.device, progress=False)
        conditions = [
            ("none", "none", []),
            ("paper8", "paper8", []),
            ("impulse", "impulse", []),
            *randoms,
            *((f"kmeans{k}", kmeans[k], []) for k in KMEANS_SIZES if k == 8 or arch_file == "convnext_atto_s2_e55"),
        ]
        if args.discover:
            conditions.append(("discovered", args.discover, []))
        results = run_table(ck, f"{arch_file}@subset", session, conditions, resize=False)
        results.info.update(
            {"model": arch_file, "weights": _rel(MODELS / "cifar10-convnext" / f"{arch_file}.safetensors")}
        )
        out["subset"][arch_file] = results
        if arch_file == "convnext_atto_s2_e55":
            frame, cpu = _sensitivity(ck, f"{arch_file}@subset", session, "paper8", "stage")
            out["sensitivity"] = (frame, cpu)
            full = load_eval_images(test_dir, prep, max_per_class=args.full_per_class)
            session = SwapSession(model, full, prep, batch_size=250, device=args.device, progress=False)
            conditions = [("none", "none", []), ("paper8", "paper8", []), ("kmeans8", kmeans[8], [])]
            if args.discover:
                conditions.append(("discovered", args.discover, []))
            results = run_table(ck, f"{arch_file}@full", session, conditions, resize=False)
            results.info.update(
                {"model": arch_file, "weights": _rel(MODELS / "cifar10-convnext" / f"{arch_file}.safetensors")}
            )
            out["full"] = results
    return out


# ---------------------------------------------------------------------- report


def _stage_table(results: SwapResults, keep: tuple[str, ...]) -> str:
    frame = results.per_stage
    if frame.empty:
        return ""
    frame = frame[frame["keys"].isin(keep)]
    pivot = frame.pivot_table(index="stage", columns="keys", values="mean_cos2", sort=True)
    counts = frame.groupby("stage")[["n_layers", "n_filters"]].first()
    lines = ["| stage | layers | filters | " + " | ".join(f"mean cos² {c}" for c in pivot.columns) + " |"]
    lines.append("| ---: | ---: | ---: |" + " ---: |" * len(pivot.columns))
    for stage, row in pivot.iterrows():
        cells = " | ".join(f"{v:.3f}" for v in row.tolist())
        lines.append(f"| {stage} | {counts.loc[stage, 'n_layers']} | {counts.loc[stage, 'n_filters']:,} | {cells} |")
    return "\n".join(lines)


def _top1(results: SwapResults, keys: str, calibration: str | None = None) -> float | None:
    """Mean top-1 (%) of a key family, unrecalibrated (``calibration`` None) or with that calibration."""
    summary = results.summary()
    if calibration is None:
        rows = summary[(summary["keys"] == keys) & ~summary["recalibrated"]]
    else:
        rows = summary[(summary["keys"] == keys) & summary["calibration"].str.startswith(calibration)]
    return float(rows["top1"].iloc[0]) if len(rows) else None


def findings(computed: dict[str, Any]) -> list[str]:
    """The headline numbers of the tables below, read off the results (nothing typed in by hand)."""
    lines = ["## Summary", ""]
    if "mnv2" in computed:
        res = computed["mnv2"][1]
        parts, plain, recal = [], [], []
        for label, keys in (
            ("paper8", "paper8 (3x3 crop)"),
            ("discovered", "discovered"),
            ("k-means 8", "kmeans8"),
            ("random:8", "random:8"),
        ):
            before, after = _top1(res, keys), _top1(res, keys, "crossfit")
            if before is not None and after is not None:
                parts.append(f"{label} {before:.1f}% → {after:.1f}%")
                plain.append(before)
                recal.append(after)
        line = (
            f"- MobileNetV2 (imagenet-samples): unswapped {_top1(res, 'none'):.1f}% top-1. Swapped, no fine-tuning, "
            "without → with cross-fitted BatchNorm recalibration (which uses the evaluation distribution; "
            "recalibration on training images: bench/results/calibration.md): " + "; ".join(parts) + "."
        )
        if plain:
            gain = min(a - b for a, b in zip(recal, plain, strict=True))
            line += (
                f" Without recalibration no 8-key set keeps more than {max(plain):.1f}%; recalibration adds "
                f"{gain:+.1f} points or more to every set."
            )
        lines.append(line)
    if "convnext" in computed:
        full = computed["convnext"]["full"]
        parts, cos2 = [], []
        table = full.frame()
        for label, keys in (("paper8", "paper8"), ("discovered", "discovered"), ("k-means 8", "kmeans8")):
            value = _top1(full, keys)
            if value is not None:
                parts.append(f"{label} {value:.1f}%")
                cos2.append(float(table.loc[table["group"] == keys, "mean_cos2"].iloc[0]))
        lines.append(
            f"- convnext_atto_s2_e55 (CIFAR-10, 10,000 test images): unswapped {_top1(full, 'none'):.1f}%; swapped: "
            + "; ".join(parts)
            + f". These keys explain {min(cos2):.2f}–{max(cos2):.2f} of the filters' energy (mean cos²)."
        )
    return [*lines, ""]


def render(args: argparse.Namespace, sections: list[str], total_cpu: float, machine: str) -> str:
    head = [
        "# Swap tables: keys swapped into pretrained networks, no fine-tuning (issue 4)",
        "",
        f"Machine: {machine}. Total CPU time of these runs: {total_cpu / 60:.1f} min "
        "(process time, both threads counted).",
        "",
        "Reproduce: "
        + (
            f"`masterkey discover -o {_repo_rel(args.discover)}` (the discovered keys, default bank and options), then "
            if args.discover
            else ""
        )
        + "`nice -n 10 python bench/swap_tables.py"
        + (f" --discover {_repo_rel(args.discover)}" if args.discover else "")
        + "` (resumes from its checkpoint in `masterkey-runs/swap-bench`). One table: "
        "`masterkey swap ...` as given under each table.",
        "",
        "Every filter of every depthwise layer is replaced by its best affine fit `a * key + b` (exact least squares, "
        "sign free); nothing is fine-tuned. `mean cos²` is the filter-weighted mean explained fraction of the "
        "centred filters. Accuracy intervals are mean ± 95% CI (Student t) over seeds of the random keys; "
        "single rows carry the binomial uncertainty of their test set (about ±2.5 points at 1,000 images near 50%, "
        "±0.7 at 10,000 images near 85%).",
        "",
        "k-means keys: spherical sign-invariant k-means (`masterkey.discover.baselines.spherical_kmeans`, 4 restarts, "
        "seed 0) of the embedded default bank's filters of the same kernel size, every source weighted equally — "
        "3x3: MobileNetV2 + EfficientNet-Lite0; 7x7: the five CIFAR ConvNeXts. Like the paper's key pool they "
        "include the evaluated model's own filters (in-sample).",
        "",
    ]
    return "\n".join(head + sections) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tables", default="mnv2,convnext,lite0", help="comma-separated: mnv2, convnext, lite0")
    p.add_argument("--discover", help="a masterkey discover run directory: adds discovered and k-means rows")
    p.add_argument("--work", type=Path, default=REPO / "masterkey-runs" / "swap-bench", help="checkpoint directory")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "swap.md")
    p.add_argument("--seeds", type=int, default=3, help="random:8 seeds (default 3)")
    p.add_argument("--subset-per-class", type=int, default=100, help="CIFAR-10 subset: images per class")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="tiny subsets, to check the script end to end")
    args = p.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    args.quick_images = 40 if args.quick else None
    args.full_per_class = 10 if args.quick else None
    if args.quick:
        args.subset_per_class = 4
        args.seeds = 2
        args.work = args.work.with_name(args.work.name + "-quick")
        args.out = args.work / "swap.md"
    args.work.mkdir(parents=True, exist_ok=True)
    record = RawRecord(args.device)
    ck = Checkpoint(args.work / "checkpoint.json")
    tables = [t.strip() for t in args.tables.split(",") if t.strip()]
    sections: list[str] = []
    total_cpu = 0.0
    cmd_mnv2 = (
        "masterkey swap --model torchvision:mobilenet_v2 --weights ../shared/models/mobilenet_v2_imagenet.pth "
        "--keys paper8 --keys random:8 --seeds 3 --keys impulse "
        + (f"--keys {_repo_rel(args.discover)} " if args.discover else "")
        + "--resize-keys --data ../shared/data/imagenet-samples/val --recalibrate 250 --crossfit 2"
    )
    computed: dict[str, Any] = {}
    for name in tables:  # computed in the order asked for, reported in a fixed order
        computed[name] = convnext_tables(args, ck) if name == "convnext" else imagenet_table(args, ck, name)
    for name in ("mnv2", "lite0"):
        if name not in computed:
            continue
        arch, results = computed[name]
        total_cpu += results.info["cpu_s"]
        title = "MobileNetV2" if name == "mnv2" else "EfficientNet-Lite0"
        sections += [
            f"## {title} ({arch}) on imagenet-samples ({results.info['n_images']:,} images, 1,000 classes)",
            "",
            f"Weights `{results.info['weights']}`; preprocessing {results.info['preprocessing']}. "
            f"CPU time {results.info['cpu_s'] / 60:.1f} min.",
            "",
            markdown_summary(results.summary()),
            "",
        ]
        if name == "mnv2":
            sections += [
                "Recalibration re-estimates every BatchNorm running mean / variance (cumulative average, BN layers "
                "in train mode, no gradients) after the swap. `crossfit` splits the 1,000 evaluation images into 2 "
                "folds and classifies each fold after recalibrating on 250 images of the other, so no image "
                "calibrates the model that classifies it. `imagenette-128/train` calibrates on 250 Imagenette "
                "training images (10 classes, 128 px upscaled to 224): the unswapped row shows what that domain "
                "shift alone costs.",
                "",
                "Command (one CLI call covering part of the table; the script adds the other rows):",
                "",
                f"    {cmd_mnv2}",
                "",
                "Mean cos² per stage (stage = a run of layers at one resolution; a stride-2 depthwise conv starts a "
                "new stage):",
                "",
                _stage_table(results, ("paper8 (3x3 crop)", "discovered", "kmeans8", "random:8:0", "impulse")),
                "",
            ]
        else:
            other = results.info["efficientnet_lite0"]
            sections += [
                "The weights (efficientnet_pytorch naming) load into both timm implementations through "
                "`masterkey.networks.models`. They were trained with TensorFlow SAME padding, BatchNorm eps 1e-3 and "
                "inputs "
                f"in [-1, 1]: timm `tf_efficientnet_lite0` gives the table above; timm `efficientnet_lite0` "
                f"(symmetric padding, eps 1e-5, ImageNet mean / std) gives top-1 {other['top1']:.1f}% / top-5 "
                f"{other['top5']:.1f}% on the same images — the remap is right, the implementation differs.",
                "",
                "    masterkey swap --weights ../shared/models/efficientnet_lite0_imagenet.pth --keys paper8 "
                "--resize-keys --data ../shared/data/imagenet-samples/val --recalibrate 250 --crossfit 2",
                "",
            ]
    if "convnext" in computed:
        out = computed["convnext"]
        full = out["full"]
        total_cpu += full.info["cpu_s"]
        sections += [
            "## CIFAR-10 ConvNeXts, 7x7 keys, on cifar10/test (`../shared/data/cifar10/test`)",
            "",
            "LayerNorm networks: there are no running statistics, so recalibration does not apply (the CLI refuses "
            "`--recalibrate` for them).",
            "",
            f"### convnext_atto_s2_e55, all {full.info['n_images']:,} test images",
            "",
            f"CPU time {full.info['cpu_s'] / 60:.1f} min.",
            "",
            markdown_summary(full.summary()),
            "",
            "    masterkey swap --weights ../shared/models/cifar10-convnext/convnext_atto_s2_e55.safetensors "
            "--keys paper8 --keys masterkey-runs/swap-bench/kmeans8_k7.safetensors "
            + (f"--keys {_repo_rel(args.discover)} " if args.discover else "")
            + "--data ../shared/data/cifar10/test",
            "",
            "Mean cos² per stage:",
            "",
            _stage_table(full, ("paper8", "discovered", "kmeans8")),
            "",
            f"### All five, on a {10 * args.subset_per_class:,}-image subset (the first {args.subset_per_class} "
            "test images of each class)",
            "",
        ]
        combined = []
        for arch_file, res in out["subset"].items():
            total_cpu += res.info["cpu_s"]
            summary = res.summary()
            summary.insert(0, "model", arch_file)
            combined.append(summary)
        table = pd.concat(combined, ignore_index=True)
        sections += [
            "| model | keys | n_keys | seeds | top-1 % | top-5 % | Δ top-1 (points) | mean cos² |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in table.to_dict(orient="records"):
            pm = lambda m, h: f"{m:.1f}" if h != h else f"{m:.1f} ± {h:.1f}"  # noqa: E731
            sections.append(
                f"| {r['model']} | {r['keys']} | {r['n_keys']} | {r['n_seeds']} | {pm(r['top1'], r['top1_ci95'])} | "
                f"{pm(r['top5'], r['top5_ci95'])} | {pm(r['delta_top1'], r['delta_top1_ci95'])} | "
                f"{r['mean_cos2']:.3f} |"
            )
        subset_cpu = sum(res.info["cpu_s"] for res in out["subset"].values())
        sections += [
            "",
            f"CPU time {subset_cpu / 60:.1f} min. Command per model:",
            "",
            "    masterkey swap --weights ../shared/models/cifar10-convnext/MODEL.safetensors --keys paper8 "
            "--keys impulse --keys random:8 --seeds 3 --keys masterkey-runs/swap-bench/kmeans8_k7.safetensors "
            + (f"--keys {_repo_rel(args.discover)} " if args.discover else "")
            + f"--data ../shared/data/cifar10/test --max-per-class {args.subset_per_class}",
            "",
        ]
        frame, cpu = out["sensitivity"]
        total_cpu += cpu
        sections += [
            "### Sensitivity: convnext_atto_s2_e55, paper8 swapped into one stage at a time "
            f"({10 * args.subset_per_class:,}-image subset)",
            "",
            "| stage | layers | filters | mean cos² | top-1 % | top-5 % | drop (points) |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in frame.to_dict(orient="records"):
            sections.append(
                f"| {r['name']} | {r['n_layers']} | {r['n_filters']:,} | {r['mean_cos2']:.3f} | "
                f"{r['top1']:.1f} | {r['top5']:.1f} | {r['drop']:.1f} |"
            )
        sections += [
            "",
            f"CPU time {cpu / 60:.1f} min.",
            "",
            "    masterkey swap --weights ../shared/models/cifar10-convnext/convnext_atto_s2_e55.safetensors "
            f"--keys paper8 --data ../shared/data/cifar10/test --max-per-class {args.subset_per_class} "
            "--sensitivity stage",
            "",
        ]
    text = render(args, findings(computed) + sections, total_cpu, record.machine)
    raw = record.write(
        raw_path(args.out),
        {"tables": tables, "work": str(args.work), "resumed_rows": ck.resumed, "rows": ck.state},
        args.out,
    )
    write_text(args.out, f"{text}\n{raw_note(args.out)}\n")
    print(text)
    print(f"wrote {args.out} and {raw}", file=sys.stderr)


if __name__ == "__main__":
    main()
