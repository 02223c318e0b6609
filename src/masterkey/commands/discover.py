"""masterkey discover [BANK] [-k K] [--protocol masterkey|paper] [--objective variance|accuracy ...] -o OUT"""

from __future__ import annotations

import argparse

from masterkey.commands._common import (
    BATCH,
    IMAGES,
    MAX_IMAGES,
    MAX_KERNEL_SIZE,
    MAX_KEYS,
    MAX_STEPS,
    SEED,
    SEEDS,
    THREADS,
    add_data_mode_arguments,
    device_arg,
    float_arg,
    int_arg,
    int_list_arg,
    note,
    output_arg,
    print_json,
    query_arg,
)

NAME = "discover"
ORDER = 5
HELP = "discover key sets: 1-D-latent autoencoder -> candidates -> greedy reduction, with baselines (the main job)"
DESCRIPTION = """Discover K master keys from a filter bank, one kernel size at a time (docs/discover.md):

  1. train an autoencoder whose latent is one number in [0, 1] on the bank's centred unit-norm filters
     (sign-invariant: a filter and its negative are the same filter; every source weighs the same); the
     kernel sizes' autoencoders train together, each until its candidates stop improving;
  2. decode evenly spaced latents (--candidates, default 50) into candidate keys, near-duplicates removed;
  3. remove candidates greedily, each time the one whose removal hurts the objective least, recording the whole
     path (set size vs objective) and its elbow; a second round resamples latents around the best 10 and repeats;
  4. score baselines on the same bank with the same objective: spherical sign-invariant k-means, PCA, random
     (10 seeds, 95% CI), impulse, paper8 (centre-cropped for smaller kernels), and the upper bound where each
     filter is a least-squares mix of all K keys.

--protocol paper runs the pipeline as the paper describes it instead: a plain autoencoder (no sign symmetry, ReLU,
loss 1 - cos, no latent-spread term), filters sampled uniformly, latents over [0, 1], no de-duplication, the keys
at the elbow of the second round's path. docs/discover.md lists every difference and its measured effect.

Objectives: 'variance' (data-free, default): mean explained variance (cos²) of the bank's filters under their best
single-key fits, each source weighted equally. 'accuracy': top-1 of a model (--weights) on a held-out split of
its TRAINING data (--data, --held-out; never the test split) after swapping every depthwise filter for its best fit.

With no arguments, `masterkey` runs this on the embedded default bank (3x3, 5x5, 7x7 filters of 7 real models)
and writes masterkey-runs/discover (or discover-2, -3 ... if that exists). An interrupted run resumes from its
checkpoint (.<OUT>.checkpoint beside OUT) when run again with the same options.

examples:
  masterkey discover                                        # the main job: default bank, K=8, every kernel size
  masterkey discover --kernel-size 7 -k 8 -o runs/k7
  masterkey discover --protocol paper --kernel-size 7 -o runs/paper7
  masterkey discover banks/convnexts -k 8 --universality -o runs/convnexts
  masterkey discover --kernel-size 7 --objective accuracy \\
      --weights ../shared/models/cifar10-convnext/convnext_atto_s0_e20.safetensors \\
      --data ../shared/data/cifar10/train --held-out 5000 --device cuda -o runs/acc
  masterkey fit --keys runs/k7/keys.safetensors             # use the discovered keys elsewhere
"""

#: Candidates decoded per round (the greedy reduction costs grow with their square).
MAX_CANDIDATES = 1_000


def _str_list(text: str) -> tuple[str, ...]:
    return tuple(x for x in text.replace(" ", "").split(",") if x)


def _held_out(text: str) -> float | int:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an image count or a fraction in (0, 1), got {text!r}") from None
    if 0 < value < 1:
        return value
    if value.is_integer() and 1 <= value <= MAX_IMAGES:
        return int(value)
    raise argparse.ArgumentTypeError(
        f"expected an image count (1 to {MAX_IMAGES:,}) or a fraction in (0, 1), got {text!r}"
    )


class _RenamedKeysOption(argparse.Action):
    """``--keys`` names a key set in every other command; here the count is ``-k/--n-keys``: say so in one line."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: object, values: object, option: object = None):
        raise argparse.ArgumentError(
            self, "in discover the number of keys is -k/--n-keys (--keys names a key set in the other commands)"
        )


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``masterkey discover`` (one per field of the stage's job and configuration), in the order
    ``--help`` shows them. Options the paper's protocol changes have no argparse default: the protocol supplies it.
    """
    from masterkey.discover.settings import BASELINES, KMEANS_SAMPLE, PAPER_AUTOENCODER, AutoencoderConfig

    ae, paper = AutoencoderConfig(), {**PAPER_AUTOENCODER, "symmetric": "plain"}
    add = p.add_argument
    add("bank", nargs="?", default="default", metavar="BANK", help="bank directory (default: embedded)")
    add("-k", "--n-keys", type=int_arg(1, MAX_CANDIDATES), default=8, metavar="K", help="keys to keep (default 8)")
    add("--keys", nargs="?", action=_RenamedKeysOption, help=argparse.SUPPRESS)
    add("--kernel-size", type=int_list_arg(2, MAX_KERNEL_SIZE), metavar="K1,K2", help="kernel sizes (default: all)")
    add("--query", type=query_arg, metavar="EXPR", help="use only the bank rows matching this metadata query")
    add("--protocol", choices=("masterkey", "paper"), help="masterkey (default) or the paper's pipeline (see above)")
    add("--objective", choices=("variance", "accuracy"), help="greedy objective (default variance)")
    g = p.add_argument_group("accuracy objective")
    g.add_argument("--model", metavar="NAME", help="timm / torchvision name (optional when --weights names its arch)")
    g.add_argument("--weights", metavar="FILE", help="the model's weights (safetensors or state_dict)")
    g.add_argument("--data", metavar="DIR", help="ImageFolder of the model's TRAINING data (a split is held out)")
    g.add_argument("--held-out", type=_held_out, default=5000, metavar="N", help="held-out images (or fraction < 1)")
    g.add_argument("--max-per-class", type=IMAGES, metavar="N", help="read only the first N images of each class")
    g.add_argument("--split-seed", type=SEED, default=0, help="seed of the stratified held-out split")
    g.add_argument("--batch-size", type=BATCH, default=256, help="evaluation batch size")
    add_data_mode_arguments(g, workers=False)
    d = p.add_argument_group("discovery (paper: the value --protocol paper uses)")
    d.add_argument(
        "--candidates", type=int_arg(2, MAX_CANDIDATES), default=50, help="latents decoded per round (default 50)"
    )
    d.add_argument("--rounds", type=int, choices=(1, 2), default=2, help="2 adds the paper's second round")
    d.add_argument(
        "--spacing", choices=("range", "unit", "quantile"), help="latent spacing (default range; paper unit)"
    )
    d.add_argument(
        "--dedupe",
        type=float_arg(0, 1),
        metavar="COS",
        help="|cos| of duplicate candidates (default 0.995; paper 0: off)",
    )
    d.add_argument(
        "--path-to",
        type=int_arg(1, MAX_CANDIDATES),
        default=1,
        metavar="N",
        help="greedy path down to N keys (default 1)",
    )
    d.add_argument(
        "--weighting", choices=("source", "filter"), help="what counts equally (default source; paper filter)"
    )
    d.add_argument(
        "--stop", choices=("k", "elbow"), help="keys: the set of K, or at the elbow (default k; paper elbow)"
    )
    d.add_argument(
        "--keep-round", choices=("best", "last"), help="round kept: best at K or last (default best; paper last)"
    )
    d.add_argument("--order", choices=("share", "path"), help="order of the keys (default share; paper path)")
    d.add_argument("--seed", type=SEED, default=0, help="seed of the autoencoder and k-means")
    d.add_argument(
        "--ae-steps", type=int_arg(1, MAX_STEPS), default=ae.steps, help=f"autoencoder steps (default {ae.steps})"
    )
    d.add_argument(
        "--ae-hidden", type=int_arg(1, 4096), default=ae.hidden, help=f"autoencoder width (default {ae.hidden})"
    )
    d.add_argument("--ae-batch", type=BATCH, default=ae.batch_size, help=f"autoencoder batch (default {ae.batch_size})")
    d.add_argument(
        "--ae-lr", type=float_arg(0, 10, open_low=True), default=ae.lr, help=f"autoencoder peak lr (default {ae.lr})"
    )
    d.add_argument(
        "--loss",
        choices=("cosine", "mse", "signed-cosine"),
        help=f"reconstruction loss (default cosine; paper {paper['loss']})",
    )
    d.add_argument("--spread", type=float_arg(0, 1000), help="uniform-latent term (default 1; paper 0: off)")
    d.add_argument("--encoder", choices=("symmetric", "plain"), help="first layer (default symmetric; paper plain)")
    d.add_argument(
        "--activation", choices=("silu", "relu"), help=f"hidden activation (default silu; paper {paper['activation']})"
    )
    b = p.add_argument_group("comparison")
    b.add_argument(
        "--baselines", type=_str_list, default=BASELINES, metavar="LIST", help=f"default {','.join(BASELINES)}"
    )
    b.add_argument("--compare-k", type=int_list_arg(1, MAX_KEYS), metavar="LIST", help="sizes (default 1,2,4,8,16; K)")
    b.add_argument("--random-seeds", type=SEEDS, default=10, help="seeds of the random baseline")
    b.add_argument(
        "--kmeans-sample", type=int_arg(1, MAX_IMAGES), default=KMEANS_SAMPLE, metavar="N",
        help=f"k-means learns on a seeded sample of at most N filters (default {KMEANS_SAMPLE})",
    )  # fmt: skip
    b.add_argument("--universality", action="store_true", help="add the leave-one-source-out table (slower)")
    add("--device", type=device_arg, default="cpu", help="cpu, cuda, cuda:N or auto")
    add("--threads", type=THREADS, default=1, metavar="N", help="torch CPU threads (default 1, see docs)")
    add("-o", "--out", type=output_arg, metavar="OUT", help="run directory (default masterkey-runs/discover, -2 ...)")
    add("--overwrite", action="store_true", help="replace OUT if it exists")
    add("--no-resume", action="store_true", help="ignore (and delete) a checkpoint of an earlier run")
    add("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace) -> int:
    from masterkey.commands._common import note_written, progress_enabled, resolved_device
    from masterkey.discover.output import run_text, strict_summary
    from masterkey.discover.run import DiscoverJob, run_discover

    options = {k: v for k, v in vars(args).items() if k not in ("keys", "progress")}
    options.update(device=resolved_device(args.device), progress=progress_enabled(args))
    result = run_discover(DiscoverJob.from_options(options))
    if args.json:
        print_json(strict_summary(result))
    else:
        print(run_text(result.discoveries))
        for line in (f"{k}x{k}: {n}" for k, d in result.discoveries.items() for n in d.notes):
            note(line)
        note(f"finished in {result.seconds:.1f} s")
    note_written(result.out)
    return 0
