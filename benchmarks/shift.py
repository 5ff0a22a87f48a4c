"""Robustness under preference shift: DPO, KLDPO and WDPO trained at α₀ = 0.1, evaluated across the α grid.

Why this exists
---------------
The robust objectives of arXiv 2502.01930 promise a better *worst case* over the preference distributions a model
may meet. This script measures that on the embedded attribute world (the miniature of the paper's emotion task):
labels at r(α₀) = α₀·anger + (1−α₀)·fear with α₀ = 0.1 for training, held-out pairs labelled at every α of a grid for
evaluation. It uses the package's real pieces end to end: :class:`AttributeWorldDataModule`, :class:`RobustDPO` with
``NoRobust`` / ``KLReweighter`` / ``WassersteinPenalty``, a real ``lightning.Trainer`` to fit, and a second Trainer
that runs ``validate`` with :class:`WorstCaseEvaluation` + :class:`GenerationEvaluation` (scored by the world's own
reward, :class:`AttributeWorldReward`).

What is measured, per run (one method, one seed; the seed fixes the world's sample, the model's initialisation and
the generation sampling, so methods with the same seed are compared on identical data and starting weights)
---------------------------------------------------------------------------------------------------------------
* preference accuracy at every α: share of held-out pairs whose label (Bradley–Terry at r(α)) the policy's implicit
  reward β·log π/π_ref ranks right; the pairs are the same at every α, only their labels change;
* the mean DPO pair loss at every α (what the robust objectives bound);
* the generation reward r(α): mean of α·anger + (1−α)·fear over completions sampled from the final policy for
  held-out prompts, scored by the world's reward.
The final weights are evaluated (no checkpoint selection: selecting on the shifted α's would use their labels).

Reference rows, computed on the same held-out pairs: ``oracle r(α0)`` ranks each pair by the true training reward
(a perfect learner of the training preferences), ``oracle r(α)`` by the true reward at α (the Bayes ceiling under the
labels' Bradley–Terry noise), and ``flips`` is the share of pairs whose noiseless preference at α differs from α₀'s:
how much shift there is to be robust against. ``reference policy`` is the untrained policy (π = π_ref).

Worst case: for each seed, the minimum over α of that seed's accuracy (or reward), or the maximum of its loss; the
table gives the mean ± std of these per-seed worst cases over seeds, and the paired difference to DPO with the same
seed.

    PYTHONPATH=$PWD python benchmarks/shift.py            # default size (see --help): 8.7 min, shared 2-core CPU
    PYTHONPATH=$PWD python benchmarks/shift.py --tiny     # smoke test, about 10 s; writes to a temp folder
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

METRICS = ("accuracy", "loss", "reward", "margin")


# --- what runs ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Method:
    """One training configuration: a display name, its family (DPO / KLDPO / WDPO) and its robust strategy."""

    name: str
    family: str
    hparam: str
    make_robust: Callable[[], object] = field(compare=False, repr=False)


def methods(args: argparse.Namespace) -> tuple[list[Method], list[Method]]:
    """(main methods, sweep-only methods): DPO, KLDPO at --tau, WDPO at --rho; then the other --taus / --rhos."""
    from rdpo_lightning.robust import KLReweighter, NoRobust, WassersteinPenalty

    def kl(tau: float) -> Method:
        return Method(f"KLDPO tau={tau:g}", "KLDPO", f"tau={tau:g}", lambda: KLReweighter(tau=tau))

    def wdpo(rho: float) -> Method:
        suffix = "" if args.wdpo_mode == "exact" else f" ({args.wdpo_mode})"
        return Method(
            f"WDPO rho={rho:g}{suffix}",
            "WDPO",
            f"rho={rho:g}",
            lambda: WassersteinPenalty(rho=rho, mode=args.wdpo_mode),
        )

    main = [Method("DPO", "DPO", "-", NoRobust), kl(args.tau), wdpo(args.rho)]
    sweep = [kl(t) for t in args.taus if t != args.tau] + [wdpo(r) for r in args.rhos if r != args.rho]
    return main, sweep


@dataclass
class RunResult:
    """Per-α metrics of one (method, seed) run, keyed by α formatted as in the mixture names."""

    method: str
    seed: int
    accuracy: dict[str, float]
    loss: dict[str, float]
    reward: dict[str, float]
    margin: dict[str, float]
    input_grad_sq: float
    fit_seconds: float
    eval_seconds: float


@dataclass
class DataReference:
    """Properties of one seed's held-out pairs: the oracle accuracies and the share of flipped preferences."""

    seed: int
    oracle_train: dict[str, float]
    oracle_bayes: dict[str, float]
    flips: dict[str, float]


def alpha_key(alpha: float) -> str:
    return f"{alpha:.2f}"


# --- building blocks: the package's own DataModule, module, Trainer and callbacks -------------------------------
def make_datamodule(args: argparse.Namespace, seed: int, cache_dir: str, **overrides):
    """The anger/fear world at this seed; ``overrides`` replace any of its arguments (benchmarks/pareto.py's
    scenarios)."""
    from rdpo_lightning.data import AttributeWorldDataModule

    arguments = dict(
        attribute_a="anger",
        attribute_b="fear",
        train_alpha=args.train_alpha,
        val_alphas=list(args.alphas),
        label_temperature=args.label_temperature,
        num_train=args.num_train,
        num_val=args.num_val,
        seed=seed,
        batch_size=args.batch_size,
        val_batch_size=256,
        max_length=32,
        cache_dir=cache_dir,
    )
    return AttributeWorldDataModule(**{**arguments, **overrides})


def make_module(args: argparse.Namespace, robust, **module_kwargs):
    import torch

    from rdpo_lightning.training.module import RobustDPO

    lr = args.lr
    return RobustDPO(
        model_config={
            "model_type": "gpt2",
            "n_layer": args.layers,
            "n_head": max(1, args.hidden // 16),
            "n_embd": args.hidden,
            "n_positions": 64,
        },
        beta=args.beta,
        optimizer=lambda params: torch.optim.AdamW(params, lr=lr, weight_decay=0.0),
        warmup_steps=args.warmup_steps,
        robust=robust,
        **module_kwargs,
    )


#: the published figures; a --tiny run never writes here
RESULTS = Path(__file__).resolve().parent / "results"
#: where a --tiny run writes unless told otherwise
TINY_OUT = Path(tempfile.gettempdir()) / "rdpo_lightning_tiny"


def output_dir(out: Path | None, tiny: bool) -> Path:
    """``--out``, by default the published results or, for a smoke-test (``--tiny``) run, :data:`TINY_OUT`: a
    smoke test must never overwrite the published figures."""
    out = out or (TINY_OUT if tiny else RESULTS)
    if tiny and out.resolve() == RESULTS:
        raise SystemExit(f"--tiny would overwrite the published results in {RESULTS}: give another --out")
    return out


#: Trainer accelerator for every fit and evaluation (``--accelerator``)
ACCELERATOR = "cpu"


def quiet_trainer(**kwargs):
    from rdpo_lightning.training.quiet import quiet_trainer

    return quiet_trainer(accelerator=ACCELERATOR, devices=1, **kwargs)


def evaluate(args: argparse.Namespace, module, datamodule, seed: int) -> dict[str, dict[str, float]]:
    """``validate`` with WorstCaseEvaluation + GenerationEvaluation: per-α accuracy, loss and generation reward."""
    from rdpo_lightning.callbacks import GenerationEvaluation, WorstCaseEvaluation

    generation = GenerationEvaluation(
        num_prompts=args.gen_prompts,
        batch_size=args.gen_prompts,
        max_new_tokens=args.gen_tokens,
        seed=seed,
    )
    callback = WorstCaseEvaluation(generation=generation, plot_name=None, print_table=False)
    quiet_trainer(callbacks=[callback]).validate(module, datamodule, verbose=False)
    out: dict[str, dict[str, float]] = {metric: {} for metric in METRICS}
    for result in callback.report.mixtures:
        alpha = alpha_key(float(result.name.split("=", 1)[1]))
        for metric in METRICS:
            out[metric][alpha] = float(getattr(result, metric))
    return out


def input_gradient_sq_norm(module, datamodule) -> float:
    """Mean per-pair ‖∇_z ℓ‖² (z: input embeddings, chosen + rejected) over the first held-out batch at α₀: the
    quantity WDPO penalises, measured the way the penalty measures it."""
    import torch

    from rdpo_lightning.robust.wasserstein import pair_gradient_sq_norms

    batch = next(iter(datamodule.val_dataloader()[0]))
    reference = module.reference_logps(batch)
    with torch.enable_grad():
        pairs = module.policy_forward(batch, reference, capture=True)
        (grad,) = torch.autograd.grad(pairs.losses.sum(), pairs.embeddings)
    module.policy.zero_grad(set_to_none=True)
    return float(pair_gradient_sq_norms(grad).mean())


def train_and_evaluate(args: argparse.Namespace, method: Method, seed: int, cache_dir: str) -> RunResult:
    import lightning as L

    L.seed_everything(seed, verbose=False)
    datamodule = make_datamodule(args, seed, cache_dir)
    module = make_module(args, method.make_robust())
    start = time.perf_counter()
    quiet_trainer(max_epochs=args.epochs, limit_val_batches=0).fit(module, datamodule)
    fitted = time.perf_counter()
    metrics = evaluate(args, module, datamodule, seed)
    grad_sq = input_gradient_sq_norm(module, datamodule)
    return RunResult(
        method.name,
        seed,
        **metrics,
        input_grad_sq=grad_sq,
        fit_seconds=fitted - start,
        eval_seconds=time.perf_counter() - fitted,
    )


def evaluate_reference(args: argparse.Namespace, seed: int, cache_dir: str) -> RunResult:
    """The untrained policy (π = π_ref): its generation reward is the starting point every method moves from."""
    import lightning as L

    from rdpo_lightning.robust import NoRobust

    L.seed_everything(seed, verbose=False)
    datamodule = make_datamodule(args, seed, cache_dir)
    module = make_module(args, NoRobust())
    start = time.perf_counter()
    metrics = evaluate(args, module, datamodule, seed)
    metrics["accuracy"] = {a: math.nan for a in metrics["accuracy"]}  # π = π_ref: every margin is 0, a tie
    grad_sq = input_gradient_sq_norm(module, datamodule)
    return RunResult(
        "reference policy",
        seed,
        **metrics,
        input_grad_sq=grad_sq,
        fit_seconds=0.0,
        eval_seconds=time.perf_counter() - start,
    )


def data_reference(args: argparse.Namespace, seed: int, cache_dir: str) -> DataReference:
    """Oracle accuracies and preference flips on one seed's held-out pairs, scored by the world's true reward."""
    from rdpo_lightning.data import two_attribute_mixture

    datamodule = make_datamodule(args, seed, cache_dir)
    datamodule.tokenizer = datamodule.build_tokenizer()
    _, vals = datamodule.build_splits()  # deterministic in the seed: the very pairs the runs are validated on
    world = datamodule.world
    a, b = world.attribute_index("anger"), world.attribute_index("fear")
    k = world.num_attributes
    train = two_attribute_mixture(args.train_alpha, a, b, k)
    oracle_train, oracle_bayes, flips = {}, {}, {}
    for name, pairs in vals.items():
        alpha = float(name.split("=", 1)[1])
        mixture = two_attribute_mixture(alpha, a, b, k)
        chosen, rejected = world.attribute_rewards(pairs["chosen"]), world.attribute_rewards(pairs["rejected"])
        gap_train = train.combine(chosen) - train.combine(rejected)
        gap_alpha = mixture.combine(chosen) - mixture.combine(rejected)
        key = alpha_key(alpha)
        oracle_train[key] = float(np.mean((gap_train > 0) + 0.5 * (gap_train == 0)))
        oracle_bayes[key] = float(np.mean((gap_alpha > 0) + 0.5 * (gap_alpha == 0)))
        flips[key] = float(np.mean(np.sign(gap_alpha) != np.sign(gap_train)))
    return DataReference(seed, oracle_train, oracle_bayes, flips)


# --- summaries -------------------------------------------------------------------------------------------------
def mean_std(values: list[float]) -> tuple[float, float]:
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def per_seed_worst(run: RunResult, metric: str) -> tuple[float, str]:
    """(worst value over α, the α where it lies) of one run."""
    from rdpo_lightning.callbacks.report import worst_of

    worst = worst_of(getattr(run, metric), metric)
    return worst if worst is not None else (math.nan, "none")


def cell(values: list[float], digits: int = 3, fmt: str | None = None) -> str:
    """``mean ± std`` of the non-NaN values, fixed-point with ``digits`` decimals (or in the format ``fmt``)."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return "—"
    mean, std = mean_std(finite)
    fmt = fmt or f".{digits}f"
    return f"{mean:{fmt}} ± {std:{fmt}}"


def per_alpha_table(
    title: str, alphas: list[str], columns: dict[str, list[dict[str, float]]], train_key: str, digits: int = 3
) -> str:
    """Rows α, one column per name: mean ± std over the given per-seed dicts."""
    width = max(17, *(len(n) + 2 for n in columns))
    lines = [title, f"{'alpha':<8}" + "".join(f"{name:>{width}}" for name in columns)]
    for alpha in alphas:
        label = alpha + ("*" if alpha == train_key else "")
        row = [cell([d[alpha] for d in runs], digits) for runs in columns.values()]
        lines.append(f"{label:<8}" + "".join(f"{c:>{width}}" for c in row))
    return "\n".join(lines)


def worst_case_table(
    results: dict[str, list[RunResult]], order: list[Method], train_key: str, columns: list[tuple[str, str]]
) -> str:
    """One row per method. ``columns``: (metric, kind), kind ``at`` (value at α₀), ``worst`` (per-seed worst over
    α, mean ± std) or ``delta`` (that worst minus DPO's with the same seed); then where the worst cases lie."""
    dpo = {r.seed: r for r in results.get("DPO", [])}
    titles = {"at": "{} at a0", "worst": "worst {}", "delta": "Δ vs DPO", "value": "|grad_z loss|^2"}
    width = {m: 21 if m == "input_grad_sq" else 17 for m, _ in columns}  # 21: room for "1.23e-04 ± 5.67e-05"
    name_width = max([28] + [len(m.name) + 2 for m in order])
    header = f"{'method':<{name_width}}{'seeds':>6}" + "".join(f"{titles[k].format(m):>{width[m]}}" for m, k in columns)
    header += "  worst at alpha"
    lines = [header, "-" * len(header)]
    for method in order:
        runs = results[method.name]
        row = f"{method.name:<{name_width}}{len(runs):>6}"
        for metric, kind in columns:
            if kind == "value":
                values = [getattr(r, metric) for r in runs]
            elif kind == "at":
                values = [getattr(r, metric)[train_key] for r in runs]
            elif kind == "worst":
                values = [per_seed_worst(r, metric)[0] for r in runs]
            elif method.name == "DPO":
                values = []
            else:
                values = [per_seed_worst(r, metric)[0] - per_seed_worst(dpo[r.seed], metric)[0] for r in runs]
            text = cell(values, fmt=".2e") if metric == "input_grad_sq" else cell(values)
            row += f"{text:>{width[metric]}}"
        worst_metrics = dict.fromkeys(m for m, k in columns if k == "worst")
        spots = [f"{m} " + ",".join(sorted({per_seed_worst(r, m)[1] for r in runs})) for m in worst_metrics]
        lines.append(row + "  " + "; ".join(spots))
    return "\n".join(lines)


def format_report(
    args: argparse.Namespace,
    main: list[Method],
    sweep: list[Method],
    results: dict[str, list[RunResult]],
    references: list[RunResult],
    data: list[DataReference],
    seconds: float,
) -> str:
    alphas = [alpha_key(a) for a in sorted(set(args.alphas) | {args.train_alpha})]
    train_key = alpha_key(args.train_alpha)
    config = (
        f"config: attribute world anger/fear, train alpha0={args.train_alpha:g}, label temperature "
        f"{args.label_temperature:g}, {args.num_train} train / {args.num_val} held-out pairs; GPT-2 {args.layers} "
        f"layers d={args.hidden}; {args.epochs} epochs, batch {args.batch_size}, AdamW lr {args.lr:g}, beta "
        f"{args.beta:g}; WDPO mode {args.wdpo_mode}; generation: {args.gen_prompts} prompts x {args.gen_tokens} "
        f"new tokens, sampled at temperature 1; seeds {args.seeds} (sweep-only rows: {args.sweep_seeds}); "
        f"threads {args.threads}; accelerator {args.accelerator}; wall time {seconds / 60:.1f} min on "
        f"{platform.machine()} with {os.cpu_count()} CPUs"
    )
    main_runs = {m.name: [asdict(r) for r in results[m.name]] for m in main}
    accuracy = per_alpha_table(
        "Preference accuracy on held-out pairs labelled at alpha (mean ± std over seeds; * = training alpha)",
        alphas,
        {
            **{name: [r["accuracy"] for r in runs] for name, runs in main_runs.items()},
            "oracle r(alpha0)": [d.oracle_train for d in data],
            "oracle r(alpha)": [d.oracle_bayes for d in data],
            "flips vs alpha0": [d.flips for d in data],
        },
        train_key,
    )
    reward = per_alpha_table(
        "Generation reward r(alpha) = alpha*anger + (1-alpha)*fear of sampled completions (mean ± std over seeds)",
        alphas,
        {
            **{name: [r["reward"] for r in runs] for name, runs in main_runs.items()},
            "reference policy": [r.reward for r in references],
        },
        train_key,
    )
    loss = per_alpha_table(
        "DPO pair loss on held-out pairs labelled at alpha (mean ± std over seeds; reference policy: log 2 = 0.693)",
        alphas,
        {name: [r["loss"] for r in runs] for name, runs in main_runs.items()},
        train_key,
    )
    order = main + sweep
    pair_columns = [
        ("accuracy", "at"),
        ("accuracy", "worst"),
        ("accuracy", "delta"),
        ("margin", "at"),
        ("input_grad_sq", "value"),
        ("loss", "at"),
        ("loss", "worst"),
        ("loss", "delta"),
    ]
    worst_pairs = worst_case_table(results, order, train_key, pair_columns)
    worst_reward = worst_case_table(
        results, order, train_key, [("reward", "at"), ("reward", "worst"), ("reward", "delta")]
    )
    definition = (
        "Worst case = per seed, the minimum over alpha of accuracy (reward) or the maximum of the loss; then mean ± "
        "std over seeds. 'at a0' = at the training alpha0. Δ vs DPO = per-seed difference to DPO with the same seed "
        "(same data and initial weights).\n|grad_z loss|^2 = mean per-pair squared norm of the pair loss's gradient "
        "with respect to the input embeddings (the quantity WDPO penalises), over the first 256 held-out pairs at "
        f"alpha0; reference policy: {cell([r.input_grad_sq for r in references], fmt='.2e')}."
    )
    return "\n\n".join(
        [
            config,
            accuracy,
            reward,
            loss,
            "Worst case over the alpha grid, every configuration: preference pairs (margin = mean implicit-reward "
            "margin beta*(log-ratio chosen - rejected))\n" + worst_pairs,
            "Worst case over the alpha grid, every configuration: generation reward r(alpha)\n" + worst_reward,
            definition,
        ]
    )


# --- the plot -----------------------------------------------------------------------------------------------------
def sweep_colours(configurations: list[Method]) -> dict[Method, tuple]:
    """DPO blue; each robust family in shades of its colour, darker for a larger hyperparameter."""
    from matplotlib import colormaps

    maps = {"KLDPO": colormaps["Oranges"], "WDPO": colormaps["Greens"]}
    colours: dict[Method, tuple] = {}
    for method in configurations:
        if method.family not in maps:
            colours[method] = colormaps["tab10"](0)
    for family, cmap in maps.items():
        members = sorted((m for m in configurations if m.family == family), key=lambda m: float(m.hparam.split("=")[1]))
        for i, method in enumerate(members):
            colours[method] = cmap(0.45 + 0.5 * i / max(1, len(members) - 1))
    return colours


def plot(args, main, sweep, results, references, data, path: Path) -> None:
    from matplotlib.figure import Figure

    alphas = sorted(set(args.alphas) | {args.train_alpha})
    keys = [alpha_key(a) for a in alphas]
    figure = Figure(figsize=(15, 8.2), layout="constrained")
    axes = figure.subplots(2, 3)
    colours = {"DPO": "tab:blue", "KLDPO": "tab:orange", "WDPO": "tab:green"}

    def band(ax, runs: list[dict[str, float]], label: str, style: str, colour: str, filled: bool = True) -> None:
        values = np.array([[r[k] for k in keys] for r in runs])
        mean = values.mean(0)
        ax.plot(alphas, mean, style, color=colour, label=label)
        if filled and len(values) > 1:
            std = values.std(0, ddof=1)
            ax.fill_between(alphas, mean - std, mean + std, color=colour, alpha=0.18)

    for column, metric in enumerate(METRICS[:3]):
        ax = axes[0, column]
        for method in main:
            band(ax, [getattr(r, metric) for r in results[method.name]], method.name, "o-", colours[method.family])
        if metric == "accuracy":
            band(ax, [d.oracle_train for d in data], "oracle r(α0)", "--", "black", filled=False)
            band(ax, [d.oracle_bayes for d in data], "oracle r(α) (Bayes)", ":", "black", filled=False)
        if metric == "reward":
            band(ax, [r.reward for r in references], "reference policy", "s:", "tab:gray")
        ax.set_title(f"{metric} (mean ± std over {args.seeds} seeds)")
        ax.set_xlabel("α (evaluation mixture α·anger + (1−α)·fear)")
        ax.axvline(args.train_alpha, color="tab:red", linewidth=0.8, linestyle="--")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        sweep_ax = axes[1, column]
        for method, colour in sweep_colours(main + sweep).items():
            band(sweep_ax, [getattr(r, metric) for r in results[method.name]], method.name, ".-", colour, False)
        sweep_ax.set_title(f"{metric}: τ and ρ sweep (mean over seeds)")
        sweep_ax.set_xlabel("α")
        sweep_ax.axvline(args.train_alpha, color="tab:red", linewidth=0.8, linestyle="--")
        sweep_ax.grid(alpha=0.3)
        sweep_ax.legend(fontsize="x-small")
    figure.suptitle(f"Trained at α0 = {args.train_alpha:g} (red line) on the attribute world; final weights")
    figure.savefig(path, dpi=90)


# --- command line -------------------------------------------------------------------------------------------------
def float_list(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", type=int, default=3, help="seeds of the main methods (DPO, KLDPO --tau, WDPO --rho)")
    p.add_argument("--sweep-seeds", type=int, default=None, help="seeds of the sweep-only rows (default: --seeds)")
    p.add_argument("--tau", type=float, default=0.5, help="KLDPO temperature of the main comparison")
    p.add_argument("--taus", type=float_list, default=[0.25, 0.5, 1.0], help="KLDPO sweep, comma-separated")
    p.add_argument("--rho", type=float, default=0.1, help="WDPO penalty weight of the main comparison")
    p.add_argument("--rhos", type=float_list, default=[0.01, 0.1, 1.0], help="WDPO sweep, comma-separated")
    p.add_argument("--wdpo-mode", choices=["exact", "finite_difference"], default="exact")
    p.add_argument("--train-alpha", type=float, default=0.1)
    p.add_argument("--alphas", type=float_list, default=[round(0.1 * i, 1) for i in range(11)])
    p.add_argument("--label-temperature", type=float, default=0.05)
    p.add_argument("--num-train", type=int, default=4096)
    p.add_argument("--num-val", type=int, default=1024)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=20)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--gen-prompts", type=int, default=128, help="held-out prompts completed per evaluation")
    p.add_argument("--gen-tokens", type=int, default=12, help="new tokens per completion")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: on a shared 2-core machine two threads are several times slower)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"directory for shift.txt/.png/.json (default: benchmarks/results; with --tiny: {TINY_OUT})",
    )
    p.add_argument("--tiny", action="store_true", help="smoke-test size: seconds per run")
    p.add_argument("--accelerator", default="cpu", help="Lightning accelerator: cpu (default), gpu")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr (the table is always printed)")
    p.add_argument(
        "--from-json",
        type=Path,
        default=None,
        help="re-render the table and plot of a saved shift.json (no training; its own settings apply)",
    )
    args = p.parse_args(argv)
    if args.tiny:
        args.seeds, args.sweep_seeds = 2, 1
        args.taus, args.rhos = [args.tau, 1.0], [args.rho, 1.0]
        args.alphas = [0.0, 0.5, 1.0]
        args.num_train, args.num_val, args.epochs, args.batch_size = 64, 32, 1, 16
        args.layers, args.hidden, args.warmup_steps = 1, 32, 2
        args.gen_prompts, args.gen_tokens = 8, 6
    if args.sweep_seeds is None:
        args.sweep_seeds = args.seeds
    if args.seeds < 1 or args.sweep_seeds < 1:
        p.error("--seeds and --sweep-seeds must be >= 1")
    if args.sweep_seeds > args.seeds:
        p.error("--sweep-seeds must be <= --seeds: every sweep run is compared with DPO's run of the same seed")
    if not all(0 <= a <= 1 for a in [*args.alphas, args.train_alpha]):
        p.error("alphas must lie in [0, 1]")
    return args


def silence_libraries() -> None:
    """Keep the terminal for progress and the table: no per-run banners, progress bars or known warnings."""
    import datasets
    import lightning.pytorch  # noqa: F401  (imported first: it sets its loggers' levels when imported)
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "rdpo_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*Trying to infer the `batch_size`.*")
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")  # the frozen reference, on purpose
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)`? is deprecated.*")


@dataclass
class Outcome:
    """Everything one benchmark run measured."""

    results: dict[str, list[RunResult]]
    references: list[RunResult]
    data: list[DataReference]
    seconds: float


def run_all(args: argparse.Namespace, main_methods: list[Method], sweep_methods: list[Method]) -> Outcome:
    """The reference rows of every seed, then every (method, seed) run, with a progress line after each."""
    import torch

    torch.set_num_threads(args.threads)
    global ACCELERATOR
    ACCELERATOR = args.accelerator
    silence_libraries()
    plan = [(m, s) for s in range(args.seeds) for m in main_methods]
    plan += [(m, s) for s in range(args.sweep_seeds) for m in sweep_methods]
    total = len(plan) + args.seeds

    def progress(text: str) -> None:
        if not args.quiet:
            print(text, file=sys.stderr, flush=True)

    started = time.perf_counter()
    results: dict[str, list[RunResult]] = {m.name: [] for m in main_methods + sweep_methods}
    references: list[RunResult] = []
    data: list[DataReference] = []
    with tempfile.TemporaryDirectory(prefix="rdpo-shift-") as cache_dir:
        for seed in range(args.seeds):
            data.append(data_reference(args, seed, cache_dir))
            references.append(evaluate_reference(args, seed, cache_dir))
            progress(f"[{len(references):>3}/{total}] reference policy, seed {seed}: evaluated")
        for done, (method, seed) in enumerate(plan, start=len(references) + 1):
            run = train_and_evaluate(args, method, seed, cache_dir)
            results[method.name].append(run)
            elapsed = time.perf_counter() - started
            eta = elapsed / done * (total - done)
            worst_acc, at = per_seed_worst(run, "accuracy")
            progress(
                f"[{done:>3}/{total}] {method.name}, seed {seed}: fit {run.fit_seconds:.1f} s, eval "
                f"{run.eval_seconds:.1f} s; worst accuracy {worst_acc:.3f} at alpha={at}; elapsed "
                f"{elapsed / 60:.1f} min, ~{eta / 60:.1f} min left"
            )
    return Outcome(results, references, data, time.perf_counter() - started)


def load_outcome(path: Path, out: Path | None) -> tuple[argparse.Namespace, Outcome]:
    """A saved ``shift.json``: the arguments it ran with (``out`` replaced; options added since it was saved take
    their defaults) and what it measured."""
    raw = json.loads(path.read_text())
    args = argparse.Namespace(**{**vars(parse_args([])), **raw["args"], "out": out, "quiet": False})
    results: dict[str, list[RunResult]] = {}
    for run in raw["runs"]:
        results.setdefault(run["method"], []).append(RunResult(**run))
    references = [RunResult(**r) for r in raw["reference_policy"]]
    data = [DataReference(**d) for d in raw["data"]]
    return args, Outcome(results, references, data, raw["wall_seconds"])


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    if args.from_json is not None:  # re-render a saved run: no training
        quiet = args.quiet
        args, outcome = load_outcome(args.from_json, args.out)
        args.quiet = quiet
        main_methods, sweep_methods = methods(args)
    else:
        main_methods, sweep_methods = methods(args)
        args.out = output_dir(args.out, args.tiny)
        outcome = run_all(args, main_methods, sweep_methods)
    args.out = output_dir(args.out, args.tiny)  # a re-rendered --tiny run is still a --tiny run
    o = outcome
    report = format_report(args, main_methods, sweep_methods, o.results, o.references, o.data, o.seconds)
    print(report, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "shift.txt").write_text(report + "\n")
    plot(args, main_methods, sweep_methods, o.results, o.references, o.data, args.out / "shift.png")
    raw = {
        "args": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("from_json", "quiet")
        },
        "wall_seconds": o.seconds,
        "runs": [asdict(r) for runs in o.results.values() for r in runs],
        "reference_policy": [asdict(r) for r in o.references],
        "data": [asdict(d) for d in o.data],
    }
    (args.out / "shift.json").write_text(json.dumps(raw, indent=1) + "\n")
    if not args.quiet:
        print(f"wrote {args.out / 'shift.txt'}, {args.out / 'shift.png'}, {args.out / 'shift.json'}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
