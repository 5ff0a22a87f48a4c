"""When does robust preference optimisation pay? Pareto fronts against DPO's early-stopping front, three shifts.

Why this exists
---------------
``benchmarks/shift.py`` compared robust methods with DPO's *final* weights, and found that DPO trained for fewer
epochs matches KLDPO at the same in-distribution loss. The fair baseline is DPO's whole early-stopping curve. Here
every method logs a validation pass every ``--val-every`` steps to real TensorBoard files; ``rdpo pareto``'s own code
(:mod:`rdpo_lightning.pareto`) reads them back, builds each method's front of (in-distribution, worst-case) points per
seed and judges it against DPO's front with the same seed (same data, same initial weights): the per-seed mean
staircase gap at matched in-distribution level, a t-interval over seeds, "pays" only when the interval clears zero.

Scenarios (``--scenario``)
--------------------------
* ``label``: the label shift of shift.py: trained at α₀ = 0.1 (anger/fear), evaluated at α ∈ ``--alphas``; metrics:
  loss, accuracy, generation reward r(α). Methods: DPO, KLDPO (``--taus``), WDPO (``--rhos``).
* ``group``: two groups of users with known group ids, 90 % labelling at α = 0.1 and 10 % at α = 0.9 (the minority
  weighs the other attribute); in-distribution = the population (0.9·majority + 0.1·minority), worst case = the worse
  group. Methods: DPO, KLDPO, DrDPO (``--beta-primes``), GroupDRO (``--etas``), CVaR (``--worst-fractions``) and χ²
  (``--chi-rhos``).
* ``input``: trained at α₀ = 0.1 on the world's usual inputs; evaluated on the usual inputs and on inputs from
  another generator (longer responses, more neutral words, more mixed attributes), labelled by the same reward at α₀
  (``AttributeWorldDataModule(input_shifts=...)``); metrics: loss, accuracy. Methods: DPO, KLDPO, WDPO.
* ``mixture``: the label shift again, with the methods that read each pair's attribute scores: DPO, KLDPO, WDPO,
  MixtureDRO (worst mixture of the interval [α₀ − r, α₀ + r], ``--radii``) and, per radius, ``Mean``: the mean over the
  same mixtures (DPO on labels averaged over the set), without which a gain cannot be told from seeing more mixtures.
  Both use Bradley–Terry labels at the data's own ``--label-temperature``. Also judged: MixtureDRO against Mean at
  each radius.
* ``simplex``: the label shift beyond a line: a world of three attributes (``--simplex-attributes``, default
  anger, fear, joy), trained at α₀ = ``--simplex-alpha`` (default (0.8, 0.1, 0.1), near a corner) and judged at the
  simplex's corners, edge midpoints and centre. Methods: DPO, KLDPO, WDPO, and at each radius of ``--radii`` (the
  simplex ball, ``family: simplex``) MixtureDRO with ``aggregate: max`` and ``smooth`` and its control Mean. A small
  radius leaves most judged mixtures *outside* the set (what a user who guesses the radius too small gets); the report
  says, per radius, which judged mixtures the set holds. Also judged: MixtureDRO max and smooth against Mean.

    PYTHONPATH=$PWD python benchmarks/pareto.py --scenario label     # default size: see benchmarks/README.md
    PYTHONPATH=$PWD python benchmarks/pareto.py --scenario group --tiny   # smoke test ($TMPDIR/rdpo_lightning_tiny)

A long run can be split over processes that share ``--runs``: each trains its ``--train-seeds``, a fit already done
there (its ``done`` marker) is not trained again, and a last call with ``--train-seeds ''`` only judges.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: shift.py's helpers sit beside it

import shift  # noqa: E402

SCENARIOS = ("label", "group", "input", "mixture", "simplex")
#: scenarios trained at one mixture α₀ and judged across ``--alphas``
LABEL_SHIFT = ("label", "mixture")
#: scenarios with the methods that read each pair's attribute scores (MixtureDRO, Mean)
SCORED = ("mixture", "simplex")
TRAIN = "alpha=0.10"
MINORITY = "alpha=0.90"
#: the input shifts of the ``input`` scenario: each a change of the world's prompt/response generator
INPUT_SHIFTS = {
    "long": {"response_words": 16},
    "neutral": {"neutral_share": [0.6, 0.85]},
    "mixed": {"concentration": 3.0},
}


@dataclass(frozen=True)
class Config:
    """One training configuration: family (DPO, KLDPO, ...), its hyperparameter and its robust strategy."""

    family: str
    hparam: str
    make_robust: Callable[[], object] = field(compare=False, repr=False)

    @property
    def name(self) -> str:
        return f"{self.family} {self.hparam}".strip()

    @property
    def directory(self) -> str:
        return self.name.replace(" ", "_").replace("=", "")


def configurations(args: argparse.Namespace) -> list[Config]:
    """DPO, then every robust family of the scenario at every value of its sweep."""
    import rdpo_lightning.robust as robust

    configs = [Config("DPO", "", robust.NoRobust)]
    configs += [Config("KLDPO", f"tau={t:g}", lambda t=t: robust.KLReweighter(tau=t)) for t in args.taus]
    if args.scenario in ("label", "input", *SCORED):
        configs += [
            Config("WDPO", f"rho={r:g}", lambda r=r: robust.WassersteinPenalty(rho=r, mode="exact")) for r in args.rhos
        ]
    if args.scenario == "group":
        configs += [Config("DrDPO", f"beta'={b:g}", lambda b=b: robust.DrDPO(beta_prime=b)) for b in args.beta_primes]
        configs += [Config("GroupDRO", f"eta={e:g}", lambda e=e: robust.GroupDRO(2, eta=e)) for e in args.etas]
        if hasattr(robust, "CVaR"):  # the strategies of another issue, when they have landed
            configs += [
                Config("CVaR", f"worst={f:g}", lambda f=f: robust.CVaR(worst_fraction=f)) for f in args.worst_fractions
            ]
        if hasattr(robust, "ChiSquareDRO"):
            configs += [
                Config("ChiSquare", f"rho={r:g}", lambda r=r: robust.ChiSquareDRO(rho=r)) for r in args.chi_rhos
            ]
    if args.scenario in SCORED:
        configs += [mixture_config("MixtureDRO", "max", r, args) for r in args.radii]
        configs += [mixture_config("Mean", "mean", r, args) for r in args.radii if r > 0]  # at r = 0 both are one
    if args.scenario == "simplex":
        configs += [mixture_config("Smooth", "smooth", r, args) for r in args.radii if r > 0]
    return configs


def mixture_config(family: str, aggregate: str, radius: float, args: argparse.Namespace) -> Config:
    """MixtureDRO over the ball of ``radius`` around α₀ (the interval, or the simplex ball of the ``simplex``
    scenario) with the data's own Bradley–Terry labels."""
    import rdpo_lightning.robust as robust

    family_of_set = "simplex" if args.scenario == "simplex" else None

    def make() -> object:
        return robust.MixtureDRO(
            radius=radius,
            steps=args.mixture_steps,
            family=family_of_set,
            label_temperature=args.label_temperature,
            aggregate=aggregate,
        )

    return Config(family, f"r={radius:g}", make)


def metric_axes(args: argparse.Namespace) -> list:
    """The (in-distribution, worst-case) axes of each metric, as tags and weighted sums of tags."""
    from rdpo_lightning.pareto.events import Axis
    from rdpo_lightning.pareto.report import MetricAxes, preset

    scenario = args.scenario
    if scenario in LABEL_SHIFT:
        return [preset("loss"), preset("accuracy"), preset("reward", TRAIN)]
    if scenario == "simplex":
        return [preset("loss"), preset("accuracy"), preset("reward", simplex_mixtures(args)[0])]
    if scenario == "group":

        def population(tag: str) -> str:
            return f"0.9*{tag.format(TRAIN)} + 0.1*{tag.format(MINORITY)}"

        return [
            MetricAxes(
                m, Axis.parse(population(f"val/{{}}/{m}"), m != "loss"), Axis.parse(f"val/worst_case/{m}", m != "loss")
            )
            for m in ("loss", "accuracy")
        ] + [MetricAxes("reward", Axis.parse(population("val/reward/{}")), Axis.parse("val/reward/worst_case"))]
    return [
        MetricAxes(m, Axis.parse(f"val/{TRAIN}/{m}", m != "loss"), Axis.parse(f"val/worst_case/{m}", m != "loss"))
        for m in ("loss", "accuracy")
    ]


# --- the simplex scenario's mixtures -------------------------------------------------------------------------------
def judged_simplex_weights(k: int) -> list[list[float]]:
    """The mixtures the ``simplex`` scenario is judged at: the K corners, the K(K−1)/2 edge midpoints, the centre."""
    corners = [[float(i == j) for j in range(k)] for i in range(k)]
    midpoints = [[0.5 * (j in (a, b)) for j in range(k)] for a in range(k) for b in range(a + 1, k)]
    return corners + midpoints + [[1.0 / k] * k]


def simplex_mixtures(args: argparse.Namespace) -> tuple[str, list[str]]:
    """The training mixture's logged name and the judged mixtures' names (as the DataModule names them)."""
    from rdpo_lightning.mixtures import vector_name

    attributes = args.simplex_attributes
    return vector_name(args.simplex_alpha, attributes), [
        vector_name(w, attributes) for w in judged_simplex_weights(len(attributes))
    ]


def set_coverage(args: argparse.Namespace) -> str:
    """Per radius, which judged mixtures the simplex ball around α₀ holds (total variation ½‖α − α₀‖₁ ≤ r): the
    mixtures outside a set are those its worst case never saw."""
    import numpy as np

    alpha0 = np.asarray(args.simplex_alpha)
    judged = judged_simplex_weights(len(alpha0))
    names = simplex_mixtures(args)[1]
    distance = [0.5 * float(np.abs(np.asarray(w) - alpha0).sum()) for w in judged]
    lines = ["Judged mixtures and their distance to alpha_0 (total variation); 'in' = inside the set of that radius"]
    lines.append(f"{'mixture':<36}{'distance':>9}" + "".join(f"{'r=' + format(r, 'g'):>8}" for r in args.radii))
    for name, d in zip(names, distance, strict=True):
        lines.append(f"{name:<36}{d:>9.3f}" + "".join(f"{'in' if d <= r + 1e-9 else 'OUT':>8}" for r in args.radii))
    return "\n".join(lines)


# --- one fit, logged to TensorBoard -------------------------------------------------------------------------------
def make_datamodule(args: argparse.Namespace, seed: int, cache_dir: str):
    """shift.py's world with the scenario's training and validation sets (longer sequences: the input shift's)."""
    if args.scenario in LABEL_SHIFT:
        return shift.make_datamodule(args, seed, cache_dir, max_length=48)
    if args.scenario == "simplex":
        from rdpo_lightning.data.world import AttributeWorld

        world = AttributeWorld(attributes=tuple(args.simplex_attributes))
        mixtures = dict(attribute_a=None, attribute_b=None, train_alpha=None, val_alphas=None)
        judged = judged_simplex_weights(len(world.attributes))
        mixtures |= dict(train_mixtures=[list(args.simplex_alpha)], val_mixtures=judged)
        return shift.make_datamodule(args, seed, cache_dir, world=world, max_length=48, **mixtures)
    if args.scenario == "group":
        groups = dict(train_alpha=None, train_mixtures=[0.1, 0.9], train_shares=[0.9, 0.1])
        return shift.make_datamodule(args, seed, cache_dir, val_alphas=[], max_length=48, **groups)
    return shift.make_datamodule(args, seed, cache_dir, val_alphas=[], input_shifts=INPUT_SHIFTS, max_length=48)


def fit(args: argparse.Namespace, config: Config, seed: int, runs: Path, cache_dir: str) -> float:
    """Train one configuration with a validation pass every ``--val-every`` steps; returns the wall seconds."""
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger

    from rdpo_lightning.callbacks import GenerationEvaluation, WorstCaseEvaluation
    from rdpo_lightning.training.quiet import quiet_trainer

    L.seed_everything(seed, verbose=False)
    datamodule = make_datamodule(args, seed, cache_dir)
    datamodule.batch_size = args.batch_size // args.accumulate  # the same optimizer batch in micro-batches
    scope = {"accumulate_grad_batches": args.accumulate, "objective_scope": args.objective_scope}
    module = shift.make_module(args, config.make_robust(), **scope)
    generation = None
    if args.scenario != "input":
        generation = GenerationEvaluation(
            num_prompts=args.gen_prompts, batch_size=args.gen_prompts, max_new_tokens=args.gen_tokens, seed=seed
        )
    trainer = quiet_trainer(
        accelerator=args.accelerator,
        devices=1,
        max_epochs=args.epochs,
        val_check_interval=args.val_every * args.accumulate,  # counts loader batches
        log_every_n_steps=args.val_every,
        logger=TensorBoardLogger(runs, name=config.directory, version=f"seed{seed}"),
        callbacks=[WorstCaseEvaluation(generation=generation, plot_name=None, print_table=False)],
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule)
    return time.perf_counter() - start


def done_marker(runs: Path, config: Config, seed: int) -> Path:
    """The file a finished fit leaves in its run directory (a killed fit leaves none and is trained again)."""
    return runs / config.directory / f"seed{seed}" / "done"


# --- reading the runs back and judging them --------------------------------------------------------------------------
def judge_runs(args: argparse.Namespace, configs: list[Config], runs: Path) -> dict:
    """Per metric: every point (per configuration and seed), and the verdicts of each configuration and of each
    family (its configurations pooled) against DPO, all through :mod:`rdpo_lightning.pareto`."""
    from rdpo_lightning.pareto.report import RunSpec, collect, verdicts

    specs = [RunSpec(c.name, seed, runs / c.directory / f"seed{seed}") for c in configs for seed in range(args.seeds)]
    family = {c.name: c.family for c in configs}
    out = {}
    for metric in metric_axes(args):
        by_config = collect(specs, metric)
        by_family: dict[str, dict[int, list]] = {}
        for name, seeds in by_config.items():
            for seed, points in seeds.items():
                by_family.setdefault(family[name], {}).setdefault(seed, []).extend(points)
        out[metric.name] = {
            "axes": metric,
            "points": by_config,
            "families": by_family,
            "config_verdicts": verdicts(by_config, "DPO", args.confidence),
            "family_verdicts": verdicts(by_family, "DPO", args.confidence),
            "against_mean": against_mean(by_config, args),
        }
    return out


def against_mean(by_config: dict, args: argparse.Namespace) -> list:
    """MixtureDRO's front (and Smooth's) against Mean's at each radius: the gain of the worst case over seeing the
    same mixtures."""
    from rdpo_lightning.pareto.report import verdicts

    if args.scenario not in SCORED:
        return []
    judged = []
    for r in (r for r in args.radii if r > 0):
        for family in ("MixtureDRO", "Smooth"):
            if f"{family} r={r:g}" in by_config:
                pair = {name: by_config[name] for name in (f"{family} r={r:g}", f"Mean r={r:g}")}
                judged += verdicts(pair, f"Mean r={r:g}", args.confidence)
    return judged


def final_pass_table(judged: dict, configs: list[Config]) -> str:
    """Context: the last validation pass of each configuration (mean over seeds), in the metrics' own units."""
    lines = []
    header = f"{'configuration':<22}" + "".join(f"{m + ' in-dist':>17}{m + ' worst':>15}" for m in judged)
    lines += [header, "-" * len(header)]
    for config in configs:
        row = f"{config.name:<22}"
        for entry in judged.values():
            axes = entry["axes"]
            last = [
                max(points, key=lambda p: int(p.label.rsplit(" ", 1)[1]))
                for points in entry["points"][config.name].values()
            ]
            sx = 1 if axes.x.higher_is_better else -1
            sy = 1 if axes.y.higher_is_better else -1
            row += f"{shift.cell([sx * p.x for p in last]):>17}{shift.cell([sy * p.y for p in last]):>15}"
        lines.append(row)
    return "\n".join(lines)


def format_report(args: argparse.Namespace, configs: list[Config], judged: dict, seconds: float) -> str:
    from rdpo_lightning.pareto.report import format_verdicts

    size = "TINY smoke-test size" if args.tiny else ("SMALLER configuration: " + args.label if args.label else "")
    head = (
        f"Pareto fronts, scenario '{args.scenario}'{' (' + size + ')' if size else ''}: {args.seeds} seeds; "
        f"{args.num_train} training pairs, {args.num_val} held-out per set, {args.epochs} epochs, batch "
        f"{args.batch_size}"
        + (
            f" ({args.batch_size // args.accumulate} pairs x {args.accumulate} micro-batches, objective over the"
            f" {args.objective_scope.replace('_', ' ')})"
            if args.accumulate > 1
            else ""
        )
        + f", validation every {args.val_every} steps; GPT-2 {args.layers} layers d={args.hidden}, lr "
        f"{args.lr:g}, beta {args.beta:g}; wall time {seconds / 60:.1f} min on {platform.machine()} with "
        f"{os.cpu_count()} CPUs ({args.cpu_name}); every validation pass of every run is a point"
    )
    sections = [head]
    if args.scenario == "simplex":
        sections.append(
            f"Attributes {', '.join(args.simplex_attributes)}; alpha_0 = {simplex_mixtures(args)[0]}; MixtureDRO's sets"
            f" are simplex balls ({args.mixture_steps} lattice steps per radius, extreme points included)\n"
            + set_coverage(args)
        )
    for entry in judged.values():
        sections.append("Families (all hyperparameter values pooled) against DPO's early-stopping front\n"
                        + format_verdicts(entry["axes"], entry["family_verdicts"]))  # fmt: skip
        sections.append("Each configuration against DPO's early-stopping front\n"
                        + format_verdicts(entry["axes"], entry["config_verdicts"]))  # fmt: skip
        if entry["against_mean"]:
            sections.append("MixtureDRO (max, smooth) against the mean over the same mixtures (Mean r = the baseline)\n"
                            + format_verdicts(entry["axes"], entry["against_mean"]))  # fmt: skip
    sections.append(
        "Last validation pass of each configuration (mean ± std over seeds)\n" + final_pass_table(judged, configs)
    )
    return "\n\n".join(sections)


def save(args: argparse.Namespace, configs: list[Config], judged: dict, report: str, seconds: float) -> None:
    from rdpo_lightning.pareto.report import front_figure

    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"pareto_{args.scenario}"
    stem.with_suffix(".txt").write_text(report + "\n")
    figure = front_figure([(entry["axes"], entry["families"]) for entry in judged.values()], "DPO")
    figure.suptitle(f"scenario '{args.scenario}': fronts per seed (thin) and pooled over seeds (bold)")
    figure.savefig(stem.with_suffix(".png"), dpi=90)
    raw = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "wall_seconds": seconds,
        "metrics": {
            name: {
                "x": entry["axes"].x.text,
                "y": entry["axes"].y.text,
                "points": {
                    config: {str(seed): [asdict(p) for p in pts] for seed, pts in seeds.items()}
                    for config, seeds in entry["points"].items()
                },
                "verdicts": [
                    {
                        "method": v.method,
                        "gaps": v.gaps,
                        "mean": v.interval.mean,
                        "low": v.interval.low,
                        "high": v.interval.high,
                        "outcome": v.outcome,
                    }
                    for v in entry["family_verdicts"] + entry["config_verdicts"]
                ],  # fmt: skip
                "against_mean": [
                    {
                        "method": v.method,
                        "baseline": v.baseline,
                        "gaps": v.gaps,
                        "mean": v.interval.mean,
                        "low": v.interval.low,
                        "high": v.interval.high,
                        "outcome": v.outcome,
                    }
                    for v in entry["against_mean"]
                ],  # fmt: skip
            }
            for name, entry in judged.items()
        },
    }
    stem.with_suffix(".json").write_text(json.dumps(raw, indent=1, default=lambda v: None if v != v else v) + "\n")


# --- command line -------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--scenario", choices=SCENARIOS, required=True)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--taus", type=shift.float_list, default=[0.25, 0.5, 0.75, 1.0], help="KLDPO τ (paper: 0.5-1)")
    p.add_argument("--rhos", type=shift.float_list, default=[1.0, 50.0, 75.0, 100.0], help="WDPO ρ (paper: 50-100)")
    p.add_argument("--beta-primes", type=shift.float_list, default=[0.5, 1.0, 2.0], help="DrDPO β'")
    p.add_argument("--etas", type=shift.float_list, default=[0.01, 0.1, 1.0], help="GroupDRO step size η")
    p.add_argument("--worst-fractions", type=shift.float_list, default=[0.1, 0.5], help="CVaR worst fraction")
    p.add_argument("--chi-rhos", type=shift.float_list, default=[0.1, 0.5], help="chi-square DRO radius rho")
    p.add_argument(
        "--radii", type=shift.float_list, default=None, help="MixtureDRO / Mean radius r (simplex: 0.2, 0.5, 0.9)"
    )
    p.add_argument("--mixture-steps", type=int, default=4, help="MixtureDRO lattice steps per radius")
    p.add_argument(
        "--simplex-attributes", type=lambda t: [a for a in t.split(",") if a], default=["anger", "fear", "joy"],
        help="the simplex scenario's world (K >= 3 of sadness, joy, love, anger, fear)",
    )  # fmt: skip
    p.add_argument("--simplex-alpha", type=shift.float_list, default=None, help="simplex α₀ (default 0.8, 0.1, ...)")
    p.add_argument("--train-alpha", type=float, default=0.1, help="training α of the label and input scenarios")
    p.add_argument("--alphas", type=shift.float_list, default=[0.0, 0.5, 1.0], help="label scenario's evaluation α")
    p.add_argument("--label-temperature", type=float, default=0.05)
    p.add_argument("--num-train", type=int, default=1024)
    p.add_argument("--num-val", type=int, default=256)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--val-every", type=int, default=8, help="training steps between validation passes")
    p.add_argument("--accumulate", type=int, default=1, help="micro-batches per optimizer step (of --batch-size pairs)")
    p.add_argument("--objective-scope", default="optimizer_batch", choices=["optimizer_batch", "micro_batch"])
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=10)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--gen-prompts", type=int, default=32, help="held-out prompts completed per validation pass")
    p.add_argument("--gen-tokens", type=int, default=12)
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--cpu-name", default=None, help="named in the report (default: /proc/cpuinfo's model name)")
    p.add_argument("--label", default="", help="say in the report that this is a reduced configuration, and how")
    p.add_argument(
        "--out", type=Path, default=None, help="default benchmarks/results; --tiny: $TMPDIR/rdpo_lightning_tiny"
    )
    p.add_argument("--runs", type=Path, default=None, help="keep the TensorBoard runs here (default: temporary)")
    p.add_argument(
        "--train-seeds", type=lambda t: [int(x) for x in t.split(",") if x], default=None,
        help="train only these seeds (default: all); fits already done in --runs are kept; '' only judges",
    )  # fmt: skip
    p.add_argument("--tiny", action="store_true", help="smoke-test size: seconds per run; never writes results/")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.cpu_name is None:
        from scale import machine  # beside this script, like shift.py

        args.cpu_name = machine()
    radii_given = args.radii is not None
    if args.radii is None:
        args.radii = [0.2, 0.5, 0.9] if args.scenario == "simplex" else [0.25, 0.5, 0.9]
    k = len(args.simplex_attributes)
    if args.simplex_alpha is None:
        args.simplex_alpha = [0.8] + [0.2 / (k - 1)] * (k - 1) if k > 1 else [1.0]
    if args.scenario == "simplex" and (k < 3 or len(args.simplex_alpha) != k):
        p.error(f"--simplex-attributes needs 3 or more attributes and --simplex-alpha one weight each (got {k})")
    if args.tiny:  # smaller sweeps, unless given on the command line
        args.seeds = 2
        for key, tiny in (("taus", [0.5]), ("rhos", [1.0]), ("beta_primes", [1.0]), ("etas", [0.1])):
            if getattr(args, key) == p.get_default(key):
                setattr(args, key, tiny)
        if not radii_given:
            args.radii = [0.2, 0.9] if args.scenario == "simplex" else [0.5]
        args.alphas = [1.0]
        args.num_train, args.num_val, args.epochs, args.batch_size, args.val_every = 48, 24, 1, 16, 1
        args.layers, args.hidden, args.warmup_steps = 1, 32, 1
        args.gen_prompts, args.gen_tokens = 4, 4
    if args.seeds < 1:
        p.error("--seeds must be >= 1")
    if args.accumulate < 1 or args.batch_size % args.accumulate:
        p.error("--accumulate must divide --batch-size")
    if args.train_seeds is not None and args.runs is None:
        p.error("--train-seeds splits a run over processes that share --runs: give --runs")
    if args.train_seeds is not None and not set(args.train_seeds) <= set(range(args.seeds)):
        p.error(f"--train-seeds {args.train_seeds} must lie in 0 ... {args.seeds - 1} (--seeds {args.seeds})")
    return args


def main(argv: list[str] | None = None) -> str:
    import torch

    args = parse_args(argv)
    args.out = shift.output_dir(args.out, args.tiny)  # --tiny never overwrites the published results
    torch.set_num_threads(args.threads)
    shift.silence_libraries()
    configs = configurations(args)
    seeds = range(args.seeds) if args.train_seeds is None else args.train_seeds
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rdpo-pareto-") as scratch:
        runs = args.runs or Path(scratch) / "runs"
        plan = [(c, s) for s in seeds for c in configs if not done_marker(runs, c, s).exists()]
        cache = str(Path(scratch) / "cache")
        for done, (config, seed) in enumerate(plan, start=1):
            seconds = fit(args, config, seed, runs, cache)
            done_marker(runs, config, seed).touch()  # the fit's logger made the directory
            if not args.quiet:
                elapsed = time.perf_counter() - started
                print(
                    f"[{done:>3}/{len(plan)}] {config.name}, seed {seed}: {seconds:.1f} s; elapsed {elapsed / 60:.1f} "
                    f"min, ~{elapsed / done * (len(plan) - done) / 60:.1f} min left",
                    file=sys.stderr,
                    flush=True,
                )
        if args.train_seeds is not None:
            missing = [(c, s) for s in range(args.seeds) for c in configs if not done_marker(runs, c, s).exists()]
            if missing:  # another process is still training: judge when all are done
                print(f"trained seeds {args.train_seeds}; {len(missing)} fits not yet done in {runs}", file=sys.stderr)
                return ""
        judged = judge_runs(args, configs, runs)
    seconds = time.perf_counter() - started
    report = format_report(args, configs, judged, seconds)
    print(report, flush=True)
    save(args, configs, judged, report, seconds)
    if not args.quiet:
        print(f"wrote {args.out}/pareto_{args.scenario}.txt/.png/.json", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
