"""masterkey fit [BANK] --keys KEYS"""

from __future__ import annotations

import argparse
import sys

from masterkey.commands._common import (
    MAX_CHUNK,
    SEED,
    device_arg,
    int_arg,
    note,
    note_written,
    output_arg,
    print_json,
    progress_enabled,
    query_arg,
    resolved_device,
)
from masterkey.files import check_output

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
    p.add_argument(
        "--query",
        type=query_arg,
        metavar="EXPR",
        help='fit only the bank rows matching this metadata query, e.g. "stage >= 2 and kernel_size == 7" '
        "(columns, comparisons, in [...], and / or / not; see docs/reliability.md)",
    )
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
    from masterkey.fit import fit_bank, fit_kernel, fit_report, render_text, write_fit_run

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
        fitted = bank.select(bank.metadata["kernel_size"].isin(list(fit.keysets)).to_numpy())
        reference = fit_bank(fitted, spec, resize=True, device=device, progress=progress)
    report = fit_report(fit, reference)
    report["bank"] = str(bank.path)
    if args.query:
        report["query"] = args.query
    if args.json:
        print_json(report)
    else:
        print(render_text(report))
    sys.stdout.flush()  # a full or failing stdout stops the command here, before the run is written
    if args.out:
        write_fit_run(args.out, fit, report, vars(args), overwrite=args.overwrite, inputs=[bank.path, args.keys])
    note_written(args.out)
    return 0
