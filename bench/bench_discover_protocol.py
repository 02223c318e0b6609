"""How masterkey's discovery differs from the paper's, measured (issue 27): the embedded default bank discovered with
masterkey's defaults, with the paper's protocol (``--protocol paper``), and with each single difference reverted to
the paper's choice, over several seeds.

For every variant, seed and kernel size the script records, on the same yardstick for all (the default data-free
objective: the mean best cos² of the bank's filters, every source weighted equally):

* ``objective_at_8``: the objective of the variant's set of 8 keys (for variants that stop at the elbow: the set of
  8 on the same round's path, so that all are compared at K = 8), and the keys' matched |cos| with masterkey's
  default keys of the same seed (Hungarian matching, sign-free);
* ``keys``: how many keys the variant itself returns, and their objective (differs from the above only when it
  stops at the elbow).

Differences that cannot change the set of keys (the order they are saved in) are measured too: the script checks
that they do not. The accuracy objective's difference needs a reference network and is measured separately
(``--accuracy``: the CIFAR-10 ConvNeXt on a held-out split of CIFAR-10 training images, 7x7 only, small).

    nice -n 10 python bench/bench_discover_protocol.py --out bench/results/discover-protocol.md
    nice -n 10 python bench/bench_discover_protocol.py --only accuracy --out bench/results/discover-protocol-accuracy.md

Every number goes to ``PAGE.raw.json`` beside the page (:mod:`raw`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

#: (name, what the paper does instead, overrides of masterkey's defaults). The first is masterkey's own defaults.
#: Variants that change only what happens after the autoencoder reuse the default's autoencoders (same seed, same
#: configuration: the same weights).
VARIANTS: list[tuple[str, str, dict[str, Any]]] = [
    ("masterkey", "masterkey's defaults", {}),
    ("paper", "the paper's protocol (--protocol paper): every difference below at once", {"protocol": "paper"}),
    ("encoder", "plain first encoder layer (no sign symmetry)", {"autoencoder": {"symmetric": False}}),
    ("activation", "ReLU instead of SiLU", {"autoencoder": {"activation": "relu"}}),
    ("loss", "loss 1 - cos(x, x̂) instead of 1 - |cos(x, centred x̂)|", {"autoencoder": {"loss": "signed-cosine"}}),
    ("spread", "no latent-spread (Wasserstein-to-uniform) term", {"autoencoder": {"spread": 0.0}}),
    ("weighting", "filters sampled (and weighted) uniformly, not per source", {"weighting": "filter"}),
    ("spacing", "latents evenly spaced over [0, 1], not the observed min..max", {"spacing": "unit"}),
    ("dedupe", "no de-duplication of candidates (|cos| >= 0.995 dropped)", {"dedupe": None}),
    ("round", "the last round's keys, not the better of the two", {"keep_round": "last"}),
    ("stop", "stop at the elbow of the path, not at exactly K", {"stop": "elbow"}),
    ("order", "keys in path (latent) order, not by share", {"order": "path"}),
]


def _config(overrides: dict[str, Any], seed: int) -> Any:
    from masterkey.discover.settings import protocol_config

    changes = dict(overrides)
    protocol = changes.pop("protocol", "masterkey")
    return protocol_config(protocol, seed=seed, baselines=(), **changes)


#: Variants whose autoencoders differ from the default's.
TRAINS_ITS_OWN = {"masterkey", "paper", "encoder", "activation", "loss", "spread", "weighting"}


def measure(seeds: list[int], variants: list[str]) -> list[dict[str, Any]]:
    """One row per variant, seed and kernel size."""
    from masterkey.bank import open_bank
    from masterkey.discover import discover_bank, discover_keys, explained_variance, prepare_filters, source_weights
    from masterkey.discover.comparison import matched_cos

    bank = open_bank(None)
    yardstick = {}
    for k in bank.kernel_sizes:
        filters, sources, _ = prepare_filters(bank, k)
        yardstick[k] = (filters, source_weights(sources, len(sources)))
    rows: list[dict[str, Any]] = []
    default_keys: dict[tuple[int, int], Any] = {}
    default_ae: dict[tuple[int, int], Any] = {}
    for seed in seeds:
        for name, _, overrides in VARIANTS:
            if name not in variants:
                continue
            config = _config(overrides, seed)
            t0 = time.process_time()
            if name in TRAINS_ITS_OWN:
                found = discover_bank(bank, config=config, with_baselines=False)
            else:
                found = {}
                for k in bank.kernel_sizes:
                    filters, sources, _ = prepare_filters(bank, k)
                    found[k] = discover_keys(filters, sources, config, with_baselines=False, copy=False,
                                             autoencoder=default_ae[(seed, k)])  # fmt: skip
            cpu = time.process_time() - t0
            for k, disc in found.items():
                x, w = yardstick[k]
                path = disc.paths[disc.final_round - 1]
                at8 = disc.candidates[disc.final_round - 1].keys[list(path.subset_at(8))]
                if name == "masterkey":
                    default_keys[(seed, k)] = disc.keys.keys
                    default_ae[(seed, k)] = disc.autoencoder
                reference = default_keys.get((seed, k))
                cos = matched_cos(at8, reference) if reference is not None else None
                rows.append(
                    {
                        "variant": name,
                        "seed": seed,
                        "kernel_size": k,
                        "objective_at_8": explained_variance(x, at8, w),
                        "matched_cos": None if cos is None else cos.tolist(),
                        "n_keys": len(disc.keys),
                        "objective_of_keys": explained_variance(x, disc.keys, w),
                        "final_round": disc.final_round,
                        "elbows": disc.elbows,
                        "ae_steps": disc.autoencoder.steps,
                        "n_candidates": [len(c) for c in disc.candidates],
                        "keys_equal_default_set": None
                        if reference is None
                        else bool(sorted(map(tuple, disc.keys.keys.reshape(len(disc.keys), -1).tolist()))
                                  == sorted(map(tuple, reference.reshape(len(reference), -1).tolist()))),
                        "cpu_s_all_sizes": cpu,
                        "own_autoencoders": name in TRAINS_ITS_OWN,
                    }
                )  # fmt: skip
            print(f"seed {seed} {name:10}: " + ", ".join(
                f"{r['kernel_size']}x{r['kernel_size']} {r['objective_at_8']:.4f}" for r in rows[-len(found):]
            ) + f" ({cpu:.0f} s CPU)", flush=True)  # fmt: skip
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """The Markdown table of the page: per variant and kernel size, objective at K = 8 (mean ± 95% CI over seeds),
    its paired difference from masterkey's defaults, the matched |cos| with the default keys, and the keys' count."""
    import numpy as np

    from masterkey.stats import mean_ci95

    def pm(values: list[float], digits: int = 4, sign: bool = False) -> str:
        mean, ci = mean_ci95(values)
        return f"{mean:+.{digits}f} ± {ci:.{digits}f}" if sign else f"{mean:.{digits}f} ± {ci:.{digits}f}"

    by = {(r["variant"], r["seed"], r["kernel_size"]): r for r in rows}
    seeds = sorted({r["seed"] for r in rows})
    sizes = sorted({r["kernel_size"] for r in rows})
    head = ["variant (the paper's choice)"]
    for k in sizes:
        head += [f"{k}x{k} objective at K=8", f"{k}x{k} Δ vs default", f"{k}x{k} matched \\|cos\\|"]
    head += ["keys returned (3x3 / 5x5 / 7x7, per seed)"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for name, what, _ in VARIANTS:
        if not any(r["variant"] == name for r in rows):
            continue
        cells = [f"**{name}**: {what}"]
        for k in sizes:
            values = [by[(name, s, k)]["objective_at_8"] for s in seeds]
            default = [by[("masterkey", s, k)]["objective_at_8"] for s in seeds]
            cosines = [c for s in seeds for c in (by[(name, s, k)]["matched_cos"] or [])]
            cells += [
                pm(values),
                "—" if name == "masterkey" else pm([a - b for a, b in zip(values, default, strict=True)], sign=True),
                "—" if name == "masterkey" else f"{np.mean(cosines):.3f} (min {np.min(cosines):.3f})",
            ]
        counts = [" / ".join(str(by[(name, s, k)]["n_keys"]) for k in sizes) for s in seeds]
        cells.append("; ".join(counts))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def measure_accuracy(seeds: list[int], held_out: int, candidates: int) -> list[dict[str, Any]]:
    """7x7 only: keys selected by the accuracy objective (a CIFAR-10 ConvNeXt on ``held_out`` images held out of
    CIFAR-10 training images, split seed 0) vs by the data-free objective, both scored by both objectives; the rest
    of the images read (as many again, disjoint from the choosing split) scores the accuracy too, since the first
    split chose the keys."""
    from masterkey.bank import open_bank
    from masterkey.data.preprocessing import preprocessing_for
    from masterkey.data.selection import load_eval_images, stratified_split
    from masterkey.discover import AccuracySetup, discover_bank, explained_variance, prepare_filters, source_weights
    from masterkey.discover.objectives import AccuracyObjective
    from masterkey.networks.models import create_model

    root = Path(__file__).resolve().parents[2] / "shared"
    weights = root / "models" / "cifar10-convnext" / "convnext_atto_s0_e20.safetensors"
    model = create_model(None, weights=weights)
    prep = preprocessing_for(model, {"dataset": "cifar10"})
    images = load_eval_images(root / "data" / "cifar10" / "train", prep, max_per_class=2 * held_out // 10)
    rest, held = stratified_split(images.labels, held_out, seed=0)
    setup = AccuracySetup(model, images.subset(held), prep, 256, {"data": "cifar10/train", "held_out": held_out})
    bank = open_bank(None)
    x, sources, _ = prepare_filters(bank, 7)
    w = source_weights(sources, len(sources))
    rows = []
    for seed in seeds:
        for objective in ("accuracy", "variance"):
            config = _config({"n_candidates": candidates, "rounds": 1, "floor": 8, "compare_k": (8,)}, seed)
            t0 = time.process_time()
            chosen = setup if objective == "accuracy" else None
            keys = discover_bank(bank, [7], config, accuracy=chosen, with_baselines=False)[7].keys
            scores = {}
            for split, part in (("choosing_split", held), ("other_split", rest)):
                probe = AccuracyObjective(model, images.subset(part), prep, keys.keys)
                scores[split] = probe.score_keys(keys).value
            rows.append(
                {
                    "seed": seed,
                    "selected_by": objective,
                    "variance_objective": explained_variance(x, keys, w),
                    "top1_choosing_split": scores["choosing_split"],
                    "top1_other_split": scores["other_split"],
                    "cpu_s": time.process_time() - t0,
                }
            )
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2", help="seeds, comma-separated (default 0,1,2)")
    p.add_argument(
        "--only", default=None, help="variants to run, comma-separated (masterkey is always run), or 'accuracy'"
    )
    p.add_argument("--held-out", type=int, default=200, help="held-out images for --only accuracy")
    p.add_argument("--candidates", type=int, default=12, help="candidates for --only accuracy")
    p.add_argument("--out", help="Markdown page (its raw output goes beside it)")
    args = p.parse_args()
    from masterkey.files import write_text
    from raw import RawRecord, raw_note, raw_path

    record = RawRecord("cpu")
    print(f"machine: {record.machine}\ncommand: {record.command}", flush=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.only == "accuracy":
        rows = measure_accuracy(seeds, args.held_out, args.candidates)
        text = accuracy_table(rows)
        measurements = {"accuracy_rows": rows}
    else:
        names = [n for n, _, _ in VARIANTS] if args.only is None else ["masterkey", *args.only.split(",")]
        rows = measure(seeds, names)
        text = table(rows)
        measurements = {"rows": rows}
    print(text)
    if args.out:
        raw = record.write(raw_path(args.out), {"seeds": seeds, **measurements}, args.out)
        page = [
            "# Discovery: masterkey's defaults vs the paper's protocol, measured (issue 27)",
            "",
            f"Machine: {record.machine}.",
            f"Command: `{record.command}`.",
            "",
            text,
            "",
            raw_note(args.out),
        ]
        write_text(args.out, "\n".join(page) + "\n")
        print(f"wrote {args.out} and {raw}")


def accuracy_table(rows: list[dict[str, Any]]) -> str:
    from masterkey.stats import mean_ci95

    lines = ["| keys selected by | data-free objective | top-1, the split that chose | top-1, another split |",
             "|---|---:|---:|---:|"]  # fmt: skip
    for objective in ("accuracy", "variance"):
        part = [r for r in rows if r["selected_by"] == objective]
        cells = []
        for field in ("variance_objective", "top1_choosing_split", "top1_other_split"):
            mean, ci = mean_ci95([r[field] for r in part])
            cells.append(f"{mean:.4f} ± {ci:.4f}")
        lines.append(f"| {objective} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
