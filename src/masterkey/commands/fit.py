"""masterkey fit [BANK] --keys KEYS"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from masterkey.commands._common import (
    MAX_CHUNK,
    SEED,
    device_arg,
    format_table,
    int_arg,
    note,
    note_written,
    output_arg,
    print_json,
    progress_enabled,
    resolved_device,
)
from masterkey.files import atomic_directory, check_output, write_json, write_text
from masterkey.runs import write_run_info

if TYPE_CHECKING:
    from masterkey.fit import BankFit

NAME = "fit"
ORDER = 4
HELP = "fit every filter of a bank to its best key (a * key + b) and summarise how well keys explain it"
DESCRIPTION = """Fit every usable filter of a bank to its best key by exact least squares (a * key + b) and summarise
per kernel size, source, stage and layer: the proportion of filters per key and the mean and quantiles of cos²
(the explained fraction of each centred filter), beside the same figures for a random key set of the same size.

examples:
  masterkey fit --keys paper8 --resize-keys                      # the embedded default bank
  masterkey fit banks/mnv2 --keys paper8 --resize-keys --json
  masterkey fit banks/convnexts --keys keys.safetensors -o runs/fit-convnexts
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bank", nargs="?", default="default", metavar="BANK", help="bank directory (default: embedded)")
    p.add_argument(
        "--keys",
        default="paper8",
        metavar="KEYS",
        help="key set: built-in, key file, discover run, DIR:METHOD (default paper8)",
    )
    p.add_argument("--resize-keys", action="store_true", help="centre-crop / zero-pad keys to other kernel sizes")
    p.add_argument("--query", metavar="EXPR", help="fit only the bank rows matching this metadata query")
    p.add_argument(
        "--reference", default="random", choices=("random", "none"), help="'random' (random:K:SEED keys) or 'none'"
    )
    p.add_argument("--reference-seed", type=SEED, default=0, help="seed of the random reference key set")
    p.add_argument("--device", type=device_arg, default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument(
        "--chunk-size", type=int_arg(1, MAX_CHUNK), default=65536, help="filters per matrix product (default 65536)"
    )
    p.add_argument(
        "-o", "--out", type=output_arg, metavar="FITS", help="write per-filter fits and summaries to this directory"
    )
    p.add_argument("--overwrite", action="store_true", help="replace FITS if it exists")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace) -> int:
    from masterkey.bank import default_bank_path, open_bank
    from masterkey.fit import fit_bank, fit_report

    if args.out:
        bank_path = default_bank_path() if args.bank == "default" else args.bank
        check_output(args.out, "fit", overwrite=args.overwrite, inputs=[bank_path, args.keys])
    bank = open_bank(args.bank)
    if args.query:
        bank = bank.query(args.query)
    device = resolved_device(args.device)
    progress = progress_enabled(args)
    fit = fit_bank(
        bank, args.keys, resize=args.resize_keys, chunk_size=args.chunk_size, device=device, progress=progress
    )
    for k in fit.skipped_kernels:
        note(f"skipped the {k}x{k} filters: keys are {fit_kernel(fit)}x{fit_kernel(fit)} (--resize-keys fits them too)")
    reference = None
    if args.reference != "none":
        spec = f"random:{fit.n_keys}:{args.reference_seed}"
        fitted = bank.query(f"kernel_size in {sorted(fit.keysets)}")
        reference = fit_bank(fitted, spec, resize=True, device=device, progress=progress)
    report = fit_report(fit, reference)
    report["bank"] = str(bank.path)
    if args.query:
        report["query"] = args.query
    if args.out:
        write_fit_run(args.out, fit, report, vars(args), overwrite=args.overwrite, inputs=[bank.path, args.keys])
    if args.json:
        print_json(report)
    else:
        print(render_text(report))
    note_written(args.out)
    return 0


def fit_kernel(fit: BankFit) -> int:
    return next(iter(fit.keysets.values())).kernel_size


def write_fit_run(
    out: str | Path,
    fit: BankFit,
    report: dict[str, Any],
    config: dict[str, Any],
    overwrite: bool,
    inputs: list[Any] | None = None,
) -> None:
    """A fit run directory: fits.parquet, summary.json, summary.md, keys_k*.safetensors, run.json."""
    with atomic_directory(out, "fit", overwrite=overwrite, inputs=inputs or []) as tmp:
        fit.table.to_parquet(tmp / "fits.parquet", index=False)
        for k, keyset in fit.keysets.items():
            keyset.save(tmp / f"keys_k{k}.safetensors")
        write_json(tmp / "summary.json", report)
        write_text(tmp / "summary.md", render_markdown(report))
        write_run_info(tmp, "fit", {k: v for k, v in config.items() if not k.startswith("_")})


_SHORT = ["n", "mean_cos2", "q05_cos2", "q50_cos2", "q95_cos2", "ref_mean_cos2", "ref_q50_cos2"]


def _columns(rows: list[dict[str, Any]], first: list[str]) -> list[str]:
    present = rows[0].keys() if rows else []
    return first + [c for c in _SHORT if c in present] + [c for c in present if c.startswith("p_")]


def render_text(report: dict[str, Any]) -> str:
    from masterkey.depthwise import UNKNOWN_STAGE_NOTE, stage_name

    keys = "; ".join(f"{k}x{k}: {v['name']}" for k, v in report["keys"].items())
    excluded = ", ".join(f"{n} {what}" for what, n in report["excluded"].items())
    lines = [
        f"fit of {keys}",
        f"bank {report['bank']}: {report['n_fitted']:,} filters fitted (excluded: {excluded})",
    ]
    if "reference" in report:
        lines.append("reference: " + "; ".join(f"{k}x{k}: {v}" for k, v in report["reference"].items()))
    for title, name, first in (
        ("overall", "overall", []),
        ("by kernel size", "by_kernel", ["kernel_size"]),
        ("by source", "by_source", ["source"]),
        ("by stage", "by_stage", ["stage"]),
    ):
        rows = report[name] if isinstance(report[name], list) else [report[name]]
        if name == "by_stage":
            rows = [{**row, "stage": stage_name(row["stage"])} for row in rows]
        lines += ["", f"{title}:", format_table(rows, _columns(rows, first))]
    if any(str(row.get("stage")) == "-1" for row in report["by_stage"]):
        lines.append(UNKNOWN_STAGE_NOTE)
    return "\n".join(lines)


def render_markdown(report: dict[str, Any]) -> str:
    lines = ["# Fit summary", "", "```", render_text(report), "```", ""]
    rows = report["by_layer"]
    lines += ["## By layer", "", "```", format_table(rows, _columns(rows, ["source", "layer"])), "```", ""]
    return "\n".join(lines)
