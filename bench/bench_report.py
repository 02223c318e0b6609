"""``masterkey report`` over seven runs of every kind, side by side with another source tree (issue 28).

The seven runs are written once by the CLI into ``--runs`` (and reused when they are there): a fit of the whole
embedded bank (paper8, resized to every kernel size), the main discover job with fewer autoencoder steps (3x3, 5x5,
7x7), a flat discover run of two CIFAR-10 ConvNeXts, a swap run with stage sensitivity, a training run, an
experiment (two seeds) and an explain run. Then ``masterkey report`` over all seven runs in a fresh interpreter,
``--repeats`` times, timed from the outside (wall and CPU time of the child); ``--before SRC`` times the report of
another source tree (e.g. the tree before the change, ``git worktree add /tmp/mk-before COMMIT``) in the same rounds,
alternating with this tree's. ``masterkey keys show paper8 --png`` (the one figure a user draws from the command
line) is timed in the same rounds. The page states each against its target of issue 28: report ≤ 10 s,
``keys show --png`` ≤ 1 s (median wall, quiet 2-core machine).

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


#: Issue 28's targets: median wall seconds on a quiet 2-core machine.
TARGETS = {"report": 10.0, "keys show --png": 1.0}


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
        times: dict[str, dict[str, list[tuple[float, float]]]] = {what: {n: [] for n in trees} for what in TARGETS}
        for round_index in range(args.repeats + 1):
            for name, src in trees.items():
                tag = f"{round_index}-{name.replace(' ', '-')}"
                out, png = work / f"report-{tag}", work / f"keys-{tag}.png"
                report = run_once(["-m", "masterkey", "report", *runs, "-o", str(out)], src)
                keys = run_once(["-m", "masterkey", "keys", "show", "paper8", "--png", str(png)], src)
                shutil.rmtree(out, ignore_errors=True)
                if round_index:  # the first round warms the file cache
                    times["report"][name].append(report)
                    times["keys show --png"][name].append(keys)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    lines = [
        f"`masterkey report` over {len(RUNS)} runs ({', '.join(RUNS)}) and `masterkey keys show paper8 --png`; "
        f"{args.repeats} rounds, interleaved",
        "",
        "| command | source tree | median wall s | min wall s | median CPU s | target (median wall) |",
        "|---|---|---:|---:|---:|---|",
    ]
    for what, per_tree in times.items():
        for name, samples in per_tree.items():
            walls, cpus = [w for w, _ in samples], [c for _, c in samples]
            met = "met" if statistics.median(walls) <= TARGETS[what] else "NOT met"
            lines.append(
                f"| {what} | {name} | {statistics.median(walls):.2f} | {min(walls):.2f} | "
                f"{statistics.median(cpus):.2f} | ≤ {TARGETS[what]:g} s: {met} |"
            )
    if args.before:
        for what, per_tree in times.items():
            pairs = zip(per_tree["this tree"], per_tree["before"], strict=True)
            ratio = statistics.median(a / b for (a, _), (b, _) in pairs)
            lines += ["", f"{what}: median paired ratio this tree / before (wall): {ratio:.2f}x"]
    text = "\n".join(lines) + f"\n\nMachine: {record.machine}\nCommand: `{record.command}`\n"
    print(text)
    if args.out:
        samples = {
            what: {name: [{"wall_s": w, "cpu_s": c} for w, c in timed] for name, timed in per_tree.items()}
            for what, per_tree in times.items()
        }
        measurements = {
            "runs_reported": list(RUNS), "commands": RUNS, "repeats": args.repeats, "targets_wall_s": TARGETS,
            "times": samples,
            "trees": {name: {"src": str(src), "git_commit": git_state(Path(src))[0]} for name, src in trees.items()},
        }  # fmt: skip
        raw = record.write(raw_path(args.out), measurements, args.out)
        title = "# `masterkey report` over seven runs, and `keys show --png`"
        write_text(args.out, f"{title}\n\n{text}\n{raw_note(args.out)}\n")
        print(f"wrote {args.out} and {raw}", file=sys.stderr)


if __name__ == "__main__":
    main()
