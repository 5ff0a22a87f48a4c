"""Presenting per-mixture results: the shift curve (metric against α) and the terminal table.

Mixtures named ``alpha=<number>`` (the two-attribute family of the attribute world) are placed at that α on a
numeric axis; any other names are placed in their validation order, one tick per name.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from matplotlib.figure import Figure

ALPHA_NAME = re.compile(r"^alpha=([-+0-9.eE]+)$")


@dataclass
class MixtureResult:
    """Metrics of the current model on one mixture (NaN where not measured)."""

    name: str
    loss: float = math.nan
    accuracy: float = math.nan
    margin: float = math.nan
    reward: float = math.nan
    in_distribution: bool = False


@dataclass
class ShiftReport:
    """All mixtures of one validation pass, with the worst case of each metric and where it lies."""

    mixtures: list[MixtureResult]
    worst: dict[str, tuple[float, str]] = field(default_factory=dict)  # metric -> (value, mixture name)
    step: int = 0


# Which way is worse, per metric: the worst case of a loss is its maximum, of the others the minimum.
WORSE_IS_HIGHER = {"loss": True, "accuracy": False, "margin": False, "reward": False}


def worst_case(mixtures: list[MixtureResult], metric: str) -> tuple[float, str] | None:
    """(worst value, mixture name) over the mixtures that measured ``metric``; None if none did."""
    return worst_of({m.name: getattr(m, metric) for m in mixtures}, metric)


def worst_of(values: dict[str, float], metric: str) -> tuple[float, str] | None:
    """(worst value, its name) over named values of ``metric`` that were measured (not NaN); None if none were."""
    measured = {name: value for name, value in values.items() if not math.isnan(value)}
    if not measured:
        return None
    pick = max if WORSE_IS_HIGHER[metric] else min
    name = pick(measured, key=measured.__getitem__)
    return measured[name], name


def mixture_coordinates(names: list[str]) -> tuple[list[float], str]:
    """x positions of the mixtures and the axis label: α when every name is ``alpha=<number>``, else the index."""
    matches = [ALPHA_NAME.match(name) for name in names]
    if names and all(matches):
        return [float(m.group(1)) for m in matches], "α"
    return [float(i) for i in range(len(names))], "mixture"


def shift_figure(report: ShiftReport) -> Figure:
    """One panel per measured metric (loss, accuracy, reward) against the mixture, the worst case marked."""
    metrics = [m for m in ("loss", "accuracy", "reward") if any(not math.isnan(getattr(r, m)) for r in report.mixtures)]
    metrics = metrics or ["loss"]
    figure = Figure(figsize=(4.0 * len(metrics), 3.4), layout="constrained")
    axes = figure.subplots(1, len(metrics), squeeze=False)[0]
    xs, xlabel = mixture_coordinates([r.name for r in report.mixtures])
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    for ax, metric in zip(axes, metrics, strict=True):
        points = [(xs[i], getattr(report.mixtures[i], metric), report.mixtures[i]) for i in order]
        points = [p for p in points if not math.isnan(p[1])]
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", color="tab:blue", label="per mixture")
        for x, y, result in points:
            if result.in_distribution:
                ax.plot([x], [y], "*", color="tab:green", markersize=14, label="training mixture")
        if metric in report.worst:
            value, name = report.worst[metric]
            ax.axhline(value, color="tab:red", linestyle="--", linewidth=1, label=f"worst case ({name})")
        ax.set_title(f"{metric} (step {report.step})")
        ax.set_xlabel(xlabel)
        if xlabel == "mixture":
            ax.set_xticks(xs, [r.name for r in report.mixtures], rotation=30, ha="right")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return figure


def format_table(report: ShiftReport) -> str:
    """A fixed-width table: one row per mixture (the training mixture marked), then the worst case of each column."""
    columns = [
        c
        for c in ("loss", "accuracy", "margin", "reward")
        if any(not math.isnan(getattr(r, c)) for r in report.mixtures)
    ]
    names = [r.name + (" (train)" if r.in_distribution else "") for r in report.mixtures]
    width = max([len(n) for n in names] + [len("worst case"), len("mixture")])
    cell = max([12] + [len(report.worst[c][1]) + 2 for c in columns if c in report.worst])  # 'at' names stay apart
    lines = [f"{'mixture':<{width}}" + "".join(f"{c:>{cell}}" for c in columns)]
    lines.append("-" * len(lines[0]))
    for name, result in zip(names, report.mixtures, strict=True):
        lines.append(f"{name:<{width}}" + "".join(f"{getattr(result, c):>{cell}.4f}" for c in columns))
    lines.append("-" * len(lines[0]))
    lines.append(
        f"{'worst case':<{width}}"
        + "".join(f"{report.worst[c][0]:>{cell}.4f}" if c in report.worst else f"{'':>{cell}}" for c in columns)
    )
    lines.append(
        f"{'  at':<{width}}"
        + "".join(f"{report.worst[c][1]:>{cell}}" if c in report.worst else f"{'':>{cell}}" for c in columns)
    )
    return "\n".join(lines)
