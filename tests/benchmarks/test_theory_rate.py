"""benchmarks/theory_rate.py: its objectives against autograd, its targets against closed forms, and a tiny run."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.benchmarks.tiny_runs import run_tiny

tr = importlib.import_module("benchmarks.theory_rate")  # the repository root is on pytest's path


def _args(**overrides):
    return tr.parse_args([f"--{k.replace('_', '-')}={v}" for k, v in overrides.items()])


def _random_problem(n: int = 7, d: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(d, generator=gen, dtype=torch.float64), torch.randn(n, d, generator=gen, dtype=torch.float64)


def test_wdpo_input_gradient_closed_form_matches_autograd():
    beta = 0.7
    theta, x = _random_problem()
    theta.requires_grad_(True)
    x = x.clone().requires_grad_(True)
    # Each pair loss depends on its own row of x only, so the gradient of the sum gives every per-pair input gradient.
    (auto,) = torch.autograd.grad(tr.pair_losses(theta, x, beta).sum(), x, create_graph=True)
    closed = tr.input_grad(theta, x, beta)
    torch.testing.assert_close(closed, auto, rtol=1e-12, atol=1e-14)
    # ... and the penalty built from either has the same gradient in theta (double back-propagation).
    (g_auto,) = torch.autograd.grad(auto.pow(2).sum(), theta, retain_graph=True)
    (g_closed,) = torch.autograd.grad(closed.pow(2).sum(), theta)
    torch.testing.assert_close(g_closed, g_auto, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("uniform", [True, False])
def test_kl_objective_gradient_is_softmax_weighted_pair_gradients(uniform: bool):
    beta, tau = 1.3, 0.4
    theta, x = _random_problem(n=9)
    w = torch.full((9,), 1 / 9, dtype=torch.float64) if uniform else torch.rand(9, dtype=torch.float64).softmax(0)
    theta.requires_grad_(True)
    (auto,) = torch.autograd.grad(tr.kl_objective(theta, x, w, beta, tau), theta)

    losses = tr.pair_losses(theta, x, beta).detach()
    per_pair = torch.autograd.functional.jacobian(lambda t: tr.pair_losses(t, x, beta), theta.detach())  # (n, d)
    weights = torch.softmax(losses / tau + w.log(), dim=0)  # = softmax(l / tau) for the uniform empirical weights
    torch.testing.assert_close(auto, weights @ per_pair, rtol=1e-12, atol=1e-14)
    if uniform:
        torch.testing.assert_close(weights, torch.softmax(losses / tau, dim=0))


def test_fit_slope_recovers_a_power_law_exactly():
    ns = np.geomspace(100, 30000, 7)
    slope, intercept = tr.fit_slope(ns, 3.0 * ns**-0.5)
    assert slope == pytest.approx(-0.5, abs=1e-12)
    assert intercept == pytest.approx(np.log(3.0), abs=1e-10)


def test_population_probabilities_and_sampling():
    bandit = tr.make_bandit(contexts=4, actions=3, dim=3, beta=1.0, seed=1)
    assert bandit.probs.sum().item() == pytest.approx(1.0, abs=1e-12)
    freqs = tr.sample_frequencies(bandit, 200_000, np.random.default_rng(0))
    assert freqs.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert (freqs - bandit.probs).abs().max().item() < 0.01


@pytest.mark.parametrize("tau", [1.0, 0.2])
def test_population_targets_match_closed_forms(tau: float):
    """DPO is Fisher-consistent (target theta*). For KLDPO each (x, -x) pair contributes
    sigma(z*) sigma(z)^(-1/tau) + sigma(-z*) sigma(-z)^(-1/tau), smallest at z = z* tau / (1 + tau) for every pair at
    once, so the population target is exactly theta* tau / (1 + tau) - a closed form the target computation must hit."""
    args = _args(tau=tau)
    bandit = tr.make_bandit(contexts=5, actions=4, dim=3, beta=args.beta, seed=2)
    for method, expected in (("DPO", bandit.theta_star), ("KLDPO", bandit.theta_star * tau / (1 + tau))):
        objective = tr.objective_for(method, bandit.diffs, bandit.probs, args)
        theta = tr.checked_minimise(objective, 3, method, tol=1e-12)
        torch.testing.assert_close(theta, expected, rtol=0, atol=1e-9)


def test_dpo_estimator_on_a_large_sample_is_close_to_theta_star():
    args = _args()
    bandit = tr.make_bandit(args.contexts, args.actions, args.dim, args.beta, seed=0)
    freqs = tr.sample_frequencies(bandit, 1_000_000, np.random.default_rng(0))
    theta = tr.checked_minimise(tr.objective_for("DPO", bandit.diffs, freqs, args), args.dim, "DPO")
    assert (theta - bandit.theta_star).norm().item() < 0.02


def test_wdpo_estimator_converges_to_a_stationary_point_shrunk_towards_zero():
    args = _args(rho=0.5)
    bandit = tr.make_bandit(args.contexts, args.actions, args.dim, args.beta, seed=0)
    objective = tr.objective_for("WDPO", bandit.diffs, bandit.probs, args)
    fit = tr.minimise(objective, args.dim, tol=1e-12)
    assert fit.grad_norm < 1e-12
    assert 0 < fit.theta.norm().item() < bandit.theta_star.norm().item()


def test_tiny_run_writes_table_and_plot_to_a_temp_folder_not_the_published_results(tmp_path: Path):
    proc = run_tiny("theory_rate", "--quiet", cwd=tmp_path, timeout=120, TMPDIR=str(tmp_path))
    with pytest.raises(SystemExit):
        tr.parse_args(["--tiny", "--out", str(tr.RESULTS)])
    tmp_path = tmp_path / tr.TINY_OUT.name
    for method in ("DPO", "KLDPO", "WDPO"):
        assert method in proc.stdout
    assert "slope" in proc.stdout and "paper bound" in proc.stdout
    table = (tmp_path / "theory_rate.txt").read_text()
    assert "slope" in table and "KLDPO" in table
    png = (tmp_path / "theory_rate.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
