"""Discover at scale (issue 17): time and peak memory of every stage of ``masterkey discover`` on banks of random
filters, against the affine fit's own time on the same bank in the same run.

For each bank size (default 25,000, 100,000 and 1,000,000 random 7x7 filters from four sources of 40/30/20/10 %;
10,000,000 more with ``--device cuda``):

1. the bank is written once with the library's bank writer (kept under ``--workdir`` for later runs);
2. a fresh process runs the stages one after another through the library, resetting the peak RSS (Linux
   ``/proc/self/clear_refs``) before each: reading and normalising the bank (``prepare_filters``), the discovery
   proper (``discover_keys`` without baselines: normalisation, autoencoder, two greedy rounds), the objective the
   baselines are scored with (one pass for its state, one for the weighted scatter that span scores use), each
   baseline (``score_baselines`` with that baseline alone, scored on every filter), optionally the universality
   check, and
   ``fit_affine`` of the same filters against 50 keys (``random:50:0``), with discovery's torch threads;
3. another fresh process runs ``masterkey discover BANK`` end to end (all default baselines), and its wall time and
   peak RSS are read from ``wait4``.

With ``--main-job`` the main job (``masterkey`` on the embedded default bank) is timed the same way. The machine,
the load average around every measurement, and the table go to stdout and to ``--out`` (Markdown); every number
measured (each stage's seconds and peak RSS, discover's own timings, the end-to-end runs) goes beside the page as
``NAME.raw.json`` (:mod:`raw`).

    nice -n 10 python bench/bench_discover.py                             # 25k, 100k, 1M on the CPU, + main job
    python bench/bench_discover.py --device cuda --sizes 25000,1000000,10000000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SHARES = (0.4, 0.3, 0.2, 0.1)
STAGES = ("load", "discover", "objective", "kmeans", "pca", "random", "impulse", "paper8", "universality", "fit")


def rss_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(field + ":")).split()[1]) * 1024


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak RSS (VmHWM) restarts from the current RSS


def load_average() -> list[float]:
    """The 1, 5 and 15-minute load averages."""
    return [round(v, 2) for v in os.getloadavg()]


def loads_text(before: list[float], after: list[float]) -> str:
    return " ".join(f"{v:.2f}" for v in before) + " -> " + " ".join(f"{v:.2f}" for v in after)


def make_bank(n: int, path: Path, kernel_size: int) -> None:
    """``n`` random k x k filters from four sources (40/30/20/10 %), layers of 768 channels, written as a bank."""
    import torch

    from masterkey.bank import write_bank
    from masterkey.sources.base import HarvestedLayer, HarvestedSource

    g = torch.Generator().manual_seed(0)
    counts = [int(n * s) for s in SHARES[:-1]]
    counts.append(n - sum(counts))
    sources = []
    for s, count in enumerate(counts):
        layers, left = [], count
        while left > 0:
            c = min(768, left)
            weight = torch.randn(c, 1, kernel_size, kernel_size, generator=g)
            layers.append(HarvestedLayer(f"stages.{len(layers) // 8}.blocks.{len(layers) % 8}.conv_dw", weight))
            left -= c
        sources.append(HarvestedSource(f"random{s}", "synthetic", layers))
    write_bank(sources, path, overwrite=True)


def ensure_bank(n: int, workdir: Path, kernel_size: int) -> Path:
    path = workdir / f"random{n}_k{kernel_size}"
    manifest = path / "manifest.json"
    if not (manifest.is_file() and json.loads(manifest.read_text()).get("n_filters") == n):
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, __file__, "--make-bank", str(n), str(path), "--kernel", str(kernel_size)], check=True
        )
        print(f"  wrote {path} ({n:,} filters) in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


def measure_stages(bank_path: Path, device: str, universality: bool, kernel_size: int) -> dict[str, Any]:
    """Every stage in this process, in order, with its wall time and the peak RSS while it ran."""
    import torch

    from masterkey.bank import open_bank
    from masterkey.discover import DiscoverConfig, discover_keys, prepare_filters, source_weights
    from masterkey.discover.autoencoder import cpu_threads
    from masterkey.discover.objectives import VarianceObjective
    from masterkey.discover.pipeline import score_baselines
    from masterkey.discover.universality import leave_one_source_out
    from masterkey.fit import fit_affine
    from masterkey.keys import load_keys

    out: dict[str, Any] = {"seconds": {}, "peak_rss": {}, "timings": {}}

    def stage(name: str, fn: Callable[[], Any]) -> Any:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        reset_peak()
        t0 = time.perf_counter()
        result = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            out.setdefault("peak_gpu", {})[name] = torch.cuda.max_memory_allocated()
        out["seconds"][name] = time.perf_counter() - t0
        out["peak_rss"][name] = rss_bytes("VmHWM")
        return result

    out["rss_at_start"] = rss_bytes("VmRSS")
    filters, sources, _ = stage("load", lambda: prepare_filters(open_bank(bank_path), kernel_size))
    out["n_filters"] = len(filters)
    config = DiscoverConfig()
    weights = source_weights(sources, len(sources))
    with cpu_threads(config.cpu_threads if device == "cpu" else None):
        found = stage(
            "discover",
            lambda: discover_keys(
                filters, sources, config, device=device, progress=False, with_baselines=False, copy=False
            ),
        )
        out["timings"] = found.timings
        x = filters.to(device)  # normalised in place by discover_keys

        def objective_with_scatter() -> VarianceObjective:
            objective = VarianceObjective(x, found.candidates[0].keys, weights, device=device)
            objective.scatter()  # what every span score needs (one pass), computed once
            return objective

        objective = stage("objective", objective_with_scatter)
        for method in ("kmeans", "pca", "random", "impulse", "paper8"):
            only = DiscoverConfig(baselines=(method,))
            scored = stage(
                method,
                lambda only=only: score_baselines(
                    x, weights, only, objective, found.paths, found.candidates, progress=False, device=device
                ),
            )
            out.setdefault("notes", []).extend(scored.notes)
        if universality:
            stage("universality", lambda: leave_one_source_out(x, sources, config, device=device, progress=False))
        keys = load_keys("random:50:0", kernel_size=kernel_size)
        fit_affine(x[:100_000], keys, device=device)  # warm-up
        stage("fit", lambda: fit_affine(x, keys, device=device))
    return out


def run_cli(args: list[str]) -> dict[str, float]:
    """Wall time and peak RSS of one ``masterkey`` process."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "masterkey", *args], env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"masterkey {' '.join(args)} failed with status {status}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss": usage.ru_maxrss * 1024}


def mib(value: float) -> str:
    return f"{value / 2**20:,.0f}"


def table(rows: list[dict[str, Any]], universality: bool) -> str:
    stages = [s for s in STAGES if universality or s != "universality"]
    head = ["filters", *stages, "`masterkey discover` wall (CPU)", "discover / fit"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for r in rows:
        sec = r["stages"]["seconds"]
        total = r["cli"]["wall_s"]
        cells = [
            f"{r['n']:,}",
            *(f"{sec[s]:.2f}" for s in stages),
            f"{total:.1f} ({r['cli']['cpu_s']:.1f})",
            f"{total / sec['fit']:,.0f}x",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Peak RSS in MiB while each stage ran (the process holds the bank's filters and the interpreter):",
        "",
    ]
    head = ["filters", "filters (MiB)", *stages, "`masterkey discover` peak"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for r in rows:
        peak = r["stages"]["peak_rss"]
        cells = [f"{r['n']:,}", mib(r["filter_bytes"]), *(mib(peak[s]) for s in stages), mib(r["cli"]["peak_rss"])]
        lines.append("| " + " | ".join(cells) + " |")
    if any("peak_gpu" in r["stages"] for r in rows):
        lines += ["", "Peak GPU memory (MiB) per stage:", ""]
        lines += ["| filters | " + " | ".join(stages) + " |", "|" + "---:|" * (len(stages) + 1)]
        for r in rows:
            gpu = r["stages"].get("peak_gpu", {})
            lines.append(f"| {r['n']:,} | " + " | ".join(mib(gpu.get(s, 0)) for s in stages) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default=None, help="bank sizes, comma-separated (default 25000,100000,1000000)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--kernel", type=int, default=7)
    p.add_argument("--universality", action="store_true", help="time the universality check too")
    p.add_argument("--main-job", action="store_true", help="also time `masterkey` on the embedded default bank")
    p.add_argument("--workdir", default="/tmp/masterkey-bench-discover", help="where the banks are kept")
    p.add_argument("--out", default=None, help="Markdown file for the table")
    p.add_argument("--make-bank", nargs=2, metavar=("N", "PATH"), help=argparse.SUPPRESS)
    p.add_argument("--stages", metavar="BANK", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.make_bank:
        make_bank(int(args.make_bank[0]), Path(args.make_bank[1]), args.kernel)
        return
    if args.stages:
        print(json.dumps(measure_stages(Path(args.stages), args.device, args.universality, args.kernel)))
        return
    default = "25000,100000,1000000" + (",10000000" if args.device.startswith("cuda") else "")
    sizes = [int(s) for s in (args.sizes or default).split(",")]
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    from masterkey.files import write_text
    from raw import RawRecord, raw_note, raw_path

    record = RawRecord(args.device)
    print(f"machine: {record.machine}\ncommand: {record.command}", flush=True)
    rows, loads = [], []
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    for n in sizes:
        bank = ensure_bank(n, workdir, args.kernel)
        before = load_average()
        extra = ["--universality"] if args.universality else []
        command_line = [sys.executable, __file__, "--stages", str(bank), "--device", args.device, "--kernel"]
        done = subprocess.run([*command_line, str(args.kernel), *extra], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(done.stderr)
        stages = json.loads(done.stdout.strip().splitlines()[-1])
        out_dir = str(workdir / f"run{n}")
        cli_args = ["discover", str(bank), "--device", args.device, "--no-progress", "--overwrite", "-o", out_dir]
        cli = run_cli([*cli_args, *extra])
        loads.append({"n": n, "before": before, "after": load_average()})
        rows.append({"n": n, "stages": stages, "cli": cli, "filter_bytes": n * args.kernel**2 * 4, "load": loads[-1]})
        sec = stages["seconds"]
        print(
            f"{n:>10,} filters: discover {cli['wall_s']:.1f} s wall, peak {mib(cli['peak_rss'])} MiB; stages "
            + ", ".join(f"{k} {v:.2f} s" for k, v in sec.items())
            + f"; load {loads_text(before, loads[-1]['after'])}",
            flush=True,
        )
    main_job = None
    if args.main_job:
        before = load_average()
        main_job = run_cli(["discover", "--no-progress", "--overwrite", "-o", str(workdir / "main-job")])
        main_job["load"] = {"before": before, "after": load_average()}
        print(
            f"main job: {main_job['wall_s']:.1f} s wall, {main_job['cpu_s']:.1f} s CPU, "
            f"peak {mib(main_job['peak_rss'])} MiB; load {loads_text(**main_job['load'])}",
            flush=True,
        )
    text = table(rows, args.universality)
    print(text)
    if args.out:
        body = [
            "# `masterkey discover` at scale: measured results (issue 17)",
            "",
            f"Machine: {record.machine}.",
            f"Command: `{record.command}` (bank sizes: random 7x7 filters from four sources of 40/30/20/10 %).",
            "",
            "Load average (1, 5, 15 min) before -> after each size (other jobs share the machine): "
            + "; ".join(f"{x['n']:,}: {loads_text(x['before'], x['after'])}" for x in loads)
            + ".",
            "",
            "Seconds per stage (one process, stages in order; `load` = open + read + normalise the bank, "
            "`discover` = normalisation, autoencoder and both greedy rounds; `objective` = the data-free objective the "
            "baselines are scored with, and its weighted scatter; each baseline built and scored on every filter; "
            "`fit` = `fit_affine` of the same filters against 50 keys with discover's threads) and "
            "`masterkey discover BANK` end to end in a fresh process (all default baselines, output written):",
            "",
            text,
        ]
        if main_job is not None:
            body += [
                "",
                f"Main job (`masterkey discover` on the embedded default bank, 25,664 filters, output written): "
                f"{main_job['wall_s']:.1f} s wall, {main_job['cpu_s']:.1f} s CPU, peak RSS "
                f"{mib(main_job['peak_rss'])} MiB (load {loads_text(**main_job['load'])}).",
            ]
        raw = record.write(
            raw_path(args.out),
            {"device": args.device, "kernel_size": args.kernel, "sizes": rows, "main_job": main_job},
            args.out,
        )
        write_text(args.out, "\n".join([*body, "", raw_note(args.out)]) + "\n")
        print(f"wrote {args.out} and {raw}")


if __name__ == "__main__":
    main()
