"""masterkey keys list|show|convert"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from masterkey.commands._common import KERNEL_SIZE, note_written, output_arg, print_json
from masterkey.files import check_output, output_file
from masterkey.tables import format_table

if TYPE_CHECKING:
    from masterkey.keys import KeySet, KeyValues

NAME = "keys"
ORDER = 3
HELP = "list built-in key sets, show (print or draw) or convert key sets"
DESCRIPTION = """Key sets are built-ins (paper8, random:K[:SEED], impulse, scalespace8), files (.safetensors, or the
text format 'Filter N:' followed by k rows of k numbers), discover run directories (their keys; a run with several
kernel sizes gives its largest unless --kernel-size picks one) or DIR:METHOD (a run's baseline keys, e.g. DIR:kmeans).
'show --png FILE' draws the keys as a grid on one shared symmetric colour scale (with a colour bar), titled with
their labels and, for discovered keys, captioned with the share of filters each explains.

examples:
  masterkey keys list
  masterkey keys show paper8 --kernel-size 3 --resize-keys
  masterkey keys show runs/discover --png discovered.png
  masterkey keys show runs/discover:kmeans --kernel-size 3 --png kmeans3.png
  masterkey keys convert my_keys.txt -o my_keys.safetensors
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    sub.add_parser("list", help="built-in key sets")
    for name, help in (("show", "print a key set's values"), ("convert", "save a key set as a file")):
        q = sub.add_parser(name, help=help)
        q.add_argument("keys", metavar="KEYS")
        q.add_argument("--kernel-size", type=KERNEL_SIZE, help="make / resize the keys to this size (2 to 63)")
        q.add_argument("--resize-keys", action="store_true", help="allow centre crop / zero pad")
        if name == "show":
            q.add_argument("--json", action="store_true")
            q.add_argument("--png", type=output_arg, metavar="FILE", help="also draw the keys into this PNG file")
            q.add_argument("--overwrite", action="store_true", help="replace FILE if it is a figure masterkey wrote")
        else:
            q.add_argument(
                "-o", "--out", type=output_arg, required=True, help=".safetensors or text (any other suffix)"
            )
            q.add_argument("--overwrite", action="store_true", help="replace OUT if it is a key file masterkey wrote")


def run(args: argparse.Namespace) -> int:
    from masterkey.keys import builtin_keysets, load_key_values, load_keys

    if args.keys_command == "list":
        print(format_table([{"name": n, "what": h} for n, h in builtin_keysets().items()]))
        return 0
    if args.keys_command == "convert":
        check_output(args.out, "keys", overwrite=args.overwrite, inputs=[args.keys])
    png = getattr(args, "png", None)
    if png is not None:
        from masterkey.errors import MasterkeyError

        if not png.lower().endswith(".png"):
            raise MasterkeyError(f"--png {png}: expected a file name ending in .png")
        check_output(png, "figure", overwrite=args.overwrite, inputs=[args.keys])
    # show prints and draws numbers read without torch (numpy KeyValues); convert goes through the KeySet.
    load = load_key_values if args.keys_command == "show" else load_keys
    keyset = load(args.keys, kernel_size=args.kernel_size, resize=args.resize_keys)
    if png is not None:
        write_keys_png(keyset, png, overwrite=args.overwrite, inputs=[args.keys])
    if args.keys_command == "convert":
        binary = args.out.endswith(".safetensors")
        with output_file(
            args.out, "keys", overwrite=args.overwrite, inputs=[args.keys], mode="wb" if binary else "w"
        ) as f:
            f.write(keyset.to_bytes() if binary else keyset.to_text())
        print(keyset)
        note_written(args.out)
    elif args.json:
        print_json(
            {
                "name": keyset.name,
                "kernel_size": keyset.kernel_size,
                "labels": keyset.key_labels(),
                "provenance": keyset.provenance,
                "keys": keyset.keys.tolist(),
            }
        )
    else:
        print(f"{keyset}  {keyset.provenance}")
        for label, key in zip(keyset.key_labels(), keyset.keys, strict=True):
            print(f"key {label}:")
            for row in key.tolist():
                print("  " + " ".join(f"{v:+.3f}" for v in row))
    if png is not None:
        note_written(png)
    return 0


def write_keys_png(
    keyset: KeySet | KeyValues, path: str, *, overwrite: bool = False, inputs: list[str] | None = None
) -> None:
    """Draw ``keyset`` (:func:`~masterkey.plots.filters.keyset_figure`) into the PNG ``path``, atomically and
    under the output rule; the PNG says masterkey wrote it, so ``--overwrite`` may replace it later. Draws from
    numpy values: a :class:`~masterkey.keys.KeyValues` needs no torch."""
    from masterkey.files import FIGURE_SOFTWARE
    from masterkey.plots.filters import keyset_figure
    from masterkey.plots.style import figure_png

    data = figure_png(keyset_figure(keyset), metadata={"Software": f"{FIGURE_SOFTWARE} keys show"})
    with output_file(path, "figure", overwrite=overwrite, inputs=inputs or []) as f:
        f.write(data)
