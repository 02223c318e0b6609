"""Discrete scale-space kernels and least-squares fits of keys (masterkey.scalespace)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from masterkey.errors import MasterkeyError
from masterkey.kernels import (
    FAMILIES,
    PAPER8_SCALESPACE,
    backward_difference,
    central_difference,
    discrete_gaussian,
    forward_difference,
    gaussian_kernel_2d,
    laplacian_kernel,
    scalespace_kernel,
    second_difference,
)
from masterkey.keys import load_keys
from masterkey.scalespace import (
    family_for_label,
    fit_keyset,
    fit_scalespace,
    paper8_parameters,
    scalespace_keyset,
)

sigmas = st.floats(0.0, 3.0, allow_nan=False)
fit_sigmas = st.floats(0.35, 1.6, allow_nan=False)


# ---------------------------------------------------------------------- the discrete Gaussian
@given(sigmas)
def test_discrete_gaussian_sums_to_one_is_symmetric_and_positive(sigma: float) -> None:
    t = discrete_gaussian(sigma, radius=int(6 * sigma) + 12)
    assert t.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(t, t[::-1], rtol=0, atol=1e-15)
    assert (t >= 0).all()
    assert int(np.argmax(t)) == len(t) // 2
    # Variance of the discrete Gaussian is exactly σ².
    n = np.arange(len(t)) - len(t) // 2
    assert float((n * n * t).sum()) == pytest.approx(sigma * sigma, abs=1e-9)


def test_zero_scale_is_the_unit_impulse() -> None:
    np.testing.assert_array_equal(discrete_gaussian(0.0, 3), [0, 0, 0, 1, 0, 0, 0])


@given(st.floats(0.1, 2.0), st.floats(0.1, 2.0))
def test_semigroup_convolution_adds_variances(s1: float, s2: float) -> None:
    r = 30
    joined = np.convolve(discrete_gaussian(s1, r), discrete_gaussian(s2, r))[r : 3 * r + 1]
    np.testing.assert_allclose(joined, discrete_gaussian(math.hypot(s1, s2), r), atol=1e-12)


@given(st.floats(0.3, 2.0))
def test_solves_the_semi_discrete_diffusion_equation(sigma: float) -> None:
    # ∂T/∂t = ½ δ_nn T with t = σ².
    r, h = 20, 1e-5
    t = sigma * sigma
    dt = (discrete_gaussian(math.sqrt(t + h), r) - discrete_gaussian(math.sqrt(t - h), r)) / (2 * h)
    np.testing.assert_allclose(dt[1:-1], 0.5 * second_difference(discrete_gaussian(sigma, r)), atol=1e-6)


def test_difference_operators() -> None:
    f = np.array([1.0, 4.0, 9.0, 16.0, 25.0])  # n = -2 .. 2
    np.testing.assert_array_equal(forward_difference(f), [5, 7, 9])
    np.testing.assert_array_equal(backward_difference(f), [3, 5, 7])
    np.testing.assert_array_equal(central_difference(f), [4, 6, 8])
    np.testing.assert_array_equal(second_difference(f), [2, 2, 2])


# ---------------------------------------------------------------------- 2-D kernels
@given(sigmas, sigmas, st.sampled_from([3, 5, 7, 9]))
def test_two_dimensional_kernel_is_the_outer_product(sx: float, sy: float, size: int) -> None:
    kernel = gaussian_kernel_2d(sx, sy, size)
    r = size // 2
    np.testing.assert_array_equal(kernel, np.outer(discrete_gaussian(sy, r), discrete_gaussian(sx, r)))
    assert np.linalg.matrix_rank(kernel, tol=1e-12) == 1
    np.testing.assert_array_equal(scalespace_kernel("gaussian", sx, sy, size=size), kernel)


@given(st.floats(0.2, 2.0), st.floats(0.2, 2.0))
def test_laplacian_is_the_five_point_stencil_of_the_kernel(sx: float, sy: float) -> None:
    big = gaussian_kernel_2d(sx, sy, 9)
    stencil = big[:-2, 1:-1] + big[2:, 1:-1] + big[1:-1, :-2] + big[1:-1, 2:] - 4 * big[1:-1, 1:-1]
    np.testing.assert_allclose(laplacian_kernel(sx, sy, 7), stencil, atol=1e-15)
    # The Laplacian of a kernel that sums to 1 sums to 0 over the whole lattice.
    assert laplacian_kernel(sx, sy, 41).sum() == pytest.approx(0.0, abs=1e-12)


def test_family_kernels_follow_their_definitions() -> None:
    sx, sy, size = 0.7, 1.1, 7
    tx, ty = discrete_gaussian(sx, 4), discrete_gaussian(sy, 4)
    expect = {
        "dx+": np.outer(ty[1:-1], tx[2:] - tx[1:-1]),
        "dx-": np.outer(ty[1:-1], tx[1:-1] - tx[:-2]),
        "dy+": np.outer(ty[2:] - ty[1:-1], tx[1:-1]),
        "dy-": np.outer(ty[1:-1] - ty[:-2], tx[1:-1]),
        "dx": np.outer(ty[1:-1], (tx[2:] - tx[:-2]) / 2),
        "dy": np.outer((ty[2:] - ty[:-2]) / 2, tx[1:-1]),
        "gaussian-laplacian": gaussian_kernel_2d(sx, sy, size) - 0.8 * laplacian_kernel(sx, sy, size),
    }
    for family, kernel in expect.items():
        np.testing.assert_allclose(scalespace_kernel(family, sx, sy, 0.8, size), kernel, atol=1e-15, err_msg=family)
    # Rows run top to bottom: a forward y-difference peaks above the centre, a backward one below it.
    assert np.argmax(scalespace_kernel("dy+", 0.5, 0.5, size=7)[:, 3]) == 2
    assert np.argmax(scalespace_kernel("dy-", 0.5, 0.5, size=7)[:, 3]) == 3
    assert np.argmin(scalespace_kernel("dy-", 0.5, 0.5, size=7)[:, 3]) == 4


def test_bad_kernel_requests_raise() -> None:
    with pytest.raises(MasterkeyError, match="odd size"):
        scalespace_kernel("gaussian", 1.0, size=6)
    with pytest.raises(MasterkeyError, match="unknown"):
        scalespace_kernel("gabor", 1.0)
    with pytest.raises(MasterkeyError, match="σ must be"):
        discrete_gaussian(float("nan"), 3)


# ---------------------------------------------------------------------- fits
@settings(max_examples=25, deadline=None)
@given(
    st.sampled_from(sorted(FAMILIES)),
    fit_sigmas,
    fit_sigmas,
    st.floats(0.2, 2.0),
    st.floats(-3.0, 3.0).filter(lambda a: abs(a) > 0.1),
    st.floats(-1.0, 1.0),
)
def test_a_generated_filter_is_fitted_back(family: str, sx: float, sy: float, gamma: float, a: float, b: float) -> None:
    """An affine copy a·model + b of a model with known parameters is fitted back to them (sign free)."""
    kernel = a * scalespace_kernel(family, sx, sy, gamma, 7) + b
    fit = fit_scalespace(torch.tensor(kernel), family)
    assert fit.family == family
    assert fit.cosine > 1 - 1e-9
    assert fit.sigma_x == pytest.approx(sx, abs=2e-3)
    assert fit.sigma_y == pytest.approx(sy, abs=2e-3)
    if family == "gaussian-laplacian":
        assert fit.gamma == pytest.approx(gamma, abs=5e-3)
    else:
        assert math.isnan(fit.gamma)
    # The returned model is the key's own centred, unit-norm, sign-aligned shape.
    centred = kernel - kernel.mean()
    np.testing.assert_allclose(fit.model, centred / np.linalg.norm(centred), atol=1e-6)


def test_fit_recovers_parameters_from_a_noisy_filter() -> None:
    rng = np.random.default_rng(0)
    kernel = scalespace_kernel("dx", 1.1, 0.9, size=7)
    noisy = kernel + 0.02 * np.abs(kernel).max() * rng.standard_normal(kernel.shape)
    fit = fit_scalespace(noisy, "dx")
    assert fit.sigma_x == pytest.approx(1.1, abs=0.1)
    assert fit.sigma_y == pytest.approx(0.9, abs=0.1)
    assert 0.97 < fit.cosine < 1


@pytest.mark.parametrize("family", ["dx", "dy-", "gaussian", "laplacian"])
def test_auto_picks_the_generating_family(family: str) -> None:
    fit = fit_scalespace(scalespace_kernel(family, 0.8, 0.6, size=7), "auto")
    assert fit.family == family
    assert fit.cosine > 1 - 1e-9


def test_fit_rejects_bad_keys() -> None:
    with pytest.raises(MasterkeyError, match="square"):
        fit_scalespace(np.zeros((3, 5)))
    with pytest.raises(MasterkeyError, match="constant"):
        fit_scalespace(np.ones((7, 7)))
    with pytest.raises(MasterkeyError, match="unknown"):
        fit_scalespace(np.eye(7), "gabor")


def test_family_for_label() -> None:
    labels = load_keys("paper8").key_labels()
    assert [family_for_label(x) for x in labels] == [
        "dy-",
        "dx-",
        "dy+",
        "dx+",
        "dx",
        "dy",
        "gaussian-laplacian",
        "gaussian",
    ]
    assert family_for_label("PC3") is None


# ---------------------------------------------------------------------- paper8 and scalespace8
@pytest.fixture(scope="module")
def paper8_fit():
    return fit_keyset(load_keys("paper8"))


def test_paper8_cosines_are_in_the_published_range(paper8_fit) -> None:
    """Lindeberg et al. report cosines 0.84-1.00 between the 8 keys and their scale-space models."""
    assert ((paper8_fit["cosine"] >= 0.84) & (paper8_fit["cosine"] <= 1.0)).all(), paper8_fit
    assert paper8_fit["cosine"].iloc[6:].min() > 0.99  # the centre-surround and Gaussian keys are near-exact
    # Derivative keys (5, 6) are coarser than the one-pixel shift keys (1-4), as in the paper.
    sigma = paper8_fit[["sigma_x", "sigma_y"]].to_numpy()
    assert sigma[4:6].mean() > 0.8 > sigma[:4].mean()


def test_stored_scalespace8_parameters_reproduce(paper8_fit) -> None:
    """PAPER8_SCALESPACE was fitted offline with fit_keyset(load_keys("paper8")); refitting must reproduce it."""
    stored = paper8_parameters()
    assert list(stored["family"]) == list(paper8_fit["family"])
    assert list(stored["sign"]) == list(paper8_fit["sign"])
    for col, tol in (("sigma_x", 2e-3), ("sigma_y", 2e-3), ("gamma", 2e-3), ("cosine", 2e-4)):
        np.testing.assert_allclose(stored[col], paper8_fit[col], atol=tol, equal_nan=True, err_msg=col)


def test_scalespace8_matches_paper8_at_seven() -> None:
    models, paper = load_keys("scalespace8", kernel_size=7), load_keys("paper8")
    cos = (models.keys.double() * paper.keys.double()).sum(dim=(1, 2)).numpy()
    np.testing.assert_allclose(cos, [row[6] for row in PAPER8_SCALESPACE], atol=2e-4)
    assert models.key_labels() == paper.key_labels()
    assert models.provenance["fitted_to"].startswith("paper8")


@pytest.mark.parametrize("size", [3, 5, 9, 11])
def test_scalespace8_at_any_odd_size(size: int) -> None:
    keyset = load_keys("scalespace8", kernel_size=size)
    assert keyset.keys.shape == (8, size, size)
    flat = keyset.keys.reshape(8, -1).double()
    np.testing.assert_allclose(flat.mean(1), 0, atol=1e-6)
    np.testing.assert_allclose(flat.norm(dim=1), 1, atol=1e-6)
    if size > 7:  # a larger window only adds the tails: the centre 7x7 keeps its shape
        m = (size - 7) // 2
        inner = keyset.keys[:, m : m + 7, m : m + 7].reshape(8, -1).double()
        inner = inner - inner.mean(1, keepdim=True)
        seven = load_keys("scalespace8", kernel_size=7).keys.reshape(8, -1).double()
        cos = (inner * seven).sum(1) / inner.norm(dim=1)
        assert (cos > 0.99).all()


def test_scalespace8_rejects_even_sizes() -> None:
    with pytest.raises(MasterkeyError, match="odd kernel sizes >= 3, not 4x4"):
        load_keys("scalespace8", kernel_size=4)


def test_scalespace_keyset_round_trips_through_a_fit_table(paper8_fit) -> None:
    keyset = scalespace_keyset(paper8_fit, 7, name="models")
    again = fit_keyset(keyset, list(paper8_fit["family"]))
    assert (again["cosine"] > 1 - 1e-8).all()
    np.testing.assert_allclose(again["sigma_x"], paper8_fit["sigma_x"], atol=2e-3)


def test_explain_keeps_its_names_for_the_one_implementation() -> None:
    """masterkey.explain.scalespace defines nothing: its names are masterkey.scalespace's (and kernels')."""
    import masterkey.scalespace as home
    from masterkey.explain import scalespace as explain_names

    for name in explain_names.__all__:
        assert getattr(explain_names, name) is getattr(home, name), name
