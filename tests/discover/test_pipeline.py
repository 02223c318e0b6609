from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from masterkey.discover import AccuracySetup, AutoencoderConfig, DiscoverConfig, discover_bank, discover_keys
from masterkey.errors import MasterkeyError
from masterkey.keys import KeySet
from masterkey.threads import torch_threads


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
    from masterkey.data.evaluate import evaluate
    from masterkey.data.memory import load_image_folder
    from masterkey.data.preprocessing import CIFAR10
    from masterkey.data.selection import stratified_split
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
    assert 0.0 <= found.accuracy.unswapped_objective <= 100.0
    assert found.summary()["objective_unit"] == "percent" and set(found.path_frame()["objective_unit"]) == {"percent"}
    assert found.accuracy.swapped_layers == 12 and found.summary()["accuracy"]["held_out_images"] == 30
    assert set(found.baselines["method"]) == {"discovered", "paper8"}
    # The path's score of the final keys is the accuracy of the model with those keys swapped in.
    swapped = create_model(weights=cifar_convnexts[0])
    final = found.candidates[0].keys[list(found.paths[0].subset_at(8))]
    swap_depthwise(swapped, KeySet("final", final))
    with torch_threads(config.cpu_threads):  # the same threads as the pipeline, so the same float rounding
        top1 = evaluate(swapped, setup.images, CIFAR10, progress=False)["top1"]
    # One unit: the objective is held-out top-1 in percent, as evaluate() gives it.
    assert found.paths[0].objective_at(8) == pytest.approx(top1, abs=1e-9)
    assert found.accuracy.unswapped_objective > 1.0  # percent, not a fraction (the model is far above 1% on CIFAR)


def test_a_large_bank_says_what_was_subsampled(small_chunks, make_filters, make_keys) -> None:
    """A bank of several chunks with k-means on a sample: the keys are still found, the notes and summary say
    how large the sample was, and normalising in place (copy=False) changes nothing but the input tensor."""
    truth = make_keys(4, 3, seed=30)
    filters, _ = make_filters(truth, 1200, seed=30)
    sources = np.where(np.arange(1200) < 300, "small", "big")
    config = DiscoverConfig(
        n_keys=4,
        n_candidates=12,
        rounds=1,
        compare_k=(2, 4),
        random_seeds=2,
        kmeans_sample=300,
        autoencoder=AutoencoderConfig(hidden=16, steps=100, batch_size=64),
    )
    found = discover_keys(filters, sources, config, progress=False)
    assert any("sample of 300 of the 1,200 filters" in note for note in found.notes), found.notes
    assert found.summary()["subsampled"] == {"kmeans": {"sample": 300, "of_filters": 1200}}
    assert found.baseline_keys["kmeans"].provenance["sample"] == 300
    kmeans = found.baseline_keys["kmeans"].keys.reshape(4, -1).double()
    assert bool(((kmeans @ truth.reshape(4, -1).double().T).abs().amax(dim=0) >= 0.99).all())
    assert set(found.baseline_timings) >= {"kmeans", "pca", "random", "scoring"}
    owned = filters.clone()
    again = discover_keys(owned, sources, config, progress=False, copy=False)
    assert torch.equal(again.keys.keys, found.keys.keys) and again.baselines.equals(found.baselines)
    assert not torch.equal(owned, filters)  # normalised in place


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_every_stage_runs_on_the_gpu(small_chunks, make_filters, make_keys) -> None:
    """--device cuda on a bank that takes the large-bank paths: the same keys are found as on the CPU, and the
    baselines agree to float rounding (the autoencoder trains on the GPU, so its candidates may differ slightly)."""
    truth = make_keys(4, 5, seed=40)
    filters, _ = make_filters(truth, 1500, seed=40)
    sources = np.where(np.arange(1500) < 500, "small", "big")
    config = DiscoverConfig(
        n_keys=4,
        n_candidates=12,
        compare_k=(2, 4),
        random_seeds=2,
        kmeans_sample=400,
        autoencoder=AutoencoderConfig(hidden=16, steps=200, batch_size=64),
    )
    gpu = discover_keys(filters, sources, config, device="cuda", progress=False)
    cpu = discover_keys(filters, sources, config, progress=False)
    cos = (gpu.keys.keys.reshape(4, -1).double() @ truth.reshape(4, -1).double().T).abs().amax(dim=0)
    assert bool((cos >= 0.95).all()), cos
    for method in ("kmeans", "pca", "random", "paper8"):
        a = gpu.baselines.query("method == @method")["objective"].to_numpy()
        b = cpu.baselines.query("method == @method")["objective"].to_numpy()
        np.testing.assert_allclose(a, b, atol=1e-6 if method != "kmeans" else 1e-3)
