"""Does a robust method pay? Its front against the baseline's (DPO's early-stopping) front, paired by seed.

The statistic, per seed s: g_s = :func:`~rdpo_lightning.pareto.front.mean_gap` of the method's front (every
validation pass of every run of that method with seed s) over the baseline's front (every validation pass of the
baseline's runs with seed s): the mean worst-case advantage at matched in-distribution quality. Across seeds: the
mean of g_s with a Student-t interval. The method *pays* when at least ``min_seeds`` seeds are paired and the whole
interval lies above zero; it *loses* when the whole interval lies below zero; otherwise the gap is within seed noise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rdpo_lightning.pareto.front import Point, mean_gap
from rdpo_lightning.pareto.interval import MeanInterval, t_interval

PAYS, LOSES, NOISE, TOO_FEW = "pays", "loses", "within seed noise", "too few seeds"


@dataclass(frozen=True)
class Verdict:
    """One method against the baseline on one metric: per-seed gaps, their interval and the outcome."""

    method: str
    baseline: str
    gaps: dict[int, float]
    interval: MeanInterval
    outcome: str


def judge(interval: MeanInterval, min_seeds: int = 3) -> str:
    if interval.n < min_seeds or math.isnan(interval.low):
        return TOO_FEW
    if interval.low > 0:
        return PAYS
    if interval.high < 0:
        return LOSES
    return NOISE


def compare(
    method: str,
    points: Mapping[int, Sequence[Point]],
    baseline: str,
    baseline_points: Mapping[int, Sequence[Point]],
    confidence: float = 0.95,
    min_seeds: int = 3,
) -> Verdict:
    """The verdict of ``method`` (points per seed) against ``baseline`` (points per seed), on the seeds both have.
    A seed whose fronts do not overlap in-distribution gives no gap (NaN) and does not count towards ``min_seeds``."""
    seeds = sorted(set(points) & set(baseline_points))
    gaps = {seed: mean_gap(points[seed], baseline_points[seed]) for seed in seeds}
    interval = t_interval(list(gaps.values()), confidence)
    return Verdict(method, baseline, gaps, interval, judge(interval, min_seeds))
