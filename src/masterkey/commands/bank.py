"""masterkey bank info|query|merge|verify"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from masterkey.commands._common import note_written, output_arg, print_json, query_arg
from masterkey.tables import format_table

if TYPE_CHECKING:
    from masterkey.bank import FilterBank

NAME = "bank"
ORDER = 2
HELP = "inspect, query, merge and verify filter banks"
DESCRIPTION = """Inspect, query, merge and verify filter banks. BANK may be 'default' for the embedded bank.

examples:
  masterkey bank info default
  masterkey bank query default "kernel_size == 7 and stage >= 2" -o banks/deep7
  masterkey bank merge banks/a banks/b -o banks/ab
"""


_BANK = "a bank directory, or 'default' for the embedded bank"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="bank_command", metavar="ACTION", required=True)
    info = sub.add_parser(
        "info",
        help="counts, sources, excluded filters",
        description="Counts, sources and excluded filters of BANK: a bank directory, or 'default' (the embedded "
        "bank, used when BANK is left out).",
    )
    info.add_argument("bank", metavar="BANK", nargs="?", default="default", help=_BANK + " (default: default)")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    query = sub.add_parser("query", help="select filters by a query over the metadata")
    query.add_argument("bank", metavar="BANK", help=_BANK)
    query.add_argument(
        "expr",
        type=query_arg,
        metavar="EXPR",
        help="e.g. \"source == 'x' and kernel_size in [3, 5]\": columns, comparisons, in [...], and / or / not "
        "(see docs/reliability.md)",
    )
    query.add_argument("-o", "--out", type=output_arg, metavar="BANK", help="write the selection as a new bank")
    query.add_argument("--overwrite", action="store_true")
    query.add_argument("--json", action="store_true")
    merge = sub.add_parser("merge", help="union of banks (a source present twice is refused)")
    merge.add_argument("banks", nargs="+", metavar="BANK", help=_BANK)
    merge.add_argument("-o", "--out", type=output_arg, required=True, metavar="BANK")
    merge.add_argument("--overwrite", action="store_true")
    merge.add_argument("--json", action="store_true")
    verify = sub.add_parser("verify", help="check every file against the manifest's checksums")
    verify.add_argument("bank", metavar="BANK", help=_BANK)


def print_info(bank: FilterBank, name: str | None = None) -> None:
    info = bank.info()
    counts = ", ".join(f"{k}x{k}: {n:,}" for k, n in ((int(k), n) for k, n in info["counts_by_kernel"].items()))
    label = "default, the embedded bank: " if name == "default" else ""
    print(f"bank {label}{info['path']}  (schema {info['schema_version']}, masterkey {info['package_version']})")
    print(f"{info['n_filters']:,} filters in {info['n_layers']} layers  ({counts})")
    excluded = info["excluded"]
    print(
        f"excluded from fits: {excluded['nonfinite']} non-finite, {excluded['zero']} all-zero, "
        f"{excluded['constant']} constant"
    )
    rows = [
        {
            "source": s["name"],
            "kind": s["kind"],
            "model": s["model"] or "",
            "layers": s["n_layers"],
            "filters": s["n_filters"],
            "kernels": " ".join(f"{k}x{k}:{n}" for k, n in s["counts_by_kernel"].items()),
            "sha256": (s["sha256"] or "")[:12],
        }
        for s in info["sources"]
    ]
    print(format_table(rows))
    skipped = sum(len(s["skipped"]) for s in info["sources"])
    if skipped:
        print(f"{skipped} layers skipped (1x1 or non-square); see --json")


def run(args: argparse.Namespace) -> int:
    from masterkey.bank import FilterBank, open_bank

    if args.bank_command == "info":
        bank = open_bank(args.bank)
        print_json(bank.info()) if args.json else print_info(bank, args.bank)
    elif args.bank_command == "query":
        bank = open_bank(args.bank).query(args.expr)
        if args.out:
            bank = bank.save(args.out, overwrite=args.overwrite)
        print_json(bank.info()) if args.json else print_info(bank)
        note_written(args.out)
    elif args.bank_command == "merge":
        merged = FilterBank.merge([open_bank(b) for b in args.banks], args.out, overwrite=args.overwrite)
        print_json(merged.info()) if args.json else print_info(merged)
        note_written(args.out)
    elif args.bank_command == "verify":
        bank = FilterBank.open(args.bank if args.bank != "default" else open_bank(None).path, verify=True)
        print(f"{bank.path}: ok ({len(bank):,} filters, every checksum matches the manifest)")
    return 0
