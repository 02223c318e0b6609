import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from masterkey.errors import MasterkeyError
from masterkey.normalize import (
    ZERO_TOL,
    FilterFlag,
    center_norm,
    centring,
    excluded_counts,
    filter_flags,
    unit_rows,
    unit_rows_array,
    usable_mask,
)

finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(
    arrays(
        np.float32,
        st.tuples(st.integers(1, 20), st.sampled_from([3, 5, 7])).map(lambda s: (s[0], s[1], s[1])),
        elements=finite,
    )
)
def test_center_norm_gives_zero_mean_unit_norm(x):
    t = torch.from_numpy(x)
    ok = usable_mask(filter_flags(t))
    t = t[ok]
    if len(t) == 0:
        return
    out = center_norm(t.double())
    flat = out.reshape(len(out), -1)
    assert torch.allclose(flat.mean(1), torch.zeros(len(out), dtype=torch.float64), atol=1e-9)
    assert torch.allclose(flat.norm(dim=1), torch.ones(len(out), dtype=torch.float64), atol=1e-9)
    # invariant to affine changes a*y + b with a > 0
    again = center_norm(3.0 * t.double() + 7.0)
    assert torch.allclose(again, out, atol=1e-6)


def test_flags_and_counts():
    f = torch.randn(6, 3, 3)
    f[0, 1, 1] = float("nan")
    f[1, 0, 0] = float("inf")
    f[2] = 0.0
    f[3] = ZERO_TOL / 2  # below the zero tolerance everywhere
    f[4] = 0.25  # constant, not zero
    flags = filter_flags(f)
    assert flags[0] & FilterFlag.NONFINITE and flags[1] & FilterFlag.NONFINITE
    assert flags[2] & FilterFlag.ZERO and flags[3] & FilterFlag.ZERO
    assert flags[4] & FilterFlag.CONSTANT and not flags[4] & FilterFlag.ZERO
    assert flags[5] == 0
    assert excluded_counts(flags) == {"nonfinite": 2, "zero": 2, "constant": 1}
    assert usable_mask(flags).tolist() == [False] * 5 + [True]


def test_center_norm_refuses_unusable_filters_instead_of_dividing_by_zero():
    f = torch.randn(3, 3, 3)
    f[1] = 0.0
    with pytest.raises(MasterkeyError, match="1 zero"):
        center_norm(f)
    with pytest.raises(ValueError, match="1 zero"):  # still a ValueError for callers written before
        center_norm(f)
    with pytest.raises(MasterkeyError, match="expected filters of shape"):
        center_norm(torch.randn(9))


def test_the_one_centre_and_unit_norm_gives_the_same_numbers_in_every_form():
    """center_norm (any dtype), unit_rows (float64 rows) and unit_rows_array (numpy) are one arithmetic: the float64
    forms agree bit for bit, numpy to rounding."""
    raw = torch.randn(500, 5, 5, generator=torch.Generator().manual_seed(3)) * 4 + 2
    rows = unit_rows(raw)
    assert rows.dtype == torch.float64 and rows.shape == (500, 25)
    assert torch.equal(rows, center_norm(raw.double()).reshape(500, 25))
    centred, mean, norms = centring(raw)
    assert torch.equal(centred / norms, rows)
    assert torch.allclose(mean[:, 0], raw.double().reshape(500, -1).mean(dim=1))
    np.testing.assert_allclose(unit_rows_array(raw.numpy()), rows.numpy(), rtol=0, atol=1e-14)
    expected = raw.reshape(500, -1) - raw.reshape(500, -1).mean(dim=1, keepdim=True)
    assert torch.equal(center_norm(raw), (expected / expected.norm(dim=1, keepdim=True)).reshape(raw.shape))


def test_unit_rows_refuse_constant_rows_and_the_array_form_can_zero_them():
    raw = torch.randn(4, 3, 3, generator=torch.Generator().manual_seed(0))
    raw[2] = 5.0
    with pytest.raises(MasterkeyError, match="keys must be finite and non-constant"):
        unit_rows(raw, "keys")
    raw[2, 0, 0] = float("nan")
    with pytest.raises(MasterkeyError, match="finite and non-constant"):
        unit_rows(raw)
    raw[2] = 5.0
    out = unit_rows_array(raw.numpy(), zero_below=1e-12)
    assert (out[2] == 0).all() and np.allclose(np.linalg.norm(out[[0, 1, 3]], axis=1), 1)
