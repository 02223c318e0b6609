from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

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
from masterkey.threads import torch_threads


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
    from masterkey.data.memory import load_image_folder
    from masterkey.data.preprocessing import CIFAR10
    from masterkey.data.selection import stratified_split
    from masterkey.networks.models import create_model

    model = create_model(weights=cifar_convnexts[0])
    images = load_image_folder(shared / "data" / "cifar10" / "train", max_per_class=8)
    _, held = stratified_split(images.labels, 40, seed=0)
    return model, images.subset(held), CIFAR10


def test_accuracy_objective_scores_swapped_models_and_restores_weights(cifar_setup) -> None:
    model, images, prep = cifar_setup
    with torch_threads(1):  # as the discovery pipeline runs it (see DiscoverConfig.cpu_threads)
        _check_accuracy_objective(model, images, prep)


def _check_accuracy_objective(model, images, prep) -> None:
    from masterkey.bank import open_bank
    from masterkey.data.evaluate import evaluate
    from masterkey.discover.baselines import spherical_kmeans
    from masterkey.discover.pipeline import prepare_filters
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
    assert score.value == pytest.approx(reference["top1"], abs=1e-9)  # percent, as evaluate() gives it

    # A candidate no filter uses (an exact copy of candidate 0; ties go to the lower index) cannot change the
    # swapped model, so removing it costs no evaluation and scores exactly what the full set scores.
    with_copy = AccuracyObjective(model, images, prep, torch.cat([candidates[:3], candidates[:1]]))
    full = with_copy.value([0, 1, 2, 3])
    values = with_copy.removal_values([0, 1, 2, 3])
    assert with_copy.evaluations == 4  # the full set, then removals of 0, 1 and 2; not of the copy
    assert values[3] == full


def test_accuracy_objective_refuses_foreign_classes_as_swap_does(cifar_setup) -> None:
    """Four classes of images against a 10-class model: refused (the one class check of masterkey.data), not scored
    against the model's first four outputs."""
    model, images, prep = cifar_setup
    four = images.subset(torch.nonzero(images.labels < 4)[:, 0])
    four.classes = four.classes[:4]
    with pytest.raises(MasterkeyError, match="class-count mismatch: the data has 4 classes, the model predicts 10"):
        AccuracyObjective(model, four, prep, center_norm(torch.randn(4, 7, 7)))


def test_accuracy_objective_refuses_a_kernel_size_the_model_lacks(cifar_setup) -> None:
    model, images, prep = cifar_setup
    with pytest.raises(MasterkeyError, match="no 3x3 depthwise layers"):
        AccuracyObjective(model, images, prep, center_norm(torch.randn(4, 3, 3)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_large_bank_objective_walks_the_same_greedy_path(seed: int, small_chunks, make_filters, make_keys) -> None:
    """Without the score matrix (best and second-best candidate per filter, rescored after a removal) and with the
    bank in several chunks, the greedy path is the one the score matrix gives, with the same values."""
    from masterkey.discover.greedy import greedy_backward

    truth = make_keys(6, 3, seed=seed)
    filters, _ = make_filters(truth, 900, seed=seed, noise=0.3)
    g = torch.Generator().manual_seed(seed)
    cands = center_norm(torch.cat([truth, torch.randn(6, 3, 3, generator=g)]))
    weights = source_weights(np.arange(900) % 4 == 0, 900)
    matrix = VarianceObjective(center_norm(filters), cands, weights, score_matrix_bytes=1 << 30)
    streaming = VarianceObjective(center_norm(filters), cands, weights, score_matrix_bytes=0)
    assert matrix.cos2 is not None and streaming.cos2 is None
    a, b = greedy_backward(matrix, progress=False), greedy_backward(streaming, progress=False)
    assert [s.subset for s in a.steps] == [s.subset for s in b.steps]
    np.testing.assert_allclose(a.objective, b.objective, rtol=0, atol=1e-12)
    for subset in ([0, 3, 5, 7], [2, 11], list(range(12))):  # arbitrary subsets, not only one removal apart
        assert streaming.value(subset).value == pytest.approx(matrix.value(subset).value, abs=1e-12)
        other = streaming.removal_values(subset)
        for c, score in matrix.removal_values(subset).items():
            assert other[c].value == pytest.approx(score.value, abs=1e-12)


def test_scores_of_many_key_sets_in_one_pass(small_chunks) -> None:
    """score_many on a large bank (one product per block for all key sets, spans from the scatter) agrees with
    scoring each key set alone, and with the single-pass arithmetic of a small bank."""
    from masterkey.discover import chunks
    from masterkey.discover.objectives import span_explained_variance
    from masterkey.keys import load_keys

    g = torch.Generator().manual_seed(3)
    filters = center_norm(torch.randn(1000, 5, 5, generator=g))
    weights = source_weights(np.arange(1000) % 3, 1000)
    sets = [load_keys(f"random:{k}:{s}", kernel_size=5) for k in (1, 4, 8) for s in range(2)] + [
        load_keys("paper8", kernel_size=5, resize=True)
    ]
    objective = VarianceObjective(filters, center_norm(torch.randn(4, 5, 5, generator=g)), weights)
    large = objective.score_many(sets)
    chunks.ONE_PASS = 1 << 20  # the same bank as a small one
    small = objective.score_many(sets)
    for keys, (best, span), (best1, span1) in zip(sets, large, small, strict=True):
        assert best.value == pytest.approx(explained_variance(filters, keys, weights), abs=1e-12)
        assert span.value == pytest.approx(span_explained_variance(filters, keys, weights), abs=1e-12)
        assert (best.value, span.value) == pytest.approx((best1.value, span1.value), abs=1e-12)
        assert span.value >= best.value - 1e-12
    assert objective.score_many(sets[:1], span=False)[0][1] is None


def _tiny_setup(seed: int):
    """A tiny real network with a 3x3 depthwise layer, 6 random images of 3 classes, 5 candidate keys."""
    from masterkey.data.memory import ImageSet

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 1), torch.nn.Conv2d(4, 4, 3, padding=1, groups=4), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3),
    )  # fmt: skip
    images = ImageSet(
        torch.randint(0, 256, (6, 3, 8, 8), generator=g, dtype=torch.uint8),
        torch.randint(0, 3, (6,), generator=g),
        ["a", "b", "c"],
        "synthetic",
    )
    return model, images, center_norm(torch.randn(5, 3, 3, generator=g))


def test_accuracy_ties_are_broken_by_the_log_likelihood() -> None:
    """Every one-candidate removal leaves the same top-1 on this split; the greedy step then removes the candidate
    whose removal keeps the highest mean log-likelihood (computed here independently: swap, predict, cross-entropy),
    not the lowest index."""
    import copy

    from masterkey.data.evaluate import predict_logits
    from masterkey.data.preprocessing import Preprocessing
    from masterkey.discover.greedy import greedy_backward
    from masterkey.networks.surgery import swap_depthwise

    model, images, candidates = _tiny_setup(7)
    prep = Preprocessing(None, None, "bilinear", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    expected = {}
    for c in range(5):
        swapped = copy.deepcopy(model)
        swap_depthwise(swapped, KeySet("rest", candidates[[m for m in range(5) if m != c]]), resize=False)
        logits = predict_logits(swapped, images, prep)
        top1 = 100 * float((logits.argmax(dim=1) == images.labels).double().mean())  # percent
        expected[c] = (top1, float(-torch.nn.functional.cross_entropy(logits, images.labels)))
    assert len({top1 for top1, _ in expected.values()}) == 1  # a tie in top-1 ...
    winner = max(range(5), key=lambda c: expected[c][1])
    assert winner != 0  # ... that the log-likelihood, not the index, decides
    objective = AccuracyObjective(copy.deepcopy(model), images, prep, candidates)
    path = greedy_backward(objective, floor=4, progress=False)
    assert path.steps[1].removed == winner
    assert path.steps[1].objective == pytest.approx(expected[winner][0])
    assert path.steps[1].secondary == pytest.approx(expected[winner][1], abs=1e-6)
