"""masterkey keys list|show|convert"""

from __future__ import annotations

import argparse

from masterkey.commands._common import KERNEL_SIZE, format_table, note_written, output_arg, print_json
from masterkey.files import check_output, output_file

NAME = "keys"
ORDER = 3
HELP = "list built-in key sets, show or convert key files"
DESCRIPTION = """Key sets are built-ins (paper8, random:K[:SEED], impulse, scalespace8) or files (.safetensors, or the
text format 'Filter N:' followed by k rows of k numbers).

examples:
  masterkey keys list
  masterkey keys show paper8 --kernel-size 3 --resize-keys
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
    # show prints numbers only, read without torch (numpy KeyValues); convert writes files through the KeySet.
    load = load_key_values if args.keys_command == "show" else load_keys
    keyset = load(args.keys, kernel_size=args.kernel_size, resize=args.resize_keys)
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
    return 0
