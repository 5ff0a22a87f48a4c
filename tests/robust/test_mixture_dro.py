"""MixtureDRO against computations that share none of its code: a brute-force loop over mixtures and pairs (float64,
Python scalars), autograd of that loop for the parameter gradient, the limits of the smoothed form, and DPO at α₀.
The uncertainty sets are tested in test_mixture_set.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rdpo_lightning.data.score_margins import SCORE_MARGINS
from rdpo_lightning.losses import HingeLoss, RPOLoss, SigmoidLoss, SimPOLoss
from rdpo_lightning.pair_scores import PairLogps, PairScores
from rdpo_lightning.robust import MixtureDRO, NoRobust, ScoredPairs
from rdpo_lightning.robust.mixture_set import MixtureSet

ATTRIBUTES = ("anger", "fear", "joy")
B, K, D = 9, 3, 4


def explicit(weights, center: int = 0) -> MixtureSet:
    weights = np.asarray(weights, dtype=np.float64)
    return MixtureSet(weights, tuple(str(i) for i in range(len(weights))), center, ATTRIBUTES)


ALPHAS = [[0.1, 0.9, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.2, 0.3, 0.5]]


def problem(seed: int = 0, ties: bool = False):
    """θ (D,), features, and score margins (B, K); ``ties``: some pairs tie at some mixtures (integer margins)."""
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(D, dtype=torch.float64, generator=g, requires_grad=True)
    chosen, rejected = (
        torch.randn(B, D, dtype=torch.float64, generator=g),
        torch.randn(B, D, dtype=torch.float64, generator=g),
    )
    if ties:
        margins = torch.randint(-2, 3, (B, K), generator=g).double()
    else:
        margins = torch.randn(B, K, dtype=torch.float64, generator=g)
    return theta, chosen, rejected, margins


def scored(theta, chosen, rejected, margins, loss=SigmoidLoss()) -> ScoredPairs:
    zero = torch.zeros(B, dtype=torch.float64)
    scores = PairScores(PairLogps(chosen @ theta, rejected @ theta), PairLogps(zero, zero), zero + 3, zero + 5)
    return ScoredPairs(
        losses=loss.pair_losses(scores, 0.5),
        reversed_losses=loss.pair_losses(scores.swapped(), 0.5),
        scores=scores,
        columns={SCORE_MARGINS: margins},
    )


def brute_force(theta, chosen, rejected, margins, alphas, label_temperature, aggregate, temperature=0.1):
    """The objective written out: a loop over mixtures, a loop over pairs, DPO's loss −log σ(β·h) by hand."""
    per_mixture = []
    for alpha in alphas:
        total, count = 0.0, 0
        for i in range(B):
            d = sum(float(alpha[k]) * float(margins[i, k]) for k in range(K))
            if label_temperature is None:
                if abs(d) <= 1e-12 * sum(float(alpha[k]) * abs(float(margins[i, k])) for k in range(K)):
                    continue  # a tie: no larger than the rounding of the terms that cancelled
                p = 1.0 if d > 0 else 0.0
            else:
                p = 1.0 / (1.0 + math.exp(-d / label_temperature))
            h = 0.5 * ((chosen[i] - rejected[i]) * theta).sum()
            total = total + p * -F.logsigmoid(h) + (1 - p) * -F.logsigmoid(-h)
            count += 1
        if count:
            per_mixture.append(total / count)
    values = torch.stack(per_mixture)
    if aggregate == "max":
        return values.max()
    if aggregate == "mean":
        return values.mean()
    return temperature * torch.log(torch.exp(values / temperature).mean())


CASES = [
    ("max", 0.3, False),
    ("max", None, False),
    ("max", None, True),  # hard labels with ties: weight 0, each mixture's mean over its untied pairs
    ("mean", 0.3, False),
    ("mean", None, True),
    ("smooth", 0.3, False),
    ("smooth", None, True),
]


@pytest.mark.parametrize(("aggregate", "label_temperature", "ties"), CASES)
def test_objective_and_gradient_equal_the_brute_force_loop(aggregate, label_temperature, ties):
    theta, chosen, rejected, margins = problem(ties=ties)
    strategy = MixtureDRO(radius=0.0, label_temperature=label_temperature, aggregate=aggregate, temperature=0.1)
    strategy.use_set(explicit(ALPHAS))
    out = strategy(scored(theta, chosen, rejected, margins))
    (got,) = torch.autograd.grad(out.loss, theta)
    want_value = brute_force(theta, chosen, rejected, margins, ALPHAS, label_temperature, aggregate)
    (want,) = torch.autograd.grad(want_value, theta)
    assert out.loss.item() == pytest.approx(want_value.item(), abs=1e-12)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert float(want.abs().max()) > 1e-3  # a real gradient


def test_metrics_name_the_worst_mixture_and_the_spread():
    theta, chosen, rejected, margins = problem()
    strategy = MixtureDRO(radius=0.0, label_temperature=0.3)
    strategy.use_set(explicit(ALPHAS))
    out = strategy(scored(theta, chosen, rejected, margins))
    values = [brute_force(theta, chosen, rejected, margins, [a], 0.3, "max").item() for a in ALPHAS]
    worst = int(np.argmax(values))
    assert float(out.metrics["worst_loss"]) == pytest.approx(max(values), rel=1e-6)
    assert float(out.metrics["center_loss"]) == pytest.approx(values[0], rel=1e-6)
    assert float(out.metrics["spread"]) == pytest.approx(max(values) - min(values), rel=1e-5)
    for k, name in enumerate(ATTRIBUTES):
        assert float(out.metrics[f"worst_alpha/{name}"]) == pytest.approx(ALPHAS[worst][k])
    d = margins.numpy() @ np.asarray(ALPHAS).T
    flipped = np.mean((d[:, worst] > 0) != (d[:, 0] > 0))
    assert float(out.metrics["flipped_fraction"]) == pytest.approx(flipped)


def test_flipped_fraction_compares_with_alpha0_where_the_set_holds_it():
    """α₀ in the middle of the set (row 2), not its first row: the share of pairs whose label at the worst mixture
    opposes their label at α₀, hard and soft, counted by hand."""
    theta, chosen, rejected, margins = problem(seed=18)  # a worst mixture that is neither row 0 nor α₀'s
    alphas = [ALPHAS[1], ALPHAS[3], ALPHAS[0], ALPHAS[4], ALPHAS[2]]
    d = margins.numpy() @ np.asarray(alphas).T
    for label_temperature in (None, 0.3):
        strategy = MixtureDRO(radius=0.0, label_temperature=label_temperature)
        strategy.use_set(explicit(alphas, center=2))
        out = strategy(scored(theta, chosen, rejected, margins))
        values = [brute_force(theta, chosen, rejected, margins, [a], label_temperature, "max").item() for a in alphas]
        worst = int(np.argmax(values))
        assert worst not in (0, 2)
        flipped = np.mean((d[:, worst] > 0) != (d[:, 2] > 0))
        assert flipped != np.mean((d[:, worst] > 0) != (d[:, 0] > 0))  # row 0 would give another share
        assert float(out.metrics["flipped_fraction"]) == pytest.approx(flipped)
        assert float(out.metrics["center_loss"]) == pytest.approx(values[2], rel=1e-6)


def noise_margins() -> torch.Tensor:
    """Margins whose mix at (0.3, 0.7, 0) cancels in exact arithmetic but leaves rounding (−2.8e-17, 1.4e-17,
    3.5e-18): 0.3·(0.7c) + 0.7·(−0.3c) for c = 0.7, 0.37, 0.123; then pairs with real margins."""
    rows = [[0.7 * c, -0.3 * c, 0.5] for c in (0.7, 0.37, 0.123)]
    rows += [[0.4, -0.1, 0.0], [-0.2, 0.05, 0.3], [1e-6, 0.0, 0.0], [-0.3, 0.2, -0.1], [0.0, 0.0, 0.0], [0.2, 0.3, 0]]
    return torch.tensor(rows, dtype=torch.float64)


def test_margins_of_rounding_noise_are_ties_not_preferences():
    """At (0.3, 0.7, 0) the first three pairs' margins are 1e-17-sized noise of random sign: hard labels give them no
    weight there (as the data's pairing drops such a pair), while a real margin of 1e-6 keeps its label."""
    margins = noise_margins()
    d = margins @ torch.tensor([0.3, 0.7, 0.0], dtype=torch.float64)
    assert (d[:3] != 0).all() and (d[:3].abs() < 1e-16).all()  # the noise is there
    theta, chosen, rejected, _ = problem(seed=2)
    alphas = [[0.3, 0.7, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    strategy = MixtureDRO(radius=0.0, aggregate="mean")
    strategy.use_set(explicit(alphas))
    p, w = strategy.labels(margins)
    assert w[:, 0].tolist() == [0, 0, 0, 1, 1, 1, 1, 0, 1] and w[:3, 1:].all()
    assert p[5, 0] == 1 and p[3, 0] == 1 and p[4, 0] == 0
    out = strategy(scored(theta, chosen, rejected, margins))
    want = brute_force(theta, chosen, rejected, margins, alphas, None, "mean")
    assert out.loss.item() == pytest.approx(want.item(), abs=1e-12)
    mixed = margins @ torch.tensor(alphas, dtype=torch.float64).T
    ties = int((mixed.abs() < 1e-15).sum())  # the noise and the exact zeros
    assert float(out.metrics["tie_fraction"]) == pytest.approx(ties / (B * len(alphas)))


def test_the_data_and_mixture_dro_call_the_same_pairs_ties():
    """One rule: for completions whose scores give these margins (convex scores s and s − Δ), the pairing drops a pair
    at α exactly where MixtureDRO gives it no weight at α, noise-level margins included."""
    from rdpo_lightning.data.mixture import Mixture
    from rdpo_lightning.data.pairing import PromptCompletions, pair_completions

    margins = noise_margins()
    alphas = [[0.3, 0.7, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.5, 0.25, 0.25]]
    strategy = MixtureDRO(radius=0.0)
    strategy.use_set(explicit(alphas))
    _, w = strategy.labels(margins)
    base = np.array([0.61, 0.47, 0.83])
    groups = [PromptCompletions(f"p{i}", ["a", "b"], np.stack([base, base - m.numpy()])) for i, m in enumerate(margins)]
    for j, alpha in enumerate(alphas):
        mixture = Mixture(tuple(alpha), "alpha", "convex")
        rows, dropped = pair_completions(
            groups, [mixture], np.zeros(B, dtype=int), "bradley_terry", None, [(0, 1)] * B, np.random.default_rng(0)
        )
        kept = {int(prompt[1:]) for prompt in rows["prompt"]}
        assert kept == set(np.flatnonzero(w[:, j].numpy())), alpha
        assert dropped == B - len(kept)


def test_the_smoothed_form_tends_to_the_mean_and_to_the_max():
    theta, chosen, rejected, margins = problem(seed=3)

    def value_and_gradient(aggregate, temperature=0.1):
        strategy = MixtureDRO(radius=0.0, label_temperature=0.3, aggregate=aggregate, temperature=temperature)
        strategy.use_set(explicit(ALPHAS))
        out = strategy(scored(theta, chosen, rejected, margins))
        return out.loss.item(), torch.autograd.grad(out.loss, theta)[0]

    top, top_grad = value_and_gradient("max")
    mean, mean_grad = value_and_gradient("mean")
    cold, cold_grad = value_and_gradient("smooth", 1e-6)
    hot, hot_grad = value_and_gradient("smooth", 1e6)
    middle, _ = value_and_gradient("smooth", 0.05)
    assert cold == pytest.approx(top, abs=1e-5) and hot == pytest.approx(mean, abs=1e-6)
    torch.testing.assert_close(cold_grad, top_grad, rtol=0, atol=1e-9)
    torch.testing.assert_close(hot_grad, mean_grad, rtol=0, atol=1e-6)
    assert mean < middle < top and top - mean > 1e-3  # the limits differ, and the middle lies between them


def test_one_mixture_with_hard_labels_is_dpo_at_it_bitwise():
    """U = {α₀}, hard labels, every pair labelled at α₀ (its margin > 0): DPO's gradient, bit for bit."""
    theta, chosen, rejected, margins = problem(seed=5)
    alpha0 = torch.tensor(ALPHAS[0], dtype=torch.float64)
    margins = margins * torch.sign(margins @ alpha0)[:, None]  # every pair's chosen wins at α₀
    strategy = MixtureDRO(radius=0.0)
    strategy.use_set(explicit([ALPHAS[0]]))
    got = torch.autograd.grad(strategy(scored(theta, chosen, rejected, margins)).loss, theta)[0]
    want = torch.autograd.grad(NoRobust()(scored(theta, chosen, rejected, margins)).loss, theta)[0]
    assert torch.equal(got, want)


def rpo_by_hand(policy_chosen, policy_rejected, chosen_tokens, rejected_tokens, beta, alpha):
    """RPO (tokens) of the reversed order, written out: DPO with the roles swapped, plus α·NLL of the *rejected*
    response over the batch's rejected tokens."""
    h = beta * (policy_rejected - policy_chosen)
    return -F.logsigmoid(h) + alpha * -policy_rejected * len(rejected_tokens) / rejected_tokens.sum()


def test_reversed_losses_are_computed_not_assumed():
    """For margin losses the reversed loss is ℓ(−h); for RPO and SimPO it is not, and the module's swap gets them."""
    g = torch.Generator().manual_seed(7)
    chosen, rejected = -torch.rand(B, generator=g, dtype=torch.float64) * 20, -torch.rand(B, generator=g).double() * 20
    tokens_c, tokens_r = torch.randint(2, 9, (B,), generator=g), torch.randint(2, 9, (B,), generator=g)
    zero = torch.zeros(B, dtype=torch.float64)
    scores = PairScores(PairLogps(chosen, rejected), PairLogps(zero, zero), tokens_c, tokens_r)
    swapped = scores.swapped()
    h = 0.5 * (chosen - rejected)
    torch.testing.assert_close(SigmoidLoss(0.2).pair_losses(swapped, 0.5), SigmoidLoss(0.2)(-h / 0.5, zero, 0.5))
    torch.testing.assert_close(HingeLoss().pair_losses(swapped, 0.5), torch.relu(1 + h))
    rpo = RPOLoss(alpha=0.7)
    want = rpo_by_hand(chosen, rejected, tokens_c, tokens_r.double(), 0.5, 0.7)
    torch.testing.assert_close(rpo.pair_losses(swapped, 0.5), want, rtol=0, atol=1e-12)
    assert (rpo.pair_losses(swapped, 0.5) - (-F.logsigmoid(-h) + 0.7 * rpo.chosen_nll(scores))).abs().max() > 1e-3
    simpo = SimPOLoss(gamma=0.5)  # the policy's per-token means, the other way round, minus the same margin γ
    torch.testing.assert_close(simpo.pair_losses(swapped, 2.0), -F.logsigmoid(2.0 * (rejected - chosen) - 0.5))
    assert (simpo.pair_losses(swapped, 2.0) - -F.logsigmoid(-(2.0 * (chosen - rejected) - 0.5))).abs().max() > 1e-3
