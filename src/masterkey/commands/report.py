"""masterkey report RUN_DIR... -o OUT"""

from __future__ import annotations

import argparse
import os

from masterkey.commands._common import int_arg, note_written, output_arg

NAME = "report"
ORDER = 10
HELP = "one self-contained HTML page (plus Markdown and PNGs) from fit, discover, swap, train, explain runs"
DESCRIPTION = """Build a report from any mix of run directories (each recognised by the kind in its run.json): key
grids, real filters assigned to each key, layer x key proportion heat-maps, per-key cos² box plots against a random
reference (fit); greedy path and baselines (discover); accuracy bars (swap); training curves (train, experiment);
scale-space and eigen-patch figures (explain). Missing optional files are skipped and listed in the report.

The page reads on a screen and on paper: wide tables scroll sideways on screen and wrap when printed, long tables
and each run's whole config are folded on screen and unfolded in print (no table loses a row, nothing is cut);
accuracies are in %.

OUT is a directory holding report.html (figures embedded, opens offline), report.md and the figures as PNG files;
it is written atomically, with a run.json of kind "report"; --overwrite replaces only an earlier report, and OUT
may be neither one of the RUN_DIRs nor inside or around one.

examples:
  masterkey fit --keys paper8 --resize-keys -o runs/fit && masterkey report runs/fit -o runs/report
  masterkey report runs/fit runs/discover runs/train-c10 runs/explain -o runs/report --overwrite
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (written by masterkey commands with -o)")
    p.add_argument("-o", "--out", type=output_arg, required=True, metavar="OUT", help="output directory")
    p.add_argument("--title", default="masterkey report", help="page title")
    p.add_argument(
        "--samples", type=int_arg(0, 64), default=8, help="real filters shown per key in fit reports (0: none)"
    )
    p.add_argument("--bank", help="bank to read real filters from (default: the bank named in the fit run)")
    p.add_argument(
        "--jobs",
        type=int_arg(1, 64),
        metavar="N",
        help="processes drawing the runs side by side (default: one per CPU core, at most one per run)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")


def run(args: argparse.Namespace) -> int:
    from masterkey.report import build_report
    from masterkey.report.sections import ReportOptions

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    options = ReportOptions(args.samples, args.bank, jobs=args.jobs or cores)
    out = build_report(args.runs, args.out, title=args.title, options=options, overwrite=args.overwrite)
    note_written(out, first=("report.html", "report.md"))  # the file to open first
    return 0
