"""masterkey discover [BANK] [-k K] [--objective variance|accuracy ...] -o OUT"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

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
)
from masterkey.errors import MasterkeyError

NAME = "discover"
ORDER = 5
HELP = "discover key sets: 1-D-latent autoencoder -> candidates -> greedy reduction, with baselines (the main job)"
DESCRIPTION = """Discover K master keys from a filter bank, one kernel size at a time (docs/design.md, pipeline step 3):

  1. train an autoencoder whose latent is one number in [0, 1] on the bank's centred unit-norm filters
     (sign-invariant: a filter and its negative are the same filter; every source weighs the same);
  2. decode evenly spaced latents (--candidates, default 50) into candidate keys, near-duplicates removed;
  3. remove candidates greedily, each time the one whose removal hurts the objective least, recording the whole
     path (set size vs objective) and its elbow; a second round resamples latents around the best 10 and repeats;
  4. score baselines on the same bank with the same objective: spherical sign-invariant k-means, PCA, random
     (10 seeds, 95% CI), impulse, paper8 (centre-cropped for smaller kernels), and the upper bound where each
     filter is a least-squares mix of all K keys.

Banks of millions of filters work: every pass over the filters is chunked (memory holds the filters once), and
k-means learns its keys on a seeded sample of --kmeans-sample filters (drawn with the objective's weights), then
polishes and scores them on all filters; the output says when it sampled. --device cuda runs every stage on the GPU.

Objectives: 'variance' (data-free, default): mean explained variance (cos²) of the bank's filters under their best
single-key fits, each source weighted equally. 'accuracy': top-1 of a model (--weights) on a held-out split of
its TRAINING data (--data, --held-out; never the test split) after swapping every depthwise filter for its best fit.

With no arguments, `masterkey` runs this on the embedded default bank (3x3, 5x5, 7x7 filters of 7 real models)
and writes masterkey-runs/discover (or discover-2, -3 ... if that exists). An interrupted run resumes from its
checkpoint (.<OUT>.checkpoint beside OUT) when run again with the same options.

examples:
  masterkey discover                                        # the main job: default bank, K=8, every kernel size
  masterkey discover --kernel-size 7 -k 8 -o runs/k7
  masterkey discover banks/convnexts -k 8 --universality -o runs/convnexts
  masterkey discover --kernel-size 7 --objective accuracy \\
      --weights ../shared/models/cifar10-convnext/convnext_atto_s0_e20.safetensors \\
      --data ../shared/data/cifar10/train --held-out 5000 --device cuda -o runs/acc
  masterkey fit --keys runs/k7/keys.safetensors             # use the discovered keys elsewhere
"""

DEFAULT_OUT = Path("masterkey-runs") / "discover"
_TEST_SPLITS = {"test", "tests", "testing"}


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
    """The options of ``masterkey discover``, in the order ``--help`` shows them. Longer than 100 lines because it
    is one flat list of ``add_argument`` calls (one per option of :class:`DiscoverConfig` and of the run), which
    reads best in one place."""
    from masterkey.discover.settings import BASELINES, KMEANS_SAMPLE, AutoencoderConfig

    p.add_argument("bank", nargs="?", default="default", metavar="BANK", help="bank directory (default: embedded)")
    p.add_argument(
        "-k",
        "--n-keys",
        dest="n_keys",
        type=int_arg(1, MAX_CANDIDATES),
        default=8,
        metavar="K",
        help="keys to keep (default 8)",
    )
    p.add_argument("--keys", nargs="?", action=_RenamedKeysOption, help=argparse.SUPPRESS)
    p.add_argument(
        "--kernel-size",
        type=int_list_arg(2, MAX_KERNEL_SIZE),
        metavar="K1,K2",
        help="kernel sizes to discover (default: all)",
    )
    p.add_argument("--query", metavar="EXPR", help="use only the bank rows matching this metadata query")
    p.add_argument("--objective", choices=("variance", "accuracy"), default="variance", help="greedy objective")
    g = p.add_argument_group("accuracy objective")
    g.add_argument("--model", metavar="NAME", help="timm / torchvision name (optional when --weights names its arch)")
    g.add_argument("--weights", metavar="FILE", help="the model's weights (safetensors or state_dict)")
    g.add_argument("--data", metavar="DIR", help="ImageFolder of the model's TRAINING data (a split is held out)")
    g.add_argument(
        "--held-out", type=_held_out, default=5000, metavar="N", help="held-out images (count, or fraction < 1)"
    )
    g.add_argument("--max-per-class", type=IMAGES, metavar="N", help="read only the first N images of each class")
    g.add_argument("--split-seed", type=SEED, default=0, help="seed of the stratified held-out split")
    g.add_argument("--batch-size", type=BATCH, default=256, help="evaluation batch size")
    add_data_mode_arguments(g, workers=False)
    d = p.add_argument_group("discovery")
    d.add_argument(
        "--candidates", type=int_arg(2, MAX_CANDIDATES), default=50, help="latents decoded per round (default 50)"
    )
    d.add_argument("--rounds", type=int, choices=(1, 2), default=2, help="2 adds the paper's second round")
    d.add_argument("--spacing", choices=("range", "unit", "quantile"), default="range", help="latent spacing")
    d.add_argument(
        "--dedupe",
        type=float_arg(0, 1, open_low=True),
        default=0.995,
        help="|cos| at which candidates count as duplicates",
    )
    d.add_argument(
        "--path-to",
        type=int_arg(1, MAX_CANDIDATES),
        default=1,
        metavar="N",
        help="continue the greedy path down to N keys",
    )
    d.add_argument("--weighting", choices=("source", "filter"), default="source", help="what counts equally")
    d.add_argument("--seed", type=SEED, default=0, help="seed of the autoencoder and k-means")
    ae = AutoencoderConfig()
    d.add_argument(
        "--ae-steps",
        type=int_arg(1, MAX_STEPS),
        default=ae.steps,
        help=f"autoencoder training steps (default {ae.steps})",
    )
    d.add_argument(
        "--ae-hidden", type=int_arg(1, 4096), default=ae.hidden, help=f"autoencoder width (default {ae.hidden})"
    )
    d.add_argument("--ae-batch", type=BATCH, default=ae.batch_size, help=f"autoencoder batch (default {ae.batch_size})")
    d.add_argument(
        "--ae-lr",
        type=float_arg(0, 10, open_low=True),
        default=ae.lr,
        help=f"autoencoder peak learning rate (default {ae.lr})",
    )
    d.add_argument("--loss", choices=("cosine", "mse"), default="cosine", help="sign-invariant reconstruction loss")
    d.add_argument("--spread", type=float_arg(0, 1000), default=1.0, help="weight of the uniform-latent term (0: off)")
    b = p.add_argument_group("comparison")
    b.add_argument(
        "--baselines", type=_str_list, default=BASELINES, metavar="LIST", help=f"default {','.join(BASELINES)}"
    )
    b.add_argument(
        "--compare-k", type=int_list_arg(1, MAX_KEYS), metavar="LIST", help="set sizes compared (default 1,2,4,8,16; K)"
    )
    b.add_argument("--random-seeds", type=SEEDS, default=10, help="seeds of the random baseline")
    b.add_argument(
        "--kmeans-sample",
        type=int_arg(1, MAX_IMAGES),
        default=KMEANS_SAMPLE,
        metavar="N",
        help=f"k-means learns on a seeded sample of at most N filters (default {KMEANS_SAMPLE})",
    )
    b.add_argument("--universality", action="store_true", help="add the leave-one-source-out table (slower)")
    p.add_argument("--device", type=device_arg, default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--threads", type=THREADS, default=1, metavar="N", help="torch CPU threads (default 1, see docs)")
    p.add_argument(
        "-o",
        "--out",
        type=output_arg,
        metavar="OUT",
        help=f"run directory (default {DEFAULT_OUT}, -2, -3 ... if taken)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--no-resume", action="store_true", help="ignore (and delete) a checkpoint of an earlier run")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def default_out(base: Path = DEFAULT_OUT) -> Path:
    """``base`` if free, else ``base-2``, ``base-3`` ... (a directory being written counts as taken)."""
    candidate, n = base, 2
    while candidate.exists():
        candidate, n = base.with_name(f"{base.name}-{n}"), n + 1
    return candidate


def _accuracy_setup(args: argparse.Namespace) -> Any:
    from masterkey.data.evaluate import check_class_count
    from masterkey.data.memory import ImageSet
    from masterkey.data.preprocessing import preprocessing_for
    from masterkey.data.selection import load_eval_images, stratified_split
    from masterkey.discover import AccuracySetup
    from masterkey.networks.models import create_model, read_state_dict

    if not args.weights:
        raise MasterkeyError("--objective accuracy needs --weights FILE (and --model NAME if the file names no arch)")
    if not args.data:
        raise MasterkeyError("--objective accuracy needs --data DIR, an ImageFolder of the model's training data")
    data = Path(args.data)
    if data.name.lower() in _TEST_SPLITS:
        raise MasterkeyError(
            f"--data {data}: looks like a test split; keys must be selected on a held-out split of TRAINING data "
            "(e.g. .../cifar10/train), never on the numbers they are judged by"
        )
    model = create_model(args.model, weights=args.weights)
    metadata = read_state_dict(args.weights)[1] if str(args.weights).endswith(".safetensors") else {}
    prep = preprocessing_for(model, metadata)
    images = load_eval_images(
        data, prep, max_per_class=args.max_per_class, data_mode=args.data_mode, memory_budget=args.memory_budget
    )
    check_class_count(model, images, prep)  # the check swap makes: foreign classes are refused, not scored
    _, held = stratified_split(images.labels, args.held_out, seed=args.split_seed)
    description = {
        "model": args.model or metadata.get("arch"),
        "weights": str(args.weights),
        "data": str(data),
        "held_out": len(held),
        "of_images": len(images),
        "split_seed": args.split_seed,
        "max_per_class": args.max_per_class,
        "data_mode": "memory" if isinstance(images, ImageSet) else "stream",
    }
    return AccuracySetup(model, images.subset(held), prep, args.batch_size, description)


def run(args: argparse.Namespace) -> int:
    from masterkey.bank import default_bank_path, open_bank
    from masterkey.commands._common import note_written, progress_enabled, resolved_device
    from masterkey.depthwise import find_depthwise
    from masterkey.discover import AutoencoderConfig, DiscoverConfig, discover_bank, write_discover_run
    from masterkey.discover.output import comparison_text
    from masterkey.files import check_output, missing_parents, remove_empty_folders

    started = time.perf_counter()
    device = resolved_device(args.device)
    out = Path(args.out) if args.out else default_out()
    bank_path = default_bank_path() if args.bank == "default" else args.bank
    inputs = [bank_path, args.weights, args.data]
    check_output(out, "discover", overwrite=args.overwrite, inputs=inputs)
    bank = open_bank(args.bank)
    if args.query:
        bank = bank.query(args.query)
    accuracy = _accuracy_setup(args) if args.objective == "accuracy" else None
    kernel_sizes = list(args.kernel_size) if args.kernel_size else None
    if accuracy is not None and kernel_sizes is None:
        model_sizes = sorted({dw.kernel_size[0] for dw in find_depthwise(accuracy.model)})
        kernel_sizes = [k for k in model_sizes if k in bank.kernel_sizes]
        if not kernel_sizes:
            raise MasterkeyError(
                f"the model's depthwise kernel sizes {model_sizes} do not occur in {bank.path} "
                f"(it holds {bank.kernel_sizes})"
            )
    compare = args.compare_k or ((args.n_keys,) if accuracy is not None else (1, 2, 4, 8, 16))
    config = DiscoverConfig(
        n_keys=args.n_keys,
        n_candidates=args.candidates,
        spacing=args.spacing,
        dedupe=args.dedupe,
        rounds=args.rounds,
        floor=args.path_to,
        weighting=args.weighting,
        compare_k=tuple(compare),
        baselines=tuple(args.baselines),
        random_seeds=args.random_seeds,
        kmeans_sample=args.kmeans_sample,
        seed=args.seed,
        cpu_threads=args.threads,
        autoencoder=AutoencoderConfig(
            hidden=args.ae_hidden,
            steps=args.ae_steps,
            batch_size=args.ae_batch,
            lr=args.ae_lr,
            loss=args.loss,
            spread=args.spread,
            seed=args.seed,
        ),
    )
    checkpoint_dir = out.with_name(f".{out.name}.checkpoint")
    if args.no_resume and checkpoint_dir.exists():
        shutil.rmtree(checkpoint_dir)
    created = missing_parents(out)
    try:
        discoveries = discover_bank(
            bank,
            kernel_sizes,
            config,
            accuracy=accuracy,
            universality=args.universality,
            device=device,
            checkpoint_dir=checkpoint_dir,
            progress=progress_enabled(args),
        )
        run_config = {k: v for k, v in vars(args).items() if not k.startswith("_")}
        run_config.update(out=str(out), discover=config.to_dict(), kernel_sizes=list(discoveries))
        write_discover_run(
            out, discoveries, run_config, str(bank.path), overwrite=args.overwrite, progress=progress_enabled(args)
        )
    except Exception:
        # A failed discovery leaves nothing behind; only a killed or interrupted one keeps its checkpoint to resume.
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        remove_empty_folders(created)
        raise
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    elapsed = time.perf_counter() - started
    if args.json:
        print_json({"out": str(out), "seconds": elapsed, **{str(k): d.summary() for k, d in discoveries.items()}})
        note_written(out)
        return 0
    for k, disc in discoveries.items():
        s = disc.summary()
        what = "held-out top-1" if disc.objective == "accuracy" else "mean cos², sources weighted equally"
        elbows = ", ".join(f"round {r}: {e}" for r, e in disc.elbows.items())
        print(f"\n{k}x{k}: {disc.n_filters:,} filters from {len(disc.sources)} source(s); objective = {what}")
        print(f"K={len(disc.keys)}: {s['objective_at_k']:.4f} (round {disc.final_round}); elbow at {elbows}")
        if "unswapped_objective" in disc.extra:
            print(f"unswapped model: {disc.extra['unswapped_objective']:.4f}")
        print(comparison_text(disc))
        for line in disc.notes:
            note(f"{k}x{k}: {line}")
    note(f"finished in {elapsed:.1f} s")
    note_written(out)
    return 0
