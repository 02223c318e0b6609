from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from masterkey.discover.autoencoder import cpu_threads
from masterkey.discover.objectives import (
    AccuracyObjective,
    VarianceObjective,
    explained_variance,
    source_weights,
)
from masterkey.errors import MasterkeyError
from masterkey.fit import fit_affine
from masterkey.keys import KeySet
from masterkey.normalize import center_norm


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from("abcde"), min_size=1, max_size=60))
def test_source_weights_give_every_source_the_same_total(labels: list[str]) -> None:
    w = source_weights(np.array(labels), len(labels))
    assert float(w.sum()) == pytest.approx(1.0)
    groups = sorted(set(labels))
    for g in groups:
        total = float(w[torch.from_numpy(np.array(labels) == g)].sum())
        assert total == pytest.approx(1.0 / len(groups))


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 5))
def test_a_big_source_cannot_dominate(seed: int, copies: int) -> None:
    """Repeating one source's filters (a bigger model of the same kind) leaves the per-source objective unchanged."""
    g = torch.Generator().manual_seed(seed)
    a = center_norm(torch.randn(20, 3, 3, generator=g))
    b = center_norm(torch.randn(15, 3, 3, generator=g))
    cands = center_norm(torch.randn(6, 3, 3, generator=g))

    def objective(fa: torch.Tensor) -> VarianceObjective:
        labels = np.array(["a"] * len(fa) + ["b"] * len(b))
        return VarianceObjective(torch.cat([fa, b]), cands, source_weights(labels, len(labels)))

    subset = [0, 2, 5]
    once = objective(a).value(subset).value
    many = objective(a.repeat(copies, 1, 1)).value(subset).value
    assert many == pytest.approx(once, abs=1e-12)
    # ... whereas weighting every filter equally lets the repeated source take over.
    plain = VarianceObjective(torch.cat([a.repeat(copies, 1, 1), b]), cands).value(subset).value
    assert plain == pytest.approx(
        (copies * 20 * explained_variance(a, cands[subset]) + 15 * explained_variance(b, cands[subset]))
        / (copies * 20 + 15),
        abs=1e-9,
    )


def test_explained_variance_matches_the_affine_fit() -> None:
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(100, 5, 5, generator=g) * 3 + 1
    keys = torch.randn(4, 5, 5, generator=g)
    fit = fit_affine(raw, KeySet("k", keys), dtype=torch.float64)
    assert explained_variance(raw, keys) == pytest.approx(float(fit.cos2.mean()), abs=1e-9)
    with pytest.raises(MasterkeyError, match="finite"):
        explained_variance(torch.full((2, 3, 3), float("nan")), keys[:, :3, :3])


@pytest.fixture(scope="module")
def cifar_setup(cifar_convnexts: list[Path], shared: Path):
    """A CIFAR-10 ConvNeXt and 40 held-out images of the CIFAR-10 *training* split."""
    from masterkey.images import load_image_folder, stratified_split
    from masterkey.networks.evaluate import CIFAR10
    from masterkey.networks.models import create_model

    model = create_model(weights=cifar_convnexts[0])
    images = load_image_folder(shared / "data" / "cifar10" / "train", max_per_class=8)
    _, held = stratified_split(images.labels, 40, seed=0)
    return model, images.subset(held), CIFAR10


def test_accuracy_objective_scores_swapped_models_and_restores_weights(cifar_setup) -> None:
    model, images, prep = cifar_setup
    with cpu_threads(1):  # as the discovery pipeline runs it (see DiscoverConfig.cpu_threads)
        _check_accuracy_objective(model, images, prep)


def _check_accuracy_objective(model, images, prep) -> None:
    from masterkey.bank import open_bank
    from masterkey.discover.baselines import spherical_kmeans
    from masterkey.discover.pipeline import prepare_filters
    from masterkey.networks.evaluate import evaluate
    from masterkey.networks.surgery import swap_depthwise

    filters, _, _ = prepare_filters(open_bank(None), 7)
    candidates, _ = spherical_kmeans(filters[::8], 4, seed=0, n_init=1)
    original = copy.deepcopy(model.state_dict())
    obj = AccuracyObjective(model, images, prep, candidates)
    assert len(obj.layers) == 12 and not obj.skipped_layers  # every 7x7 depthwise layer of convnext_atto

    subset = [0, 1, 3]
    score = obj.value(subset)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, original[name]), name
    swapped = copy.deepcopy(model)
    swap_depthwise(swapped, KeySet("s", candidates[subset]))
    reference = evaluate(swapped, images, prep, progress=False)
    assert score.value == pytest.approx(reference["top1"], abs=1e-6)  # evaluate() averages in float32

    # A candidate no filter uses (an exact copy of candidate 0; ties go to the lower index) cannot change the
    # swapped model, so removing it costs no evaluation and scores exactly what the full set scores.
    with_copy = AccuracyObjective(model, images, prep, torch.cat([candidates[:3], candidates[:1]]))
    full = with_copy.value([0, 1, 2, 3])
    values = with_copy.removal_values([0, 1, 2, 3])
    assert with_copy.evaluations == 4  # the full set, then removals of 0, 1 and 2; not of the copy
    assert values[3] == full


def test_accuracy_objective_refuses_a_kernel_size_the_model_lacks(cifar_setup) -> None:
    model, images, prep = cifar_setup
    with pytest.raises(MasterkeyError, match="no 3x3 depthwise layers"):
        AccuracyObjective(model, images, prep, center_norm(torch.randn(4, 3, 3)))
