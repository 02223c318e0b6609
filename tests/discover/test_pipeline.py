from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from masterkey.discover import AccuracySetup, AutoencoderConfig, DiscoverConfig, discover_bank, discover_keys
from masterkey.discover.autoencoder import cpu_threads
from masterkey.errors import MasterkeyError
from masterkey.keys import KeySet


def test_recovers_every_key_of_a_synthetic_bank(make_filters, make_keys) -> None:
    """Acceptance: 8 known keys with random a, b and noise are all recovered (|cos| >= 0.95)."""
    truth = make_keys(8, 5, seed=100)
    filters, _ = make_filters(truth, 1600, seed=100)
    sources = np.where(np.arange(1600) % 3 == 0, "small", "big")
    # The default autoencoder: the pipeline as users run it.
    config = DiscoverConfig(n_keys=8, compare_k=(4, 8), random_seeds=3, baselines=("kmeans", "pca", "random"))
    found = discover_keys(filters, sources, config, progress=False)
    cos = (found.keys.keys.reshape(8, -1) @ truth.reshape(8, -1).T).abs()
    assert bool((cos.amax(dim=0) >= 0.95).all()), cos.amax(dim=0)
    assert 8 in found.elbows.values()  # the path's elbow sits at the true number of keys
    table = found.comparison().set_index("n_keys")
    assert table.loc[8, "discovered"] > 0.95
    assert table.loc[8, "discovered"] > table.loc[8, "random"] + 0.3
    assert table.loc[8, "kmeans"] > 0.95
    span = found.baselines.query("n_keys == 8").set_index("method")
    assert bool((span["span_objective"] >= span["objective"] - 1e-9).all())
    assert set(found.keys.provenance["sources"]) == {"big", "small"}
    assert found.baseline_keys["kmeans"].kernel_size == 5


def test_bitwise_reproducible_for_a_seed(make_filters, make_keys) -> None:
    filters, _ = make_filters(make_keys(3, 3, seed=7), 300, seed=7)
    config = DiscoverConfig(
        n_keys=3,
        n_candidates=12,
        autoencoder=AutoencoderConfig(hidden=16, steps=80, batch_size=64),
        baselines=(),
        compare_k=(3,),
    )
    a = discover_keys(filters, config=config, progress=False)
    b = discover_keys(filters, config=config, progress=False)
    assert torch.equal(a.keys.keys, b.keys.keys)
    assert a.path_frame().equals(b.path_frame())


def test_bad_input_gives_clear_errors(make_filters, make_keys, tiny_bank: Path) -> None:
    from masterkey.bank import open_bank

    filters, _ = make_filters(make_keys(3, 3, seed=1), 50, seed=1)
    tiny = DiscoverConfig(n_keys=3, n_candidates=10, autoencoder=AutoencoderConfig(hidden=8, steps=10))
    with pytest.raises(MasterkeyError, match="no filters"):
        discover_keys(torch.empty(0, 3, 3), config=tiny, progress=False)
    bad = filters.clone()
    bad[4, 1, 1] = float("nan")
    with pytest.raises(MasterkeyError, match="1 of 50 filters hold NaN or Inf"):
        discover_keys(bad, config=tiny, progress=False)
    with pytest.raises(MasterkeyError, match="larger than the candidate count"):
        DiscoverConfig(n_keys=60)
    with pytest.raises(MasterkeyError, match="larger than the number of usable filters"):
        discover_keys(filters[:2], config=tiny, progress=False)
    bank = open_bank(tiny_bank)
    with pytest.raises(MasterkeyError, match="has no 7x7 filters"):
        discover_bank(bank, [7], tiny, progress=False)
    with pytest.raises(MasterkeyError, match="holds no filters"):
        discover_bank(bank.query("source == 'nobody'"), None, tiny, progress=False)
    # A decoder that collapses gives fewer distinct candidates than K: say so rather than return fewer keys.
    with pytest.raises(MasterkeyError, match="distinct candidates"):
        collapse = DiscoverConfig(n_keys=10, n_candidates=10, dedupe=0.2, autoencoder=tiny.autoencoder)
        discover_keys(filters, config=collapse, progress=False)


def test_accuracy_objective_end_to_end_on_cifar(cifar_convnexts: list[Path], shared: Path) -> None:
    """The accuracy objective with a real CIFAR-10 ConvNeXt on a held-out split of the TRAINING images."""
    from masterkey.bank import open_bank
    from masterkey.images import load_image_folder, stratified_split
    from masterkey.networks.evaluate import CIFAR10, evaluate
    from masterkey.networks.models import create_model
    from masterkey.networks.surgery import swap_depthwise

    model = create_model(weights=cifar_convnexts[0])
    images = load_image_folder(shared / "data" / "cifar10" / "train", max_per_class=8)
    _, held = stratified_split(images.labels, 30, seed=0)
    setup = AccuracySetup(model, images.subset(held), CIFAR10, description={"data": "cifar10/train"})
    config = DiscoverConfig(
        n_keys=8,
        n_candidates=10,
        dedupe=0.9999,
        rounds=1,
        floor=8,
        compare_k=(8,),
        baselines=("paper8",),
        autoencoder=AutoencoderConfig(hidden=32, steps=300, batch_size=128),
    )
    found = discover_bank(open_bank(None), [7], config, accuracy=setup, progress=False)[7]
    assert found.objective == "accuracy"
    path = found.path_frame()
    assert path["n_keys"].tolist() == list(range(len(found.candidates[0]), 7, -1))
    assert found.paths[0].evaluations <= sum(path["n_keys"]) + 1
    assert 0.0 <= found.extra["unswapped_objective"] <= 1.0
    assert set(found.baselines["method"]) == {"discovered", "paper8"}
    # The path's score of the final keys is the accuracy of the model with those keys swapped in.
    swapped = create_model(weights=cifar_convnexts[0])
    final = found.candidates[0].keys[list(found.paths[0].subset_at(8))]
    swap_depthwise(swapped, KeySet("final", final))
    with cpu_threads(config.cpu_threads):  # the same threads as the pipeline, so the same float rounding
        top1 = evaluate(swapped, setup.images, CIFAR10, progress=False)["top1"]
    assert found.paths[0].objective_at(8) == pytest.approx(top1, abs=1e-6)  # evaluate() averages in float32
