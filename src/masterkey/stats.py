"""Confidence intervals, the one way every number in masterkey gets its ± (Student t over seeds / runs)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

CONFIDENCE = 0.95


def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """``(mean, sample std, half-width of the Student-t confidence interval of the mean)`` of the finite values.

    The std and half-width are NaN for fewer than two values and exactly 0 when all values are equal.
    """
    from scipy.special import stdtrit  # the Student t quantile; scipy.stats takes seconds to import

    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    if len(x) < 2:
        return float(x.mean()), math.nan, math.nan
    std = 0.0 if float(np.ptp(x)) == 0.0 else float(x.std(ddof=1))
    half = float(stdtrit(len(x) - 1, 0.5 + confidence / 2)) * std / math.sqrt(len(x))
    return float(x.mean()), std, half


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% confidence interval."""
    mean, _, half = mean_ci(values)
    return mean, half


def ci95(values: Sequence[float]) -> float:
    """Half-width of the 95% confidence interval of the mean."""
    return mean_ci(values)[2]
