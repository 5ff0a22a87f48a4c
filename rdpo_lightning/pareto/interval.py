"""Student-t confidence intervals for a mean over a few seeds, without SciPy."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache


def _t_density(t: float, df: int) -> float:
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_norm - (df + 1) / 2 * math.log1p(t * t / df))


def _t_cdf_above_zero(t: float, df: int, steps: int = 2000) -> float:
    """P(0 ≤ T ≤ t) by Simpson's rule (``steps`` even)."""
    h = t / steps
    total = _t_density(0.0, df) + _t_density(t, df)
    total += sum((4 if i % 2 else 2) * _t_density(i * h, df) for i in range(1, steps))
    return total * h / 3


@lru_cache(maxsize=64)
def t_quantile(probability: float, df: int) -> float:
    """The ``probability`` quantile (> 0.5) of Student's t with ``df`` degrees of freedom, by bisection on its CDF."""
    if not 0.5 < probability < 1 or df < 1:
        raise ValueError(f"need 0.5 < probability < 1 and df >= 1, got {probability}, {df}")
    target = probability - 0.5
    low, high = 0.0, 1.0
    while _t_cdf_above_zero(high, df) < target:
        high *= 2
    for _ in range(60):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if _t_cdf_above_zero(middle, df) < target else (low, middle)
    return 0.5 * (low + high)


@dataclass(frozen=True)
class MeanInterval:
    """Mean of ``n`` values with a two-sided ``confidence`` t-interval [low, high] (NaN bounds when n < 2)."""

    mean: float
    low: float
    high: float
    n: int
    confidence: float


def t_interval(values: Sequence[float], confidence: float = 0.95) -> MeanInterval:
    """Mean ± t_{(1+c)/2, n−1}·s/√n over the finite ``values`` (NaNs dropped)."""
    finite = [v for v in values if not math.isnan(v)]
    n = len(finite)
    if n == 0:
        return MeanInterval(math.nan, math.nan, math.nan, 0, confidence)
    mean = sum(finite) / n
    if n < 2:
        return MeanInterval(mean, math.nan, math.nan, n, confidence)
    sd = math.sqrt(sum((v - mean) ** 2 for v in finite) / (n - 1))
    half = t_quantile((1 + confidence) / 2, n - 1) * sd / math.sqrt(n)
    return MeanInterval(mean, mean - half, mean + half, n, confidence)
