"""The main job (``masterkey`` with no arguments = ``masterkey discover`` on the embedded default bank) before and
after a change (issue 28): its wall and CPU time, and its keys' objective at K = 8 over several seeds.

Each run is a fresh ``python -m masterkey discover --seed S -o TMP`` (what ``masterkey`` runs, with the output and
seed named), from this tree and from ``--before SRC`` (another source tree, e.g. ``git archive COMMIT src`` unpacked),
interleaved seed by seed so that load from other processes hits both alike. Wall and CPU (user + system: what the
run costs however busy the shared cores are) come from ``wait4``; the objective at K = 8 of each kernel size from the
run's ``summary.json``; the |cos| of the after-keys with their matched before-keys, and whether they are the same
bits, from the key files. Each run's line also gives the seconds its autoencoders took (``timings_s`` in the
summary), the part of the job issue 28 targets.

    git archive e7d07c9 src | tar -x -C /tmp/mk-before      # main before the two-thread discovery
    nice -n 10 python bench/bench_main_job.py --before /tmp/mk-before/src --out bench/results/discover-main-job.md
    python bench/bench_main_job.py --seeds 0 --repeats 5       # the wall time alone, this tree (a quiet machine)

With ``--out PAGE.md`` every run's numbers (and the machine, command, commit, load) go to ``PAGE.raw.json``
beside the page (:mod:`raw`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from masterkey.files import write_text
from raw import RawRecord, raw_note, raw_path

SRC = Path(__file__).resolve().parents[1] / "src"
SIZES = (3, 5, 7)


def run_main_job(src: Path, seed: int, out: Path) -> dict[str, Any]:
    """One fresh ``masterkey discover`` from ``src``: wall, CPU, peak RSS and the objective at K per kernel size."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    argv = [sys.executable, "-m", "masterkey", "discover", "--seed", str(seed), "--no-progress", "--overwrite", "-o"]
    t0 = time.perf_counter()
    proc = subprocess.Popen([*argv, str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode() if proc.stderr else ""
    if status != 0:
        raise SystemExit(f"bench_main_job: the run from {src} (seed {seed}) failed: {err.strip()[-400:]}")
    # Older summaries may hold bare NaN (Python's json reads them).
    summary = json.loads((out / "summary.json").read_text())["by_kernel"]
    timings = json.loads((out / f"k{SIZES[0]}" / "summary.json").read_text()).get("timings_s", {})
    return {
        "autoencoders_s": timings.get("autoencoders_s", float("nan")),
        "seed": seed,
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss": usage.ru_maxrss * 1024,
        "objective_at_8": {str(k): summary[str(k)]["objective_at_k"] for k in SIZES},
    }


def matched(before: Path, after: Path) -> dict[str, Any]:
    """Per kernel size, the |cos| of each after-key with its matched before-key (Hungarian, sign-free); and under
    ``identical``, per kernel size, whether the two key tensors are the same bits."""
    import torch

    from masterkey.discover.comparison import matched_cos
    from masterkey.keys import load_keys

    found: dict[str, Any] = {"identical": {}}
    for k in SIZES:
        a, b = (load_keys(tree / f"k{k}" / "keys.safetensors") for tree in (after, before))
        found[str(k)] = matched_cos(a, b).tolist()
        found["identical"][str(k)] = bool(torch.equal(a.keys, b.keys))
    return found


def summarise(runs: dict[str, list[dict[str, Any]]], cosines: list[dict[str, Any]]) -> str:
    from masterkey.stats import mean_ci95

    def pm(values: list[float]) -> str:
        mean, ci = mean_ci95(values)
        return f"{mean:.4f} ± {ci:.4f}" if len(values) > 1 else f"{mean:.4f}"

    trees = list(runs)
    lines = ["| kernel | " + " | ".join(f"{t}: objective at K = 8" for t in trees) + " | after - before (paired) |"]
    lines.append("|---|" + "---:|" * (len(trees) + 1))
    for k in SIZES:
        cells = [pm([r["objective_at_8"][str(k)] for r in runs[t]]) for t in trees]
        diff = ""
        if len(trees) == 2:
            a, b = ([r["objective_at_8"][str(k)] for r in runs[t]] for t in ("after", "before"))
            diff = pm([x - y for x, y in zip(a, b, strict=True)])
        lines.append(f"| {k}x{k} | " + " | ".join(cells) + f" | {diff} |")
    if cosines:
        lines += [
            "",
            "| kernel | \\|cos\\| of the after-keys with their matched before-keys: mean (min) over seeds "
            "| the same bits (seeds) |",
        ]
        lines.append("|---|---:|---:|")
        for k in SIZES:
            values = [c for per_seed in cosines for c in per_seed[str(k)]]
            same = sum(per_seed["identical"][str(k)] for per_seed in cosines)
            lines.append(f"| {k}x{k} | {statistics.mean(values):.3f} ({min(values):.3f}) | {same} of {len(cosines)} |")
    lines += [
        "",
        "| tree | wall s: median (runs) | CPU s (user + sys): median (runs) | peak RSS MiB |",
        "|---|---:|---:|---:|",
    ]
    for t in trees:
        wall = [r["wall_s"] for r in runs[t]]
        cpu = [r["cpu_s"] for r in runs[t]]
        rss = max(r["peak_rss"] for r in runs[t]) / 2**20
        lines.append(
            f"| {t} | {statistics.median(wall):.1f} ({', '.join(f'{w:.1f}' for w in wall)}) | "
            f"{statistics.median(cpu):.1f} ({', '.join(f'{c:.1f}' for c in cpu)}) | {rss:,.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", type=Path, help="the source tree (its src/) to compare against")
    p.add_argument("--seeds", default="0,1,2", help="seeds, comma-separated (default 0,1,2)")
    p.add_argument("--repeats", type=int, default=1, help="runs per seed and tree (timing repeats)")
    p.add_argument("--out", help="Markdown page (its raw output goes beside it)")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    trees = {"after": SRC, **({"before": args.before} if args.before else {})}
    record = RawRecord("cpu")
    print(f"machine: {record.machine}\ncommand: {record.command}", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {t: [] for t in trees}
    cosines: list[dict[str, Any]] = []
    loads = []
    with tempfile.TemporaryDirectory(prefix="mk-main-job-") as tmp:
        for seed in seeds:
            for repeat in range(args.repeats):
                outs = {}
                for tree, src in trees.items():
                    outs[tree] = Path(tmp) / f"{tree}-{seed}"
                    before = os.getloadavg()
                    run = run_main_job(src, seed, outs[tree])
                    run.update(repeat=repeat, load_before=[round(v, 2) for v in before])
                    runs[tree].append(run)
                    print(f"{tree:6} seed {seed}: {run['wall_s']:.1f} s wall, {run['cpu_s']:.1f} s CPU "
                          f"(autoencoders {run['autoencoders_s']:.1f} s wall), objective "
                          f"{run['objective_at_8']}, load {before[0]:.2f}", flush=True)  # fmt: skip
                if "before" in trees and repeat == 0:
                    cosines.append(matched(outs["before"], outs["after"]))
    text = summarise(runs, cosines)
    print(text)
    if args.out:
        page = [
            "# The main job before and after (issue 28)",
            "",
            f"Machine: {record.machine}.",
            f"Command: `{record.command}`. Each run: `python -m masterkey discover --seed S -o TMP --no-progress` "
            "(the main job with its seed and output named), a fresh process; trees interleaved seed by seed.",
            "",
            text,
            "",
            raw_note(args.out),
        ]
        raw = record.write(raw_path(args.out), {"runs": runs, "matched_cos": cosines, "loads": loads}, args.out)
        write_text(args.out, "\n".join(page) + "\n")
        print(f"wrote {args.out} and {raw}")


if __name__ == "__main__":
    main()
