"""Points from TensorBoard runs: every validation pass is one (in-distribution, worst-case) point.

An axis is a scalar tag (``val/worst_case/loss``) or a weighted sum of tags (``0.9*val/alpha=0.10/accuracy +
0.1*val/alpha=0.90/accuracy``: the population average over two groups of users), read from the real event files that
:class:`~rdpo_lightning.callbacks.WorstCaseEvaluation` and the module write.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from rdpo_lightning.pareto.front import Point

EVENT_GLOB = "events.out.tfevents.*"
_NUMBER = re.compile(r"(?<==)[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
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

    def spelled_as_logged(self, logged: Iterable[str]) -> Axis:
        """The axis with each tag a run did not log replaced by the one it did log under another spelling of the
        same mixture (``val/reward/alpha=0.8`` → ``val/reward/alpha=0.80``, :func:`mixture_spelling`)."""
        logged = set(logged)
        spellings: dict[str, list[str]] = {}
        for tag in logged:
            spellings.setdefault(mixture_spelling(tag), []).append(tag)
        terms = []
        for weight, tag in self.terms:
            same = spellings.get(mixture_spelling(tag), [])
            terms.append((weight, same[0] if tag not in logged and len(same) == 1 else tag))
        return Axis(tuple(terms), self.higher_is_better)

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


def mixture_spelling(tag: str) -> str:
    """One spelling for every way of writing a tag's mixture names: in each path segment that names one
    (``alpha=0.80``, ``anger=0.20,fear=0.80``) every number is read as a float and the weights are put in order, so
    that ``alpha=0.8`` and ``alpha=0.80``, or ``fear=0.8,anger=0.2`` and ``anger=0.20,fear=0.80``, are one mixture."""
    segments = []
    for segment in tag.split("/"):
        if "=" in segment:
            items = (_NUMBER.sub(lambda number: repr(float(number.group())), item) for item in segment.split(","))
            segment = ",".join(sorted(items))
        segments.append(segment)
    return "/".join(segments)


def logged_instead(scalars: dict[str, dict[int, float]], missing: str) -> str:
    """What a run logged beside a tag it never logged: the names under the tag's parent, and the nearest of them."""
    parent = missing.rsplit("/", 1)[0] + "/" if "/" in missing else ""
    names = sorted(tag[len(parent) :] for tag in scalars if tag.startswith(parent) and "/" not in tag[len(parent) :])
    if not names:
        near = difflib.get_close_matches(missing, sorted(scalars), n=1, cutoff=0.5)
        return f"it logged nothing under {parent or 'the top level'}" + (f"; did you mean {near[0]!r}?" if near else "")
    near = difflib.get_close_matches(missing[len(parent) :], names, n=1, cutoff=0.5)
    hint = f"; did you mean {parent + near[0]!r}?" if near else ""
    return f"it logged under {parent}: {', '.join(names)}{hint}"
