"""Pareto fronts, staircase gaps and t-intervals against independent computations: an O(n²) dominance check, a fine
Riemann sum over brute-force staircases, and published Student-t quantiles."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rdpo_lightning.pareto import PAYS, Point, compare, dominates, mean_gap, pareto_front, staircase, t_interval
from rdpo_lightning.pareto.interval import t_quantile
from rdpo_lightning.pareto.verdict import LOSES, NOISE, TOO_FEW

coordinates = st.floats(min_value=-5, max_value=5, allow_nan=False).map(lambda v: round(v, 1))  # rounding: ties
point_lists = st.lists(st.builds(Point, coordinates, coordinates), min_size=1, max_size=25)


def brute_force_front(points: list[Point]) -> list[Point]:
    return [p for p in points if not any(dominates(q, p) for q in points)]


@settings(max_examples=300, deadline=None)
@given(point_lists)
def test_front_is_exactly_the_undominated_points(points):
    front = pareto_front(points)
    expected = brute_force_front(points)
    assert sorted((p.x, p.y) for p in front) == sorted((p.x, p.y) for p in expected)
    assert [p.x for p in front] == sorted(p.x for p in front)  # increasing x, hence decreasing y


def test_front_drops_nan_points_and_keeps_duplicates():
    points = [Point(1, 1), Point(1, 1), Point(math.nan, 9), Point(0, 0.5), Point(2, 0)]
    assert [(p.x, p.y) for p in pareto_front(points)] == [(1, 1), (1, 1), (2, 0)]


def brute_force_staircase(points: list[Point], x: float) -> float:
    values = [p.y for p in points if p.x >= x]
    return max(values) if values else math.nan


def riemann_gap(a: list[Point], b: list[Point], cells: int = 20000) -> float:
    """Mean of the brute-force staircase difference over the raw points, on the range the fronts span (from the
    lowest x of either front to the smaller largest x: the fronts' x, not dominated points', bound it)."""
    a_front, b_front = brute_force_front(a), brute_force_front(b)
    low = min(min(p.x for p in a_front), min(p.x for p in b_front))
    high = min(max(p.x for p in a), max(p.x for p in b))
    if high == low:
        return brute_force_staircase(a, low) - brute_force_staircase(b, low)
    width = (high - low) / cells
    xs = [low + (i + 0.5) * width for i in range(cells)]
    return sum(brute_force_staircase(a, x) - brute_force_staircase(b, x) for x in xs) / cells


@settings(max_examples=60, deadline=None)
@given(point_lists, point_lists)
def test_mean_gap_equals_a_fine_riemann_sum_over_the_raw_points(a, b):
    expected = riemann_gap(a, b)
    got = mean_gap(a, b)
    # the Riemann sum misplaces at most one cell per breakpoint: error <= breakpoints * (y range 20) / cells
    assert got == pytest.approx(expected, abs=(len(a) + len(b) + 2) * 20 / 20000 + 1e-9)


def test_staircase_of_a_front_equals_that_of_all_points():
    rng = random.Random(0)
    points = [Point(rng.random(), rng.random()) for _ in range(50)]
    for x in [i / 20 for i in range(-2, 23)]:
        assert staircase(pareto_front(points), x) == pytest.approx(brute_force_staircase(points, x), nan_ok=True)


def test_mean_gap_by_hand():
    baseline = [Point(0.0, 1.0), Point(1.0, 0.0)]
    better = [Point(0.0, 1.5), Point(1.0, 0.5)]  # the baseline moved up by 0.5 everywhere
    assert mean_gap(better, baseline) == pytest.approx(0.5)
    assert mean_gap(baseline, better) == pytest.approx(-0.5)
    # a method whose one point reaches x = 0.5: compared over [0, 0.5], where the baseline reaches x or better only
    # with (1, 0) (its (0, 1) reaches x = 0 alone)
    assert mean_gap([Point(0.5, 2.0)], baseline) == pytest.approx(2.0)
    # over [-1, 0]: the baseline's staircase is -1 on (-1, 0], the other front's 5 everywhere
    assert mean_gap([Point(2.0, 5.0)], [Point(-1.0, 0.0), Point(0.0, -1.0)]) == pytest.approx(6.0)
    assert math.isnan(mean_gap([], baseline))


# two-sided 95 % (0.975 quantile) and 90 % (0.95 quantile) Student-t values, from standard tables
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 9: 2.262, 19: 2.093, 29: 2.045}
T_95 = {1: 6.314, 2: 2.920, 4: 2.132, 10: 1.812}


def test_t_quantiles_match_published_tables():
    for df, value in T_975.items():
        assert t_quantile(0.975, df) == pytest.approx(value, abs=1.5e-3), df
    for df, value in T_95.items():
        assert t_quantile(0.95, df) == pytest.approx(value, abs=1.5e-3), df


def test_t_interval_is_mean_plus_minus_t_times_standard_error():
    values = [0.1, 0.3, 0.2, math.nan]
    interval = t_interval(values)
    mean, sd = 0.2, 0.1
    assert interval.n == 3 and interval.mean == pytest.approx(mean)
    assert interval.low == pytest.approx(mean - 4.303 * sd / math.sqrt(3), abs=1e-4)
    assert interval.high == pytest.approx(mean + 4.303 * sd / math.sqrt(3), abs=1e-4)
    assert math.isnan(t_interval([1.0]).low)


def test_verdicts_need_three_seeds_and_an_interval_clear_of_zero():
    base = {s: [Point(0.0, 1.0), Point(1.0, 0.0)] for s in range(3)}
    lifted = {s: [Point(0.0, 1.0 + d), Point(1.0, d)] for s, d in enumerate([0.2, 0.25, 0.3])}
    assert compare("R", lifted, "DPO", base).outcome == PAYS
    sunk = {s: [Point(0.0, 1.0 - d), Point(1.0, -d)] for s, d in enumerate([0.2, 0.25, 0.3])}
    assert compare("R", sunk, "DPO", base).outcome == LOSES
    noisy = {s: [Point(0.0, 1.0 + d), Point(1.0, d)] for s, d in enumerate([0.2, -0.25, 0.1])}
    assert compare("R", noisy, "DPO", base).outcome == NOISE
    two = {s: lifted[s] for s in (0, 1)}
    verdict = compare("R", two, "DPO", base)
    assert verdict.outcome == TOO_FEW and sorted(verdict.gaps) == [0, 1]  # paired: only the seeds both have
