"""The differentiable (torch) discrete scale-space kernels against the scipy ones they mirror."""

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
    discrete_gaussian,
    discrete_gaussian_torch,
    scalespace_kernel,
    scalespace_kernel_torch,
)


@settings(max_examples=100, deadline=None)
@given(sigma=st.floats(0.0, 8.0, allow_nan=False), radius=st.integers(0, 6))
def test_discrete_gaussian_torch_equals_the_scaled_bessel_kernel(sigma: float, radius: int) -> None:
    got = discrete_gaussian_torch(torch.tensor(sigma, dtype=torch.float64), radius).numpy()
    want = discrete_gaussian(sigma, radius)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-13)
    wide = discrete_gaussian_torch(torch.tensor(sigma, dtype=torch.float64), 60)  # nearly all of the mass
    assert float(wide.sum()) == pytest.approx(1.0, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(sigma=st.floats(0.05, 4.0), n=st.integers(0, 3))
def test_the_sigma_derivative_is_that_of_the_diffusion_equation(sigma: float, n: int) -> None:
    """∂T/∂t = ½ (T(n+1) - 2 T(n) + T(n-1)) with t = σ², so ∂T/∂σ = σ (T(n+1) - 2 T(n) + T(n-1))."""
    s = torch.tensor(sigma, dtype=torch.float64, requires_grad=True)
    values = discrete_gaussian_torch(s, n + 1)
    (grad,) = torch.autograd.grad(values[n + 1 + n], s)  # T(n)
    t = discrete_gaussian(sigma, n + 1)
    centre = n + 1 + n
    expected = sigma * (t[centre + 1] - 2 * t[centre] + t[centre - 1])
    assert float(grad) == pytest.approx(expected, abs=1e-12, rel=1e-9)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("size", [3, 5, 7])
def test_every_family_matches_the_numpy_kernel(family: str, size: int) -> None:
    params = [(0.4, 0.6, 0.75), (1.1, 0.3, -0.5), (0.0, 2.0, 2.0)]
    sx, sy, gamma = (torch.tensor(c, dtype=torch.float64) for c in zip(*params, strict=True))
    got = scalespace_kernel_torch(family, sx, sy, gamma, size).numpy()
    for i, (x, y, g) in enumerate(params):
        np.testing.assert_allclose(got[i], scalespace_kernel(family, x, y, g, size), rtol=0, atol=1e-13)


def test_bad_arguments() -> None:
    with pytest.raises(MasterkeyError, match="family 'blob' is unknown"):
        scalespace_kernel_torch("blob", torch.ones(1), torch.ones(1))
    with pytest.raises(MasterkeyError, match="needs gamma"):
        scalespace_kernel_torch("gaussian-laplacian", torch.ones(1), torch.ones(1))
    with pytest.raises(MasterkeyError, match="odd size"):
        scalespace_kernel_torch("gaussian", torch.ones(1), torch.ones(1), size=4)
    with pytest.raises(MasterkeyError, match="radius"):
        discrete_gaussian_torch(torch.ones(1), -1)
    assert math.isfinite(float(discrete_gaussian_torch(torch.tensor(30.0), 3).sum()))
