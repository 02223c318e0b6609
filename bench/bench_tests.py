"""The README's test command, timed: wall time, CPU time, peak memory, per-file times and what it leaves in /tmp
(issue 28: at most 5 minutes on the 2-core CI machine).

Runs ``python -m pytest -n auto -q -p no:cacheprovider`` (the README's command) from the repository root, with a
JUnit XML report in a temporary folder, and measures from the outside: wall time, CPU time of the whole process
tree (user + system of the children), the peak RSS of the largest process (``ru_maxrss``), and the bytes the session
left in the temporary directory (``/tmp``: pytest's folders and what its processes wrote). Per-file times are the
sums of the test times the JUnit report gives (with parallel workers they add up to more than the wall time); the
slowest tests come from the same report, and pytest's own ``--durations`` list (each phase apart, as CI prints it)
from its output, so one run gives the wall time and where it went. ``--serial`` times the same suite without
workers afterwards, for comparison; ``-- ARGS`` passes more arguments to pytest (e.g. ``-m "not
slow"``); ``--baseline "ARGS"`` first times the suite with ARGS appended (e.g. the previous default, ``-n 2 --dist
load``), then the README's command, each with a fresh test cache, and prints the paired ratio of their wall times;
``--baseline-rev REV --pairs N`` times the suite of an earlier revision (a temporary git worktree) and this checkout's,
alternated N times (the host's speed drifts by tens of percent over an hour), and prints each pair's ratio.

    python bench/bench_tests.py --out bench/results/tests.md            # about 5 minutes on 2 quiet cores
    python bench/bench_tests.py --baseline "-n 2 --dist load" --out bench/results/tests.md
    python bench/bench_tests.py --baseline-rev 7568072 --pairs 2 --out bench/results/tests.md   # ~25 minutes

With ``--out PAGE.md`` every number (and machine, command, commit, load) goes to ``PAGE.raw.json`` (:mod:`raw`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from masterkey.files import write_text
from raw import REPO, RawRecord, raw_note, raw_path

README_COMMAND = ["-m", "pytest", "-n", "auto", "-q", "-p", "no:cacheprovider"]
#: pytest's own list of the slowest test phases (setup / call / teardown), as CI prints it (.ci/run).
DURATIONS = 25


def _bytes_under(path: Path) -> int:
    """Bytes of the file ``path``, or of every file under the folder ``path`` (links not followed)."""
    if path.is_symlink() or not path.is_dir():
        with contextlib.suppress(OSError):  # removed meanwhile
            return path.lstat().st_size
        return 0
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):  # removed meanwhile
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


def tmp_bytes(skip: str = "") -> dict[str, int]:
    """Bytes under each entry of the temporary directory (``/tmp``), but ``skip``: compared before and after a run,
    what the session left there, pytest's own folders and whatever its processes wrote (inductor's cache, ...)."""
    return {entry.name: _bytes_under(entry) for entry in Path(tempfile.gettempdir()).iterdir() if entry.name != skip}


def run_suite(extra: list[str], serial: bool, tree: Path = REPO) -> dict:
    """One run of the suite of the checkout ``tree`` (this one by default; another runs with its own ``src`` first on
    the path); its times, outcome, per-file seconds and what it left in /tmp."""
    command = [a for a in README_COMMAND if not (serial and a in ("-n", "auto"))]
    with tempfile.TemporaryDirectory(prefix="bench-tests-") as work:
        xml = Path(work) / "junit.xml"
        argv = [sys.executable, *command, f"--junitxml={xml}", f"--durations={DURATIONS}", *extra]
        before_tmp = tmp_bytes(skip=Path(work).name)
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        env = {**os.environ, "MASTERKEY_TEST_CACHE": str(Path(work) / "cache")}  # fresh, as on a CI machine
        if tree != REPO:
            env |= {"PYTHONPATH": str(tree / "src"), "MASTERKEY_SHARED": str(REPO.parent / "shared")}
        done = subprocess.run(argv, cwd=tree, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        per_file: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        per_test: dict[str, float] = {}
        if xml.is_file():
            for case in ET.parse(xml).getroot().iter("testcase"):
                parts = case.get("classname", "").split(".")
                while parts and parts[-1][:1].isupper():  # a test class: its module is the file
                    parts.pop()
                name = "/".join(parts) + ".py"
                seconds = float(case.get("time", 0))
                per_file[name] += seconds
                counts[name] += 1
                per_test[f"{name}::{case.get('name', '')}"] = seconds
    summary = next((line for line in reversed(done.stdout.splitlines()) if " in " in line), "")
    lines = done.stdout.splitlines()
    start_at = next((i for i, line in enumerate(lines) if "slowest" in line and "durations" in line), len(lines))
    durations = [line for line in lines[start_at:] if line.strip() and not line.startswith("=") and line != summary]
    return {
        "tree": "this checkout" if tree == REPO else _revision(tree),
        "command": shlex.join(["python", *command, *extra]),
        "exit_status": done.returncode,
        "summary_line": summary,
        "wall_s": wall,
        "cpu_s": (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime),
        "peak_rss_mib": after.ru_maxrss / 1024,  # the largest single process, not the sum
        "tmp_left_mib": sum(max(0, n - before_tmp.get(k, 0)) for k, n in tmp_bytes(Path(work).name).items()) / 2**20,
        "per_file_s": dict(sorted(per_file.items(), key=lambda kv: -kv[1])),
        "tests_per_file": dict(counts),
        "slowest_tests_s": dict(sorted(per_test.items(), key=lambda kv: -kv[1])[:50]),  # setup + call + teardown
        "pytest_durations": durations,  # pytest's --durations section, as printed
        "tests_timed": len(per_test),
    }


def _revision(tree: Path) -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True, text=True)
    return done.stdout.strip()


@contextlib.contextmanager
def checkout(revision: str) -> Iterator[Path]:
    """A temporary git worktree of this repository at ``revision``, with ``../shared`` beside it as beside this
    checkout (files such as bench/*.toml name ``../shared`` relative to themselves), removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="bench-tests-tree-") as parent:
        tree = Path(parent) / "main"
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), revision], cwd=REPO, check=True,
                       capture_output=True)  # fmt: skip
        (Path(parent) / "shared").symlink_to(REPO.parent / "shared")
        try:
            yield tree
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, check=False)


def describe(run: dict, top: int = 15) -> list[str]:
    lines = [
        f"`{run['command']}` ({run['tree']}): {run['summary_line'].strip('= ')} (exit status {run['exit_status']})",
        f"  wall {run['wall_s']:.0f} s, CPU {run['cpu_s']:.0f} s (user + system, all processes), largest process "
        f"{run['peak_rss_mib']:.0f} MiB, left under /tmp {run['tmp_left_mib']:.1f} MiB",
        f"  slowest files (sum of their test times, s; the first {top} of {len(run['per_file_s'])}):",
    ]
    for name, seconds in list(run["per_file_s"].items())[:top]:
        lines.append(f"    {seconds:7.1f}  {name} ({run['tests_per_file'][name]} tests)")
    lines.append(f"  slowest tests (setup + call + teardown, s; the first {top} of {run['tests_timed']}):")
    for name, seconds in list(run["slowest_tests_s"].items())[:top]:
        lines.append(f"    {seconds:7.1f}  {name}")
    lines.append(f"  pytest --durations={DURATIONS} (each phase apart):")
    lines += [f"    {line}" for line in run["pytest_durations"]]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serial", action="store_true", help="also time the suite without workers")
    parser.add_argument("--out", type=Path, help="also write the page here, and every number beside it")
    parser.add_argument("--baseline", help="first time the suite with these pytest arguments appended (one string)")
    parser.add_argument(
        "--baseline-rev", metavar="REV", help="time the suite of revision REV (a git worktree) against this one"
    )
    parser.add_argument(
        "--pairs", type=int, default=1, help="with --baseline-rev: this many baseline / this-checkout pairs, alternated"
    )
    parser.add_argument("pytest_args", nargs="*", help="more pytest arguments (after --)")
    args = parser.parse_args()
    record = RawRecord("cpu")
    runs = {}
    lines: list[str] = []
    if args.baseline_rev:
        if not 1 <= args.pairs <= 10:
            parser.error(f"--pairs: expected 1 to 10, got {args.pairs}")
        known = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{args.baseline_rev}^{{commit}}"], cwd=REPO,
                               capture_output=True)  # fmt: skip
        if known.returncode != 0:
            parser.error(f"--baseline-rev: {args.baseline_rev!r} is not a commit of this repository")
        with checkout(args.baseline_rev) as tree:
            for i in range(1, args.pairs + 1):  # alternated, so that a slower hour of the host hits both alike
                runs[f"baseline-{i}"] = run_suite(args.pytest_args, serial=False, tree=tree)
                runs[f"parallel-{i}"] = run_suite(args.pytest_args, serial=False)
        ratios = [runs[f"parallel-{i}"]["wall_s"] / runs[f"baseline-{i}"]["wall_s"] for i in range(1, args.pairs + 1)]
        lines += [line for run in runs.values() for line in [*describe(run), ""]]
        walls = {k: round(v["wall_s"]) for k, v in runs.items()}
        lines.append(f"wall times (s): {walls}")
        lines.append(
            f"wall time, this checkout / {args.baseline_rev} ({runs['baseline-1']['tree']}), pair by pair: "
            f"{', '.join(f'{r:.2f}x' for r in ratios)}; median {statistics.median(ratios):.2f}x\n"
        )
    else:
        if args.baseline:
            runs["baseline"] = run_suite([*args.pytest_args, *shlex.split(args.baseline)], serial=False)
        runs["parallel"] = run_suite(args.pytest_args, serial=False)
        if args.serial:
            runs["serial"] = run_suite(args.pytest_args, serial=True)
        lines = [line for run in runs.values() for line in [*describe(run), ""]]
        if "baseline" in runs:
            ratio = runs["parallel"]["wall_s"] / runs["baseline"]["wall_s"]
            lines.append(f"wall time, README command / baseline ({args.baseline}): {ratio:.2f}x\n")
    text = "\n".join(lines) + f"\nMachine: {record.machine}\nCommand: `{record.command}`\n"
    print(text)
    if args.out:
        raw = record.write(raw_path(args.out), {"runs": runs}, args.out)
        page = f"# The test suite: the README's test command\n\n```\n{text}```\n\n{raw_note(args.out)}\n"
        write_text(args.out, page)
        print(f"wrote {args.out} and {raw}", file=sys.stderr)
    sys.exit(max(run["exit_status"] for run in runs.values()))


if __name__ == "__main__":
    main()
