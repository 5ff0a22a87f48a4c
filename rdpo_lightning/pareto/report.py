"""``rdpo pareto``: the fronts of a set of TensorBoard runs, drawn (PNG and a TensorBoard figure) and judged.

    rdpo pareto --run DPO@0=runs/dpo/s0 --run DPO@1=runs/dpo/s1 --run DPO@2=runs/dpo/s2 \\
                --run KLDPO@0=runs/kl/s0 ... --metric loss --metric accuracy --out front.png

``--run METHOD[@SEED]=PATH``: every directory with event files under PATH is one run of METHOD with that seed
(several hyperparameter values of one method: several ``--run`` with the same METHOD@SEED, or one PATH above them).
A mixture in a tag may be spelled any way (``--train-mixture alpha=0.8`` reads ``val/reward/alpha=0.80``).
Every validation pass of every run is a point; a method's front per seed is the undominated set of its points; each
method is judged against ``--baseline`` (default DPO) by :mod:`rdpo_lightning.pareto.verdict`.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rdpo_lightning.pareto.events import (
    Axis,
    logged_instead,
    missing_tags,
    read_scalars,
    run_directories,
    run_points,
)
from rdpo_lightning.pareto.front import Point, pareto_front
from rdpo_lightning.pareto.verdict import Verdict, compare

#: name → (in-distribution axis, worst-case axis, higher is better): the tags RobustDPO and WorstCaseEvaluation log
PRESETS: dict[str, tuple[str, str, bool]] = {
    "loss": ("val/loss", "val/worst_case/loss", False),
    "accuracy": ("val/rewards/accuracies", "val/worst_case/accuracy", True),
    "reward": ("val/reward/{train}", "val/reward/worst_case", True),
}


@dataclass(frozen=True)
class MetricAxes:
    """What one panel and one verdict column compare: a name and its two axes."""

    name: str
    x: Axis
    y: Axis


def preset(name: str, train_mixture: str | None = None) -> MetricAxes:
    x, y, higher = PRESETS[name]
    if "{train}" in x:
        if train_mixture is None:
            raise ValueError(f"--metric {name} needs --train-mixture (the training mixture's name, e.g. alpha=0.10)")
        x = x.format(train=train_mixture)
    return MetricAxes(name, Axis.parse(x, higher), Axis.parse(y, higher))


@dataclass(frozen=True)
class RunSpec:
    method: str
    seed: int
    path: Path

    @classmethod
    def parse(cls, text: str) -> RunSpec:
        """``METHOD[@SEED]=PATH`` (seed 0 when omitted)."""
        if "=" not in text:
            raise ValueError(f"--run {text!r}: expected METHOD[@SEED]=PATH")
        name, path = text.split("=", 1)
        method, _, seed = name.partition("@")
        if not method or (seed and not seed.isdigit()):
            raise ValueError(f"--run {text!r}: expected METHOD[@SEED]=PATH with an integer SEED")
        return cls(method, int(seed or 0), Path(path))


#: method → seed → points
Collected = dict[str, dict[int, list[Point]]]


def collect(specs: Sequence[RunSpec], metric: MetricAxes) -> Collected:
    """Every validation pass of every run as a point of its method and seed; a run without the axes' tags is an
    error naming them (not an empty front)."""
    out: Collected = {}
    for spec in specs:
        for directory in run_directories(spec.path):
            scalars = read_scalars(directory)
            x, y = metric.x.spelled_as_logged(scalars), metric.y.spelled_as_logged(scalars)
            missing = missing_tags(scalars, x, y)
            if missing:
                raise ValueError(
                    f"run {directory} ({spec.method}) never logged {missing} (needed by {metric.name});"
                    f" {logged_instead(scalars, missing[0])}"
                )
            points = run_points(scalars, x, y, label=f"{spec.method} {directory.name}")
            out.setdefault(spec.method, {}).setdefault(spec.seed, []).extend(points)
    return out


def verdicts(collected: Collected, baseline: str, confidence: float = 0.95, min_seeds: int = 3) -> list[Verdict]:
    if baseline not in collected:
        raise ValueError(f"baseline {baseline!r} is not among the runs' methods {sorted(collected)}")
    return [
        compare(method, seeds, baseline, collected[baseline], confidence, min_seeds)
        for method, seeds in collected.items()
        if method != baseline
    ]


def _signed(value: float, axis: Axis) -> float:
    """Back from the higher-is-better orientation to the axis's own units."""
    return value if axis.higher_is_better else -value


def format_verdicts(metric: MetricAxes, results: Sequence[Verdict]) -> str:
    """One line per method: per-seed gaps, mean with interval, outcome; gaps are worst-case improvements (positive:
    better than the baseline at matched in-distribution quality), in the worst-case metric's units."""
    lines = [
        f"{metric.name}: x = {metric.x.text}, y = {metric.y.text}; gap = mean worst-case improvement over the "
        "baseline's front at matched in-distribution level (positive = better)",
    ]
    width = max([len("method")] + [len(v.method) for v in results])
    header = f"{'method':<{width}}  {'seeds':>5}  {'per-seed gaps':<32}  {'mean gap [interval]':<30}  verdict"
    lines += [header, "-" * len(header)]
    for v in results:
        gaps = " ".join("n/a" if math.isnan(g) else f"{g:+.4f}" for g in v.gaps.values())
        i = v.interval
        level = f"{100 * i.confidence:g}%"
        mean = "n/a" if math.isnan(i.mean) else f"{i.mean:+.4f}"
        bounds = "" if math.isnan(i.low) else f" [{i.low:+.4f}, {i.high:+.4f}] {level}"
        lines.append(f"{v.method:<{width}}  {i.n:>5}  {gaps:<32}  {mean + bounds:<30}  {v.outcome}")
    return "\n".join(lines)


def front_figure(panels: Sequence[tuple[MetricAxes, Collected]], baseline: str | None = None):
    """One panel per metric: every point faint, each method's per-seed fronts as staircases, the pooled front bold."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.2 * len(panels), 4.4), layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, (metric, collected) in zip(axes, panels, strict=True):
        methods = sorted(collected, key=lambda m: (m == baseline, m))  # the baseline last: drawn on top, in black
        for index, method in enumerate(methods):
            colour = "black" if method == baseline else colormaps["tab10"](index % 10)
            everything = [p for points in collected[method].values() for p in points]
            ax.scatter(
                [_signed(p.x, metric.x) for p in everything],
                [_signed(p.y, metric.y) for p in everything],
                s=8,
                color=colour,
                alpha=0.25,
            )
            for points in collected[method].values():
                _draw_staircase(ax, pareto_front(points), metric, colour, width=0.8, alpha=0.5, label=None)
            label = f"{method} ({len(collected[method])} seeds)"
            _draw_staircase(ax, pareto_front(everything), metric, colour, width=2.2, alpha=1.0, label=label)
        ax.set_xlabel(f"in-distribution: {metric.x.text}", fontsize="small")
        ax.set_ylabel(f"worst case: {metric.y.text}", fontsize="small")
        better = "→ / ↑" if metric.x.higher_is_better else "← / ↓"
        ax.set_title(f"{metric.name} fronts (better: {better})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
    return figure


def _draw_staircase(ax, front: list[Point], metric: MetricAxes, colour, width: float, alpha: float, label) -> None:
    if not front:
        return
    xs = [_signed(p.x, metric.x) for p in front]
    ys = [_signed(p.y, metric.y) for p in front]
    ax.step(xs, ys, where="pre", color=colour, linewidth=width, alpha=alpha, label=label)
    ax.plot(xs, ys, "o", color=colour, markersize=3 * width, alpha=alpha)


def write_tensorboard(directory: Path, figure, text: str, step: int = 0) -> None:
    """The figure as ``pareto/fronts`` and the verdict table as ``pareto/verdicts`` in a TensorBoard run."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(directory))
    try:
        writer.add_figure("pareto/fronts", figure, step, close=False)
        writer.add_text("pareto/verdicts", "\n".join("    " + line for line in text.splitlines()), step)
    finally:
        writer.close()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="rdpo pareto", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", action="append", required=True, help="METHOD[@SEED]=PATH (repeat)")
    p.add_argument("--baseline", default="DPO", help="the method every other is judged against (default DPO)")
    p.add_argument("--metric", action="append", choices=sorted(PRESETS), help="preset axes (repeat); default loss")
    p.add_argument("--x", help="custom in-distribution axis: a tag or 'w*tag + w*tag'")
    p.add_argument("--y", help="custom worst-case axis (with --x)")
    p.add_argument("--lower-is-better", action="store_true", help="the custom axes are losses")
    p.add_argument("--train-mixture", help="training mixture name, for --metric reward (e.g. alpha=0.10)")
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument("--min-seeds", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("pareto_fronts.png"), help="PNG of the fronts")
    p.add_argument("--tensorboard", type=Path, help="also write the figure and table to this TensorBoard directory")
    args = p.parse_args(argv)
    if (args.x is None) != (args.y is None):
        p.error("--x and --y go together")
    if not 0 < args.confidence < 1:
        p.error("--confidence must lie in (0, 1)")
    return args


def main(argv: Sequence[str] | None = None) -> str:
    args = parse_args(argv)
    try:
        specs = [RunSpec.parse(text) for text in args.run]
        metrics = [preset(name, args.train_mixture) for name in args.metric or ([] if args.x else ["loss"])]
        if args.x:
            higher = not args.lower_is_better
            metrics.append(MetricAxes("custom", Axis.parse(args.x, higher), Axis.parse(args.y, higher)))
        panels = [(metric, collect(specs, metric)) for metric in metrics]
        tables = [format_verdicts(m, verdicts(c, args.baseline, args.confidence, args.min_seeds)) for m, c in panels]
    except (ValueError, FileNotFoundError) as error:
        print(f"rdpo pareto: error: {error}", file=sys.stderr)
        raise SystemExit(2) from error
    text = "\n\n".join(tables)
    print(text)
    figure = front_figure(panels, args.baseline)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=110)
    if args.tensorboard is not None:
        write_tensorboard(args.tensorboard, figure, text)
    return text


if __name__ == "__main__":
    main()
