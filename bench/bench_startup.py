"""Start-up time of the quick commands, side by side in one run, as ratios to ``python -c pass``.

Each command runs in a fresh interpreter (``python -m masterkey ...``, what the ``masterkey`` console script runs),
its wall time and CPU time (user + system: what the command costs, however busy the shared cores are) measured from
the outside, ``--repeats`` times, interleaved round by round (every command once, then
again) so that load from other processes hits all of them alike. ``--before SRC`` adds the same commands run from
another source tree (e.g. the main branch before lazy imports) to the same rounds. ``python -c "import torch"`` is
the floor that every torch-importing command pays.

    python bench/bench_startup.py --repeats 7 --before /tmp/mk-before/src --out bench/results/startup.md

With ``--out PAGE.md`` every run's times (and the machine, command, commit, load) go to ``PAGE.raw.json`` beside
the page (:mod:`raw`).
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from masterkey.files import write_text
from raw import RawRecord, git_state, raw_note, raw_path

SRC = Path(__file__).resolve().parents[1] / "src"
#: (label, interpreter arguments); the masterkey ones depend on the source tree on PYTHONPATH.
BASELINES = [("python -c pass", ["-c", "pass"]), ('python -c "import torch"', ["-c", "import torch"])]
COMMANDS = [
    ("masterkey --help", ["--help"]),
    ("masterkey discover --help", ["discover", "--help"]),
    ("masterkey bank info default", ["bank", "info", "default"]),
    ("masterkey keys show paper8", ["keys", "show", "paper8"]),
    # {tmp}: a temporary folder of each source tree's own, so that --overwrite replaces only its own figure
    ("masterkey keys show paper8 --png", ["keys", "show", "paper8", "--png", "{tmp}/paper8.png", "--overwrite"]),
]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(argv: list[str], src: Path) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one run of ``python ARGV`` with ``src`` on PYTHONPATH; a failing
    command stops the bench. CPU time is what the command itself costs, whatever else shares the cores."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    start, cpu = time.perf_counter(), _children_cpu()
    done = subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True)
    elapsed, cpu = time.perf_counter() - start, _children_cpu() - cpu
    if done.returncode != 0:
        raise SystemExit(f"bench_startup: {shlex.join(argv)} failed ({done.returncode}): {done.stderr.strip()[:300]}")
    return elapsed, cpu


def measure(trees: dict[str, Path], repeats: int) -> dict[str, list[tuple[float, float]]]:
    """(wall, CPU) seconds per run of every (label, tree) variant, ``repeats`` interleaved rounds after one warm-up
    round."""
    variants = [(label, argv, SRC) for label, argv in BASELINES]
    for tree, src in trees.items():
        tmp = tempfile.mkdtemp(prefix="bench-startup-")
        variants += [
            (f"{label} ({tree})", ["-m", "masterkey", *(a.replace("{tmp}", tmp) for a in argv)], src)
            for label, argv in COMMANDS
        ]
    times: dict[str, list[tuple[float, float]]] = {label: [] for label, _, _ in variants}
    for round_index in range(repeats + 1):
        for label, argv, src in variants:
            seconds = run_once(argv, src)
            if round_index:  # the first round warms the file cache
                times[label].append(seconds)
    return times


def table(times: dict[str, list[tuple[float, float]]]) -> str:
    """A markdown table: median and min wall seconds and median CPU seconds, each median also as a multiple of
    ``python -c pass``'s."""
    walls = {label: [w for w, _ in values] for label, values in times.items()}
    cpus = {label: [c for _, c in values] for label, values in times.items()}
    floor_wall, floor_cpu = (statistics.median(x[BASELINES[0][0]]) for x in (walls, cpus))
    lines = [
        "| command | median wall s | min wall s | x python -c pass | median CPU s | x python -c pass |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label in times:
        wall, cpu = statistics.median(walls[label]), statistics.median(cpus[label])
        lines.append(
            f"| `{label}` | {wall:.3f} | {min(walls[label]):.3f} | {wall / floor_wall:.1f} | {cpu:.3f} | "
            f"{cpu / floor_cpu:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7, help="measured runs of each command (default 7)")
    parser.add_argument("--before", type=Path, metavar="SRC", help="another source tree to time alongside")
    parser.add_argument(
        "--out",
        type=Path,
        help="also write the table (with command and machine) to this Markdown file, and every run's "
        "times beside it (NAME.raw.json)",
    )
    args = parser.parse_args()
    if not 1 <= args.repeats <= 100:
        parser.error("--repeats: expected 1 to 100")
    trees = {"after": SRC} if args.before else {"this tree": SRC}
    if args.before:
        trees = {"before": args.before.resolve(), **trees}
    record = RawRecord("cpu")
    times = measure(trees, args.repeats)
    text = (
        f"{table(times)}\n\n{args.repeats} runs each, interleaved; a fresh interpreter per run (wall time; CPU time is "
        "user + system of the run, which other jobs on the cores do not inflate).\n"
        f"Machine: {record.machine}\nCommand: `{record.command}`\n"
    )
    print(text)
    if args.out:
        samples = {label: [{"wall_s": wall, "cpu_s": cpu} for wall, cpu in runs] for label, runs in times.items()}
        trees_used = {name: {"src": str(src), "git_commit": git_state(src)[0]} for name, src in trees.items()}
        raw = record.write(
            raw_path(args.out), {"repeats": args.repeats, "trees": trees_used, "runs": samples}, args.out
        )
        write_text(args.out, f"# Start-up time of the quick commands\n\n{text}\n{raw_note(args.out)}\n")
        print(f"wrote {args.out} and {raw}", file=sys.stderr)


if __name__ == "__main__":
    main()
