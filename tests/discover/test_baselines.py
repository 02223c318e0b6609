from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from masterkey.discover.baselines import baseline_keysets, pca_keys, spherical_kmeans
from masterkey.discover.objectives import explained_variance, source_weights, span_explained_variance
from masterkey.errors import MasterkeyError
from masterkey.normalize import center_norm
from masterkey.stats import mean_ci95


def _best_abs_cos(found: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    a = found.reshape(len(found), -1).double()
    b = truth.reshape(len(truth), -1).double()
    return (a @ b.T).abs().amax(dim=0)


def test_kmeans_recovers_clustered_keys(make_filters, make_keys) -> None:
    truth = make_keys(5, 5, seed=4)
    filters, _ = make_filters(truth, 600, seed=4)
    keys, objective = spherical_kmeans(center_norm(filters), 5, seed=0)
    assert bool((_best_abs_cos(keys, truth) > 0.99).all())
    assert objective == pytest.approx(explained_variance(filters, keys), abs=1e-6)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000))
def test_kmeans_ignores_the_signs_of_filters(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = center_norm(torch.randn(120, 3, 3, generator=g))
    signs = torch.where(torch.rand(120, generator=g) < 0.5, -1.0, 1.0)
    keys, obj = spherical_kmeans(x, 3, seed=seed, n_init=2)
    flipped, obj_flipped = spherical_kmeans(x * signs[:, None, None], 3, seed=seed, n_init=2)
    assert obj == pytest.approx(obj_flipped, abs=1e-6)
    assert bool((_best_abs_cos(flipped, keys) > 1 - 1e-5).all())


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 6))
def test_mixing_all_keys_explains_at_least_one_key(seed: int, n_keys: int) -> None:
    g = torch.Generator().manual_seed(seed)
    filters = torch.randn(80, 3, 3, generator=g)
    keys = torch.randn(n_keys, 3, 3, generator=g)
    one, mix = explained_variance(filters, keys), span_explained_variance(filters, keys)
    assert one <= mix + 1e-12
    assert one >= 0.0 and mix <= 1.0 + 1e-12


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 7))
def test_pca_span_is_the_best_any_k_keys_can_mix(seed: int, n_keys: int) -> None:
    g = torch.Generator().manual_seed(seed)
    filters = center_norm(torch.randn(100, 3, 3, generator=g) + torch.randn(1, 3, 3, generator=g))
    w = source_weights(np.array(["a"] * 30 + ["b"] * 70), 100)
    best = span_explained_variance(filters, pca_keys(filters, n_keys, w), w)
    other = span_explained_variance(filters, torch.randn(n_keys, 3, 3, generator=g), w)
    assert other <= best + 1e-9


def test_pca_keys_are_orthonormal_and_centred() -> None:
    x = center_norm(torch.randn(200, 5, 5, generator=torch.Generator().manual_seed(0)))
    keys = pca_keys(x, 6).reshape(6, -1).double()
    assert torch.allclose(keys @ keys.T, torch.eye(6, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(keys.sum(dim=1), torch.zeros(6, dtype=torch.float64), atol=1e-5)
    with pytest.raises(MasterkeyError, match="at most 24 directions"):
        pca_keys(x, 25)


def test_baseline_keysets_and_ci() -> None:
    x = center_norm(torch.randn(50, 3, 3, generator=torch.Generator().manual_seed(0)))
    assert len(baseline_keysets("random", x, 4, seeds=[0, 1, 2])) == 3
    assert baseline_keysets("paper8", x, 8)[0].kernel_size == 3
    assert len(baseline_keysets("impulse", x, 8)[0]) == 1
    with pytest.raises(MasterkeyError, match="unknown baseline"):
        baseline_keysets("ica", x, 4)
    mean, ci = mean_ci95([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert ci == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-5)  # t(0.975, 2) * sd / sqrt(n)
    assert math.isnan(mean_ci95([1.0])[1])
