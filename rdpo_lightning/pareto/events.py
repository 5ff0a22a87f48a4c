"""Points from TensorBoard runs: every validation pass is one (in-distribution, worst-case) point.

An axis is a scalar tag (``val/worst_case/loss``) or a weighted sum of tags (``0.9*val/alpha=0.10/accuracy +
0.1*val/alpha=0.90/accuracy``: the population average over two groups of users), read from the real event files that
:class:`~rdpo_lightning.callbacks.WorstCaseEvaluation` and the module write.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from rdpo_lightning.pareto.front import Point

EVENT_GLOB = "events.out.tfevents.*"
_TERM = re.compile(r"^\s*(?:([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*\*\s*)?([^*+\s][^*+]*?)\s*$")


@dataclass(frozen=True)
class Axis:
    """A weighted sum of scalar tags, and whether a larger value is better (False for losses)."""

    terms: tuple[tuple[float, str], ...]
    higher_is_better: bool = True

    @classmethod
    def parse(cls, spec: str, higher_is_better: bool = True) -> Axis:
        """``tag`` or ``w1*tag1 + w2*tag2 ...`` (tags may not contain ``*`` or ``+``)."""
        terms = []
        for part in spec.split("+"):
            match = _TERM.match(part)
            if match is None:
                raise ValueError(f"cannot read axis {spec!r}: each term is 'tag' or 'weight*tag'")
            terms.append((float(match.group(1) or 1.0), match.group(2)))
        return cls(tuple(terms), higher_is_better)

    @property
    def text(self) -> str:
        return " + ".join(tag if weight == 1.0 else f"{weight:g}*{tag}" for weight, tag in self.terms)

    def values(self, scalars: dict[str, dict[int, float]]) -> dict[int, float]:
        """step → value at every step where all of the axis's tags were logged (in the axis's own units)."""
        per_tag = [scalars.get(tag, {}) for _, tag in self.terms]
        steps = set.intersection(*(set(values) for values in per_tag))
        return {s: sum(w * values[s] for (w, _), values in zip(self.terms, per_tag, strict=True)) for s in steps}


def run_directories(path: Path) -> list[Path]:
    """Every directory at or under ``path`` that holds TensorBoard event files, each one run."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such run directory: {path}")
    found = sorted({event.parent for event in path.rglob(EVENT_GLOB)})
    if not found:
        raise FileNotFoundError(f"no TensorBoard event files ({EVENT_GLOB}) under {path}")
    return found


def read_scalars(run: Path) -> dict[str, dict[int, float]]:
    """tag → {step: value} of one run directory's event files (the last value wins where a step repeats)."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    out: dict[str, dict[int, float]] = {}
    for event_file in sorted(Path(run).glob(EVENT_GLOB)):
        accumulator = EventAccumulator(str(event_file), size_guidance={SCALARS: 0})  # 0: keep every event
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            for event in accumulator.Scalars(tag):
                out.setdefault(tag, {})[event.step] = float(event.value)
    return out


def run_points(scalars: dict[str, dict[int, float]], x: Axis, y: Axis, label: str = "") -> list[Point]:
    """One point per step that logged both axes, oriented so that higher is better on each."""
    xs, ys = x.values(scalars), y.values(scalars)
    sign_x, sign_y = (1.0 if axis.higher_is_better else -1.0 for axis in (x, y))
    return [
        Point(sign_x * xs[step], sign_y * ys[step], f"{label} step {step}".strip())
        for step in sorted(set(xs) & set(ys))
        if not (math.isnan(xs[step]) or math.isnan(ys[step]))
    ]


def missing_tags(scalars: dict[str, dict[int, float]], *axes: Axis) -> list[str]:
    """The axes' tags a run never logged (to name them in an error instead of silently giving no points)."""
    return [tag for axis in axes for _, tag in axis.terms if tag not in scalars]
