"""``masterkey fit`` end to end against a plain script doing the same fit, side by side in one run (issue 28).

A bank of N random 7x7 filters (default 1M, written once to ``--bank`` and reused) is fitted to 50 keys
(``random:50:1``) with ``--reference none -o OUT``, each run in a fresh interpreter, and so is the same fit by a
plain script that uses no masterkey code: it reads the bank's filter tensor with safetensors, scores every filter
against every key with one matrix product per chunk, keeps the best key, a, b, cos² and residual, and writes them to
a Parquet file with the bank's metadata columns. The two alternate round by round, so that load from other
processes hits both alike; wall time and CPU time (user + system of the child) are reported, and the median of the
paired ratios CLI / plain script (the issue-28 target: at most 1.5x). ``--before SRC`` times the CLI of another
source tree in the same rounds (e.g. the tree before the change, checked out with ``git worktree add``).

    python bench/bench_fit_cli.py --repeats 5 --before /tmp/mk-before/src --out bench/results/fit-cli.md

With ``--out PAGE.md`` every run's times (and machine, command, commit, load) go to ``PAGE.raw.json`` (:mod:`raw`).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from bench_startup import SRC, run_once
from masterkey.files import write_text
from raw import RawRecord, git_state, raw_note, raw_path

KEYS = "random:50:1"
#: The same fit without masterkey: bank tensor in, best key / a / b / cos² / residual per filter out.
PLAIN = """
import sys
import numpy as np, pyarrow as pa, pyarrow.parquet as pq, torch
from safetensors import safe_open
torch.set_num_threads(1)
bank, keys_file, out = sys.argv[1:4]
with safe_open(f"{bank}/filters_k7.safetensors", framework="pt") as f:
    filters = f.get_tensor(f.keys()[0]).reshape(-1, 49)
with safe_open(keys_file, framework="pt") as f:
    keys = f.get_tensor("keys").reshape(-1, 49)
parts = []
for y in filters.split(8192):
    mean = y.mean(1, keepdim=True)
    centred = y - mean
    scores = centred @ keys.T
    best = scores.abs().argmax(1)
    a = scores.gather(1, best[:, None])[:, 0]
    energy = centred.square().sum(1)
    residual = (centred - a[:, None] * keys[best]).norm(dim=1)
    cos2 = torch.where(energy > 0, a.square() / energy.clamp_min(1e-30), torch.ones(()))
    parts.append(torch.stack([best.double(), a.double(), mean[:, 0].double(), cos2.double(), residual.double()]))
fits = torch.cat(parts, 1).numpy()
meta = pq.read_table(f"{bank}/metadata.parquet")
columns = dict(zip(["key", "a", "b", "cos2", "residual"], fits))
columns["key"] = columns["key"].astype(np.int64)
table = meta.append_column("key", pa.array(columns.pop("key")))
for name, values in columns.items():
    table = table.append_column(name, pa.array(values.astype(np.float32)))
pq.write_table(table, out)
print(f"mean cos2 {fits[3].mean():.4f}")
"""


def make_bank(path: Path, n: int) -> None:
    """A bank of ``n`` random 7x7 filters in 100 layers of one source (seed 0), unless one is there."""
    if (path / "manifest.json").is_file():
        return
    import torch

    from masterkey.bank import write_bank
    from masterkey.sources.base import HarvestedLayer, HarvestedSource

    filters = torch.randn(n, 1, 7, 7, generator=torch.Generator().manual_seed(0))
    step = -(-n // 100)
    layers = [HarvestedLayer(f"blocks.{i}.dw", filters[i * step : (i + 1) * step]) for i in range(100)]
    write_bank([HarvestedSource("synthetic", "synthetic", [x for x in layers if x.n_filters])], path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="filters in the bank (default 1,000,000)")
    parser.add_argument("--bank", type=Path, help="where the bank is kept between runs (default: a temporary one)")
    parser.add_argument("--repeats", type=int, default=5, help="measured rounds (default 5), after one warm-up")
    parser.add_argument("--before", type=Path, metavar="SRC", help="another source tree whose CLI to time alongside")
    parser.add_argument("--out", type=Path, help="also write the page here, and every run's times beside it")
    args = parser.parse_args()
    if not 1 <= args.repeats <= 50:
        parser.error("--repeats: expected 1 to 50")
    record = RawRecord("cpu")
    work = Path(tempfile.mkdtemp(prefix="bench-fit-cli-"))
    try:
        bank = args.bank or work / "bank"
        make_bank(bank, args.n)
        keys_file = work / "keys.safetensors"
        run_once(["-m", "masterkey", "keys", "convert", KEYS, "--kernel-size", "7", "-o", str(keys_file)], SRC)
        fit = ["fit", str(bank), "--keys", KEYS, "--reference", "none", "--no-progress", "--overwrite"]
        variants: list[tuple[str, list[str], Path]] = [
            ("plain script", ["-c", PLAIN, str(bank), str(keys_file), str(work / "plain.parquet")], SRC),
            ("masterkey fit", ["-m", "masterkey", *fit, "-o", str(work / "fit")], SRC),
        ]
        if args.before:
            variants.append(
                ("masterkey fit (before)", ["-m", "masterkey", *fit, "-o", str(work / "fit-before")], args.before)
            )
        times: dict[str, list[tuple[float, float]]] = {label: [] for label, _, _ in variants}
        for round_index in range(args.repeats + 1):
            for label, argv, src in variants:
                seconds = run_once(argv, src)
                if round_index:  # the first round warms the file cache
                    times[label].append(seconds)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    lines = [
        f"{args.n:,} 7x7 filters x 50 keys ({KEYS}), --reference none -o OUT; {args.repeats} rounds, interleaved",
        "",
        "| variant | median wall s | min wall s | median CPU s | x plain (wall, paired) | x plain (CPU, paired) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    plain = times["plain script"]
    for label, runs in times.items():
        ratio = statistics.median(w / p for (w, _), (p, _) in zip(runs, plain, strict=True))
        cpu_ratio = statistics.median(c / p for (_, c), (_, p) in zip(runs, plain, strict=True))
        walls, cpus = [w for w, _ in runs], [c for _, c in runs]
        lines.append(
            f"| {label} | {statistics.median(walls):.2f} | {min(walls):.2f} | {statistics.median(cpus):.2f} | "
            f"{ratio:.2f}x | {cpu_ratio:.2f}x |"
        )
    text = "\n".join(lines) + f"\n\nMachine: {record.machine}\nCommand: `{record.command}`\n"
    print(text)
    if args.out:
        trees = {"this tree": str(SRC), **({"before": str(args.before)} if args.before else {})}
        samples = {label: [{"wall_s": w, "cpu_s": c} for w, c in runs] for label, runs in times.items()}
        measurements = {
            "n_filters": args.n, "keys": KEYS, "repeats": args.repeats, "runs": samples,
            "trees": {name: {"src": src, "git_commit": git_state(Path(src))[0]} for name, src in trees.items()},
        }  # fmt: skip
        raw = record.write(raw_path(args.out), measurements, args.out)
        title = "# `masterkey fit` end to end against a plain script doing the same fit"
        write_text(args.out, f"{title}\n\n{text}\n{raw_note(args.out)}\n")
        print(f"wrote {args.out} and {raw}", file=sys.stderr)


if __name__ == "__main__":
    main()
