"""masterkey explain [KEYS] -o OUT"""

from __future__ import annotations

import argparse
import shlex

from masterkey.commands._common import (
    SEED,
    SEEDS,
    float_arg,
    int_arg,
    note_written,
    output_arg,
    print_json,
    progress_enabled,
)
from masterkey.tables import format_table

#: Patch values held for the PCA (patches x k x k); 2^27 float64 values are 1 GiB.
MAX_PATCH_VALUES = 1 << 27

NAME = "explain"
ORDER = 9
HELP = "explain keys: scale-space models, eigen-patches of natural images, patch-by-patch reconstruction"
DESCRIPTION = """Explain a key set three ways:

  1. scale-space models: least-squares fits of discrete Gaussian kernels T(n; σ) = e^{-σ²} I_n(σ²), their one-sided
     and centred differences, Laplacian and Gaussian minus γ·Laplacian, with the cosine to each key;
  2. eigen-patches: PCA of Gaussian-windowed k x k patches of natural images (the images shipped with
     scikit-image / scikit-learn, or any image folder), with each key's closest eigen-patch beside the same figure
     for random key sets of equal size;
  3. reconstruction: every image tiled into k x k patches, each fitted by least squares with the keys plus a
     constant, against random keys, the keys' scale-space models and the optimal PCA basis of the same size.

With -o it writes an "explain" run directory (tables, figures, summary.md) that `masterkey report` renders.

examples:
  masterkey explain                                   # paper8 on the built-in natural images
  masterkey explain scalespace8 -o runs/explain-ss8
  masterkey explain keys.safetensors --images ../shared/data/imagenet-samples/val --max-images 100 -o runs/ex
  masterkey explain paper8 --images camera,astronaut --json
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "keys",
        nargs="?",
        default="paper8",
        metavar="KEYS",
        help="key set: built-in, key file, discover run directory or DIR:METHOD (default paper8)",
    )
    p.add_argument(
        "--images",
        default="builtin",
        help="'builtin' (camera, astronaut, coffee, chelsea, rocket, china, flower), comma-separated built-in names "
        "(also grass, gravel, brick, moon, coins, ...), an image file, or an image folder (searched recursively)",
    )
    p.add_argument(
        "--max-images",
        type=int_arg(1, 100_000),
        default=64,
        help="images read from a folder (evenly spaced; default 64)",
    )
    p.add_argument(
        "--family",
        default=None,
        help="scale-space family for every key ('auto' = best of all); default: from the key labels, else auto",
    )
    p.add_argument(
        "--components",
        type=int_arg(1, 63 * 63),
        help="eigen-patches computed (default 16, or k*k for smaller k x k keys, e.g. 9 for 3x3)",
    )
    p.add_argument(
        "--window-sigma",
        type=float_arg(0, 1000, open_low=True),
        default=1.0,
        help="σ of the Gaussian patch window in pixels (1.0)",
    )
    p.add_argument("--stride", type=int_arg(1, 1024), default=2, help="patch stride for the PCA (default 2)")
    p.add_argument(
        "--max-patches", type=int_arg(1, 10_000_000), default=200_000, help="patches drawn for the PCA (default 200000)"
    )
    p.add_argument("--seeds", type=SEEDS, default=10, help="random key sets in the references (default 10)")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the patch sample")
    p.add_argument("-o", "--out", type=output_arg, metavar="OUT", help="write an explain run directory here")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def _command_line() -> str | None:
    """The command line, when run as the ``masterkey`` script (not when called from Python)."""
    from masterkey.runs import command_argv

    argv = command_argv()
    return shlex.join(argv) if argv and argv[0] == "masterkey" else None


def run(args: argparse.Namespace) -> int:
    from masterkey.errors import MasterkeyError
    from masterkey.explain.eigenpatches import summarize_reconstruction
    from masterkey.explain.run import degenerate_reconstruction, explain_keys, write_explain_run
    from masterkey.files import check_output
    from masterkey.keys import load_keys
    from masterkey.scalespace import BOUND_NOTE

    if args.out:
        check_output(args.out, "explain", overwrite=args.overwrite, inputs=[args.keys, args.images])
    keys = load_keys(args.keys)
    if args.components is None:
        args.components = min(16, keys.kernel_size**2)
    if args.components > keys.kernel_size**2:
        raise MasterkeyError(
            f"--components {args.components}: {keys.kernel_size}x{keys.kernel_size} patches have at most "
            f"{keys.kernel_size**2} principal components"
        )
    if args.max_patches * keys.kernel_size**2 > MAX_PATCH_VALUES:
        raise MasterkeyError(
            f"--max-patches {args.max_patches:,}: {keys.kernel_size}x{keys.kernel_size} patches would hold "
            f"{args.max_patches * keys.kernel_size**2:,} values, at most {MAX_PATCH_VALUES:,}; ask for fewer"
        )
    families = [args.family] * len(keys) if args.family else None
    expl = explain_keys(
        keys,
        images=args.images,
        families=families,
        n_components=args.components,
        window_sigma=args.window_sigma,
        stride=args.stride,
        max_patches=args.max_patches,
        max_images=args.max_images,
        seeds=range(args.seeds),
        seed=args.seed,
        progress=progress_enabled(args),
    )
    if args.out:
        skip = {"json", "overwrite", "command"}
        config = {k: v for k, v in vars(args).items() if not k.startswith("_") and k not in skip}
        write_explain_run(
            expl, args.out, config, overwrite=args.overwrite, command=_command_line(), progress=progress_enabled(args)
        )
    summary = expl.summary()
    if args.json:
        print_json(
            {
                **summary,
                "scalespace": expl.scalespace.to_dict(orient="records"),
                "eigenpatches": expl.eigen_table.to_dict(orient="records"),
            }
        )
        note_written(args.out)
        return 0
    print(f"scale-space models of {keys.name} (least squares; cosine of centred key and model):")
    print(format_table(expl.scalespace.to_dict(orient="records")))
    if summary["scalespace_at_bound"]:
        print(BOUND_NOTE)
    print(
        f"\neigen-patches: PCA of {expl.eigen.n_patches:,} windowed patches of {len(expl.images)} images; "
        f"mean best |cos| {summary['eigen_mean_best_abs_cos']:.3f} "
        f"(random keys {summary['random_mean_best_abs_cos']:.3f} ± {summary['random_mean_best_abs_cos_ci95']:.3f})"
    )
    print(format_table(expl.eigen_table.to_dict(orient="records")))
    print("\npatch-by-patch reconstruction (explained within-patch variance, mean over images):")
    print(format_table(summarize_reconstruction(expl.reconstruction).to_dict(orient="records")))
    if degenerate_reconstruction(keys):
        print(f"{degenerate_reconstruction(keys)}.")
    note_written(args.out)
    return 0
