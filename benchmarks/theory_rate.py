"""Convergence rate of DPO, KLDPO and WDPO estimators in the paper's log-linear bandit (arXiv 2502.01930).

Why this exists
---------------
The paper proves that, for a log-linear policy, the WDPO and KLDPO estimators reach the minimiser of their
*population* robust objective at rate O(n^-1/4) (an upper bound), while ordinary DPO is a logistic-regression MLE and
reaches the true parameter at the classical parametric rate n^-1/2. This script measures the rates empirically, where
everything can be computed exactly, so that the bounds can be checked against reality.

Setting (the paper's theory setting)
------------------------------------
* A contextual bandit with finitely many contexts ``s`` and actions ``a``, random fixed features ``phi(s, a)`` in R^d.
* Policy ``pi_theta(a|s) ∝ exp(theta^T phi(s, a))``, uniform reference policy, true parameter ``theta*``.
* Data: ``s`` uniform, two distinct actions uniform, label from Bradley-Terry with reward ``beta * theta*^T phi``.
  With a uniform reference, the DPO implicit reward is ``beta * theta^T phi``, so the per-pair loss is
  ``l_i(theta) = -log sigmoid(beta * theta^T x_i)`` with ``x_i = phi(s, a_w) - phi(s, a_l)``.
* Objectives (each minimised with a damped Newton method in float64 to gradient norm < 1e-9):
    DPO    mean_i l_i
    KLDPO  tau * log mean_i exp(l_i / tau)               (dual form of the KL-ball worst case)
    WDPO   mean_i l_i + rho * mean_i ||grad_x l_i||^2    (first-order Wasserstein-DRO penalty)
* Targets: ``theta*`` for DPO; for the robust methods the minimiser of the same objective under the *population*
  distribution, which is a finite weighted sum because contexts and actions are finite.

The empirical objective depends on the sample only through the counts of each distinct (s, a_w, a_l), so a sample is
drawn pair by pair and then aggregated into counts; optimisation costs the same for n = 100 and n = 10^6.

How to read the output
----------------------
For each method the table gives the least-squares slope of log mean ||theta_hat - target|| against log n
(± a bootstrap-over-seeds standard deviation), next to the paper's bound. A slope at or below the bound means the bound
holds; a slope near -0.5 for the robust methods too means the n^-1/4 bound is conservative in this smooth, finite
setting (every objective here is a smooth function of finitely many empirical frequencies, so the delta method gives
n^-1/2). ``||target - theta*||`` shows how far the robust targets sit from the true parameter: that gap is the price
of robustness and does not shrink with n. (For KLDPO under Bradley-Terry it has a closed form: the population target
is exactly theta* tau / (1 + tau), so the reported gap is ||theta*|| / (1 + tau); the tests check this.)

    python benchmarks/theory_rate.py                # default size, a few minutes at most on a 2-core CPU
    python benchmarks/theory_rate.py --tiny         # a few seconds, for smoke tests; writes to a temp folder
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DTYPE = torch.float64
METHODS = ("DPO", "KLDPO", "WDPO")
PAPER_BOUND = {"DPO": -0.5, "KLDPO": -0.25, "WDPO": -0.25}
#: the published figures; a --tiny run never writes here
RESULTS = Path(__file__).resolve().parent / "results"
#: where a --tiny run writes unless told otherwise
TINY_OUT = Path(tempfile.gettempdir()) / "rdpo_lightning_tiny"

# ----------------------------------------------------------------------------------------------------------------------
# The bandit and its preference data


@dataclass(frozen=True)
class Bandit:
    """A finite contextual bandit, flattened to the support of the (s, a_w, a_l) distribution."""

    features: torch.Tensor  # (S, A, d) phi(s, a)
    theta_star: torch.Tensor  # (d,)
    beta: float
    diffs: torch.Tensor  # (M, d) phi(s, a_w) - phi(s, a_l) for every triple with a_w != a_l
    probs: torch.Tensor  # (M,) population probability of each triple
    index: np.ndarray  # (S, A, A) triple -> row of ``diffs`` (-1 on the diagonal)


def make_bandit(contexts: int, actions: int, dim: int, beta: float, seed: int) -> Bandit:
    """Random features and a unit-norm theta*, fixed by ``seed``, plus the exact population distribution."""
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(contexts, actions, dim, generator=gen, dtype=DTYPE)
    theta_star = torch.randn(dim, generator=gen, dtype=DTYPE)
    theta_star = theta_star / theta_star.norm()

    s, w, lo = np.nonzero(~np.eye(actions, dtype=bool)[None].repeat(contexts, 0))
    index = -np.ones((contexts, actions, actions), dtype=np.int64)
    index[s, w, lo] = np.arange(len(s))
    diffs = features[s, w] - features[s, lo]
    # (a_w, a_l) is observed if (a1, a2) = (a_w, a_l) and a1 wins, or (a1, a2) = (a_l, a_w) and a2 wins: both have
    # probability sigmoid(beta theta*^T (phi_w - phi_l)) / (S A (A - 1)).
    probs = 2 * torch.sigmoid(beta * diffs @ theta_star) / (contexts * actions * (actions - 1))
    return Bandit(features, theta_star, beta, diffs, probs, index)


def sample_frequencies(bandit: Bandit, n: int, rng: np.random.Generator) -> torch.Tensor:
    """Draw n labelled pairs the way the paper's data are generated; return the empirical frequency of each triple."""
    contexts, actions, _ = bandit.features.shape
    s = rng.integers(contexts, size=n)
    a1 = rng.integers(actions, size=n)
    a2 = rng.integers(actions - 1, size=n)
    a2 = a2 + (a2 >= a1)  # uniform over the actions other than a1
    x = (bandit.features[s, a1] - bandit.features[s, a2]).numpy()
    p_a1_wins = 1 / (1 + np.exp(-bandit.beta * x @ bandit.theta_star.numpy()))
    a1_wins = rng.random(n) < p_a1_wins
    winner, loser = np.where(a1_wins, a1, a2), np.where(a1_wins, a2, a1)
    counts = np.bincount(bandit.index[s, winner, loser], minlength=len(bandit.probs))
    return torch.as_tensor(counts / n, dtype=DTYPE)


# ----------------------------------------------------------------------------------------------------------------------
# Objectives: each is a weighted sum over triples, weights = empirical frequencies or population probabilities


def pair_losses(theta: torch.Tensor, x: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO loss of each pair under a uniform reference: -log sigmoid(beta theta^T x)."""
    return -F.logsigmoid(beta * x @ theta)


def input_grad(theta: torch.Tensor, x: torch.Tensor, beta: float) -> torch.Tensor:
    """Closed-form gradient of each pair loss w.r.t. its input x: -beta (1 - sigmoid(beta theta^T x)) theta."""
    return -(beta * torch.sigmoid(-beta * x @ theta))[:, None] * theta


def dpo_objective(theta: torch.Tensor, x: torch.Tensor, w: torch.Tensor, beta: float) -> torch.Tensor:
    """Expected pair loss under weights w."""
    return w @ pair_losses(theta, x, beta)


def kl_objective(theta: torch.Tensor, x: torch.Tensor, w: torch.Tensor, beta: float, tau: float) -> torch.Tensor:
    """tau log E_w exp(l / tau): the KL-ball worst case in dual form; its gradient is the softmax-reweighted mean."""
    return tau * torch.logsumexp(pair_losses(theta, x, beta) / tau + w.log(), dim=0)


def wdpo_objective(theta: torch.Tensor, x: torch.Tensor, w: torch.Tensor, beta: float, rho: float) -> torch.Tensor:
    """E_w l + rho E_w ||grad_x l||^2: the first-order Wasserstein-DRO objective."""
    penalty = input_grad(theta, x, beta).pow(2).sum(-1)
    return w @ (pair_losses(theta, x, beta) + rho * penalty)


def objective_for(method: str, x: torch.Tensor, w: torch.Tensor, args: argparse.Namespace) -> Callable:
    """The method's objective as a function of theta alone, restricted to triples of positive weight."""
    keep = w > 0
    x, w = x[keep], w[keep]
    if method == "DPO":
        return lambda theta: dpo_objective(theta, x, w, args.beta)
    if method == "KLDPO":
        return lambda theta: kl_objective(theta, x, w, args.beta, args.tau)
    if method == "WDPO":
        return lambda theta: wdpo_objective(theta, x, w, args.beta, args.rho)
    raise ValueError(f"unknown method {method!r}")


# ----------------------------------------------------------------------------------------------------------------------
# Optimisation: exact minimisers, so measured errors are statistical, not optimisation error


@dataclass
class Fit:
    theta: torch.Tensor
    grad_norm: float
    iters: int


def gradient(objective: Callable, theta: torch.Tensor) -> torch.Tensor:
    """Autograd gradient of a scalar function of theta."""
    theta = theta.detach().requires_grad_(True)
    return torch.autograd.grad(objective(theta), theta)[0]


def minimise(objective: Callable, dim: int, tol: float = 1e-9, max_iter: int = 200) -> Fit:
    """Damped saddle-free Newton from theta = 0 (|eigenvalues| of the Hessian, Armijo backtracking).

    Newton converges quadratically on these small smooth problems; taking |eigenvalues| keeps every step a descent
    direction should the WDPO objective be non-convex somewhere. The caller checks ``grad_norm`` against ``tol``.
    """
    theta = torch.zeros(dim, dtype=DTYPE)
    for it in range(max_iter):
        g = gradient(objective, theta)
        if g.norm() < tol:
            return Fit(theta, g.norm().item(), it)
        evals, evecs = torch.linalg.eigh(torch.autograd.functional.hessian(objective, theta))
        step = -evecs @ ((evecs.T @ g) / evals.abs().clamp_min(1e-10))
        f0, slope, t = objective(theta), g @ step, 1.0
        # Backtrack only while the predicted decrease is resolvable in float64; closer in, the full step is right.
        while -slope > 1e-12 and objective(theta + t * step) > f0 + 1e-4 * t * slope and t > 1e-12:
            t /= 2
        theta = theta + t * step
    g = gradient(objective, theta)
    return Fit(theta, g.norm().item(), max_iter)


def checked_minimise(objective: Callable, dim: int, what: str, tol: float = 1e-9) -> torch.Tensor:
    """Minimise and refuse to report a point that is not a stationary point (e.g. separable data at tiny n)."""
    fit = minimise(objective, dim, tol=tol)
    if not fit.grad_norm < tol:
        raise RuntimeError(f"{what}: optimiser did not converge (|grad| = {fit.grad_norm:.2e} after {fit.iters} it)")
    return fit.theta


# ----------------------------------------------------------------------------------------------------------------------
# Rates


def fit_slope(ns: np.ndarray, errors: np.ndarray) -> tuple[float, float]:
    """Least-squares (slope, intercept) of log(errors) against log(ns): errors ≈ exp(intercept) n^slope."""
    slope, intercept = np.polyfit(np.log(ns), np.log(errors), 1)
    return float(slope), float(intercept)


def bootstrap_slope_std(ns: np.ndarray, errors: np.ndarray, reps: int = 1000, seed: int = 0) -> float:
    """Spread of the fitted slope when the seeds are resampled; ``errors`` has shape (num_n, seeds)."""
    rng = np.random.default_rng(seed)
    seeds = errors.shape[1]
    slopes = [fit_slope(ns, errors[:, rng.integers(seeds, size=seeds)].mean(1))[0] for _ in range(reps)]
    return float(np.std(slopes))


@dataclass
class Results:
    ns: np.ndarray
    targets: dict[str, torch.Tensor]
    err_target: dict[str, np.ndarray]  # (num_n, seeds) ||theta_hat - target||
    err_star: dict[str, np.ndarray]  # (num_n, seeds) ||theta_hat - theta*||


def run(args: argparse.Namespace) -> Results:
    """Fit every method on every (n, seed) sample; the same sample is shared by the three methods."""
    bandit = make_bandit(args.contexts, args.actions, args.dim, args.beta, args.env_seed)
    targets = {"DPO": bandit.theta_star}
    for method in METHODS[1:]:
        pop = objective_for(method, bandit.diffs, bandit.probs, args)
        targets[method] = checked_minimise(pop, args.dim, f"{method} population", tol=1e-12)

    ns = np.unique(np.round(np.geomspace(args.n_min, args.n_max, args.num_n)).astype(int))
    err_target = {m: np.zeros((len(ns), args.seeds)) for m in METHODS}
    err_star = {m: np.zeros((len(ns), args.seeds)) for m in METHODS}
    for i, n in enumerate(ns):
        start = time.time()
        for seed in range(args.seeds):
            freqs = sample_frequencies(bandit, int(n), np.random.default_rng([args.env_seed, int(n), seed]))
            for method in METHODS:
                emp = objective_for(method, bandit.diffs, freqs, args)
                theta = checked_minimise(emp, args.dim, f"{method} n={n} seed={seed}")
                err_target[method][i, seed] = (theta - targets[method]).norm().item()
                err_star[method][i, seed] = (theta - bandit.theta_star).norm().item()
        if not args.quiet:
            print(f"n={n:>7d}: {args.seeds} seeds x {len(METHODS)} methods in {time.time() - start:.1f}s", flush=True)
    return Results(ns, targets, err_target, err_star)


# ----------------------------------------------------------------------------------------------------------------------
# Reporting


def hparam(method: str, args: argparse.Namespace) -> str:
    return {"DPO": "-", "KLDPO": f"tau={args.tau:g}", "WDPO": f"rho={args.rho:g}"}[method]


def format_table(res: Results, args: argparse.Namespace) -> str:
    """Slope summary per method, then per-n mean ± std of the errors."""
    theta_star = res.targets["DPO"]
    lines = [
        (
            f"config: contexts={args.contexts} actions={args.actions} dim={args.dim} beta={args.beta:g} "
            f"seeds={args.seeds} env_seed={args.env_seed} n={args.n_min}..{args.n_max} ({len(res.ns)} values)"
        ),
        "",
        f"{'method':<7} {'hparam':<9} {'slope':>16} {'paper bound':>12} {'|target-theta*|':>16}",
    ]
    for m in METHODS:
        slope, _ = fit_slope(res.ns, res.err_target[m].mean(1))
        std = bootstrap_slope_std(res.ns, res.err_target[m])
        gap = (res.targets[m] - theta_star).norm().item()
        lines.append(f"{m:<7} {hparam(m, args):<9} {slope:>+9.3f} ± {std:.3f} {PAPER_BOUND[m]:>+12.2f} {gap:>16.4f}")
    lines += ["", "||theta_hat - target||, mean ± std over seeds (target = theta* for DPO, population minimiser else)"]
    cols = [f"{m} err" for m in METHODS] + [f"{m} |.-theta*|" for m in METHODS[1:]]
    lines.append(f"{'n':>7} " + " ".join(f"{c:>19}" for c in cols))
    for i, n in enumerate(res.ns):
        errs = [res.err_target[m][i] for m in METHODS] + [res.err_star[m][i] for m in METHODS[1:]]
        lines.append(f"{n:>7d} " + " ".join(f"{e.mean():>10.5f} ± {e.std():<6.4f}" for e in errs))
    return "\n".join(lines)


def plot(res: Results, args: argparse.Namespace, path: Path) -> None:
    """Log-log errors with fitted lines and n^-1/4, n^-1/2 reference slopes anchored at the smallest n."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    ns = res.ns.astype(float)
    grid = np.geomspace(ns[0], ns[-1], 100)
    for m, color in zip(METHODS, ("C0", "C1", "C2"), strict=True):
        mean, std = res.err_target[m].mean(1), res.err_target[m].std(1)
        slope, intercept = fit_slope(ns, mean)
        ax.errorbar(ns, mean, yerr=std, fmt="o", color=color, capsize=3, label=f"{m} ({hparam(m, args)})")
        ax.plot(grid, np.exp(intercept) * grid**slope, "-", color=color, alpha=0.7, label=f"{m} fit: n^{slope:.2f}")
    top = 1.5 * max(res.err_target[m].mean(1)[0] for m in METHODS)  # offset so the references do not hide fits
    for power, style in ((-0.25, ":"), (-0.5, "--")):
        ax.plot(grid, top * (grid / ns[0]) ** power, style, color="grey", label=f"reference n^{power:g}")
    ax.set(xscale="log", yscale="log", xlabel="n (preference pairs)", ylabel="mean ||theta_hat - target||")
    ax.set_title("Estimation error vs sample size (log-linear bandit)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------------------
# CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n-min", type=int, default=100)
    p.add_argument("--n-max", type=int, default=100000)
    p.add_argument("--num-n", type=int, default=8, help="log-spaced sample sizes between n-min and n-max")
    p.add_argument("--seeds", type=int, default=30, help="independent samples per n")
    p.add_argument("--dim", type=int, default=4)
    p.add_argument("--contexts", type=int, default=10)
    p.add_argument("--actions", type=int, default=8)
    p.add_argument("--beta", type=float, default=1.0)
    p.add_argument("--tau", type=float, default=1.0, help="KLDPO temperature")
    p.add_argument("--rho", type=float, default=0.5, help="WDPO penalty weight")
    p.add_argument("--env-seed", type=int, default=0, help="seed of the features and theta*")
    p.add_argument("--out", type=Path, default=None, help=f"default: benchmarks/results; with --tiny: {TINY_OUT}")
    p.add_argument("--tiny", action="store_true", help="smoke-test size: n=200..2000, 3 values, 3 seeds")
    p.add_argument("--quiet", action="store_true", help="no progress lines (the table is always printed)")
    args = p.parse_args(argv)
    if args.tiny:
        args.n_min, args.n_max, args.num_n, args.seeds = 200, 2000, 3, 3
    args.out = args.out or (TINY_OUT if args.tiny else RESULTS)
    if args.tiny and args.out.resolve() == RESULTS:  # a smoke test must never overwrite the published figures
        p.error(f"--tiny would overwrite the published results in {RESULTS}: give another --out")
    if args.n_min < 2 or args.n_max <= args.n_min or args.num_n < 2 or args.actions < 2:
        p.error("need 2 <= n-min < n-max, num-n >= 2 and actions >= 2")
    return args


def main(argv: list[str] | None = None) -> Results:
    args = parse_args(argv)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    start = time.time()
    res = run(args)
    table = format_table(res, args)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "theory_rate.txt").write_text(table + "\n")
    plot(res, args, args.out / "theory_rate.png")
    if not args.quiet:
        print(
            f"\nwrote {args.out / 'theory_rate.txt'} and {args.out / 'theory_rate.png'} in {time.time() - start:.1f}s"
        )
    return res


if __name__ == "__main__":
    main()
