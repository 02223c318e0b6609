"""``masterkey report`` over seven runs of every kind, side by side with another source tree (issue 28).

The seven runs are written once by the CLI into ``--runs`` (and reused when they are there): a fit of the whole
embedded bank (paper8, resized to every kernel size), the main discover job with fewer autoencoder steps (3x3, 5x5,
7x7), a flat discover run of two CIFAR-10 ConvNeXts, a swap run with stage sensitivity, a training run, an
experiment (two seeds) and an explain run. Then ``masterkey report`` over all seven runs in a fresh interpreter,
``--repeats`` times, timed from the outside (wall and CPU time of the child); ``--before SRC`` times the report of
another source tree (e.g. the tree before the change, ``git worktree add /tmp/mk-before COMMIT``) in the same rounds,
alternating with this tree's.

    python bench/bench_report.py --runs /tmp/bench-report-runs --repeats 5 --before /tmp/mk-before/src \\
        --out bench/results/report.md

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

SHARED = Path(__file__).resolve().parents[2] / "shared"
WEIGHTS = SHARED / "models" / "cifar10-convnext" / "convnext_atto_s0_e20.safetensors"
CIFAR = SHARED / "data" / "cifar10"
TRAIN = [
    *("train", "--model", "convnext_atto", "--model-kwargs", "num_classes=10,patch_size=2", "--data", str(CIFAR)),
    *("--max-train-images", "60", "--max-test-images", "40", "--batch-size", "20", "--epochs", "2"),
    *("--mode", "frozen", "--keys", "paper8", "--no-progress"),
]
#: The runs of the report, in its order, and the command that writes each (``-o`` is added).
RUNS = {
    "fit": ["fit", "--keys", "paper8", "--resize-keys", "--no-progress"],
    "discover": ["discover", "--ae-steps", "300", "--rounds", "1", "--no-progress"],
    "discover-cifar": [
        *("discover", "default", "--query", "source in ['convnext_atto_s0_e20', 'convnext_atto_s1_e20']", "-k", "2"),
        *("--candidates", "8", "--rounds", "1", "--ae-steps", "100", "--random-seeds", "2", "--universality"),
        "--no-progress",
    ],
    "swap": [
        *("swap", "--weights", str(WEIGHTS), "--keys", "paper8", "--keys", "random:8", "--seeds", "2"),
        *("--data", str(CIFAR / "test"), "--max-images", "100", "--sensitivity", "stage"),
    ],
    "train": TRAIN,
    "experiment": [*TRAIN, "--seeds", "0,1"],
    "explain": ["explain", "paper8", "--components", "10", "--seeds", "3"],
}


def make_runs(root: Path) -> list[Path]:
    """The seven runs under ``root``, each written by this tree's CLI unless it is there already."""
    paths = []
    for name, argv in RUNS.items():
        path = root / name
        if not (path / "run.json").is_file():
            run_once(["-m", "masterkey", *argv, "-o", str(path), "--overwrite"], SRC)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, help="where the seven runs are kept (default: a temporary folder)")
    parser.add_argument("--repeats", type=int, default=5, help="measured rounds (default 5), after one warm-up")
    parser.add_argument("--before", type=Path, metavar="SRC", help="another source tree to time alongside")
    parser.add_argument("--out", type=Path, help="also write the page here, and every run's times beside it")
    args = parser.parse_args()
    if not 1 <= args.repeats <= 50:
        parser.error("--repeats: expected 1 to 50")
    record = RawRecord("cpu")
    work = Path(tempfile.mkdtemp(prefix="bench-report-"))
    try:
        runs = [str(p) for p in make_runs(args.runs or work / "runs")]
        trees = {"this tree": SRC, **({"before": args.before} if args.before else {})}
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in trees}
        for round_index in range(args.repeats + 1):
            for name, src in trees.items():
                out = work / f"report-{len(times[name])}-{name.replace(' ', '-')}"
                seconds = run_once(["-m", "masterkey", "report", *runs, "-o", str(out)], src)
                shutil.rmtree(out, ignore_errors=True)
                if round_index:  # the first round warms the file cache
                    times[name].append(seconds)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    lines = [
        f"`masterkey report` over {len(RUNS)} runs ({', '.join(RUNS)}); {args.repeats} rounds, interleaved",
        "",
        "| source tree | median wall s | min wall s | median CPU s |",
        "|---|---:|---:|---:|",
    ]
    for name, samples in times.items():
        walls, cpus = [w for w, _ in samples], [c for _, c in samples]
        lines.append(f"| {name} | {statistics.median(walls):.2f} | {min(walls):.2f} | {statistics.median(cpus):.2f} |")
    if args.before:
        ratio = statistics.median(a / b for (a, _), (b, _) in zip(times["this tree"], times["before"], strict=True))
        lines += ["", f"Median paired ratio this tree / before (wall): {ratio:.2f}x"]
    text = "\n".join(lines) + f"\n\nMachine: {record.machine}\nCommand: `{record.command}`\n"
    print(text)
    if args.out:
        samples = {name: [{"wall_s": w, "cpu_s": c} for w, c in runs] for name, runs in times.items()}
        measurements = {
            "runs_reported": list(RUNS), "commands": RUNS, "repeats": args.repeats, "times": samples,
            "trees": {name: {"src": str(src), "git_commit": git_state(Path(src))[0]} for name, src in trees.items()},
        }  # fmt: skip
        raw = record.write(raw_path(args.out), measurements, args.out)
        write_text(args.out, f"# `masterkey report` over seven runs\n\n{text}\n{raw_note(args.out)}\n")
        print(f"wrote {args.out} and {raw}", file=sys.stderr)


if __name__ == "__main__":
    main()
