"""Pareto fronts of (in-distribution, worst-case) points, and the gap between two fronts at matched in-distribution.

Why: a robust objective trades in-distribution quality for worst-case quality, and so does stopping DPO early. A
robust method is only worth its cost where its front of achievable trade-offs lies *beyond* DPO's early-stopping
front, not where one of its points beats DPO's final weights. Both coordinates are oriented so that higher is better
(a loss is negated before it gets here).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Point:
    """One evaluated model: ``x`` its in-distribution metric, ``y`` its worst-case metric (both: higher is better);
    ``label`` says where it comes from (run, step)."""

    x: float
    y: float
    label: str = ""


def dominates(a: Point, b: Point) -> bool:
    """``a`` is at least as good as ``b`` on both axes and strictly better on one."""
    return a.x >= b.x and a.y >= b.y and (a.x > b.x or a.y > b.y)


def pareto_front(points: Iterable[Point]) -> list[Point]:
    """The undominated points (NaN points dropped), sorted by increasing ``x`` (hence decreasing ``y``).

    One sweep from the largest ``x`` down: a point survives when its ``y`` beats every point at larger or equal ``x``
    seen so far; exact duplicates of a surviving point survive too (neither dominates the other)."""
    finite = [p for p in points if not (math.isnan(p.x) or math.isnan(p.y))]
    front: list[Point] = []
    best: tuple[float, float] | None = None
    for point in sorted(finite, key=lambda p: (-p.x, -p.y)):
        if best is None or point.y > best[1] or (point.x, point.y) == best:
            front.append(point)
            if best is None or point.y > best[1]:
                best = (point.x, point.y)
    return front[::-1]


def staircase(front: Sequence[Point], x: float) -> float:
    """The best worst-case value reachable at in-distribution level ``x`` or better: max{y : p.x ≥ x} (NaN beyond the
    front's largest ``x``). The same function whether given a front or all of its points."""
    reachable = [p.y for p in front if p.x >= x]
    return max(reachable) if reachable else math.nan


def mean_gap(front: Sequence[Point], baseline: Sequence[Point]) -> float:
    """Mean vertical distance ``staircase(front) − staircase(baseline)`` over the in-distribution levels both can
    reach, from the lowest x of either front to the smaller of their largest x (every level up to a front's largest x
    is reachable "or better"); exact, since both staircases are piecewise constant.

    Positive: at matched in-distribution quality, ``front`` reaches a better worst case. NaN when a side has no
    point."""
    front, baseline = pareto_front(front), pareto_front(baseline)
    if not front or not baseline:
        return math.nan
    low = min(front[0].x, baseline[0].x)
    high = min(front[-1].x, baseline[-1].x)
    if high == low:
        return staircase(front, low) - staircase(baseline, low)
    edges = sorted({low, high, *(p.x for p in (*front, *baseline) if low < p.x < high)})
    total = 0.0
    for left, right in zip(edges, edges[1:], strict=False):
        middle = 0.5 * (left + right)  # both staircases are constant on (left, right]
        total += (right - left) * (staircase(front, middle) - staircase(baseline, middle))
    return total / (high - low)
