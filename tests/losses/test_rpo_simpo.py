"""RPOLoss (a pair loss plus an NLL on the chosen response) and SimPOLoss against their closed forms, written out with
scalar math from per-token log-probs."""

from __future__ import annotations

import math

import pytest
import torch

from rdpo_lightning.losses import IPOLoss, RPOLoss, SigmoidLoss, SimPOLoss
from rdpo_lightning.pair_scores import PairLogps, PairScores

# per-token log-probs of each pair's chosen / rejected response under the policy and the reference (ragged lengths)
POLICY_CHOSEN = [[-0.5, -1.0, -0.2], [-2.0], [-0.1, -0.3, -0.4, -0.9, -1.1], [-0.7, -0.6]]
POLICY_REJECTED = [[-1.5, -0.4], [-0.9, -0.8, -1.2], [-0.05], [-2.2, -0.3, -0.3, -0.1]]
REFERENCE_CHOSEN = [[-0.6, -0.9, -0.4], [-1.0], [-0.2, -0.3, -0.3, -1.0, -1.0], [-0.5, -0.9]]
REFERENCE_REJECTED = [[-1.0, -0.5], [-1.0, -0.7, -1.0], [-0.5], [-2.0, -0.2, -0.6, -0.4]]
BETA = 0.7


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def scores(length_normalized: bool) -> PairScores:
    """What the module hands a loss: sums of token log-probs, or per-token means for a length-normalised loss."""

    def sequence(rows: list[list[float]]) -> torch.Tensor:
        return torch.tensor([sum(r) / len(r) if length_normalized else sum(r) for r in rows], dtype=torch.float64)

    return PairScores(
        policy=PairLogps(sequence(POLICY_CHOSEN), sequence(POLICY_REJECTED)),
        reference=PairLogps(sequence(REFERENCE_CHOSEN), sequence(REFERENCE_REJECTED)),
        chosen_tokens=torch.tensor([len(r) for r in POLICY_CHOSEN]),
        rejected_tokens=torch.tensor([len(r) for r in POLICY_REJECTED]),
    )


def dpo(i: int) -> float:
    h = (sum(POLICY_CHOSEN[i]) - sum(REFERENCE_CHOSEN[i])) - (sum(POLICY_REJECTED[i]) - sum(REFERENCE_REJECTED[i]))
    return -log_sigmoid(BETA * h)


def mean(row: list[float]) -> float:
    return sum(row) / len(row)


PAIRS = range(len(POLICY_CHOSEN))


def test_rpo_tokens_normalisation_is_trl_sft_term_split_per_pair():
    """TRL 1.16 (loss_type=["sigmoid", "sft"]): DPO mean + α·(−mean of every chosen token's log-prob in the batch).
    The per-pair split is −S_i·B/ΣT; its plain mean is TRL's number."""
    alpha = 0.6
    losses = RPOLoss(alpha=alpha).pair_losses(scores(False), BETA)
    all_tokens = [t for row in POLICY_CHOSEN for t in row]
    trl = sum(dpo(i) for i in PAIRS) / len(PAIRS) + alpha * -(sum(all_tokens) / len(all_tokens))
    assert losses.mean().item() == pytest.approx(trl, rel=1e-12)
    per_pair = [dpo(i) - alpha * sum(POLICY_CHOSEN[i]) * len(PAIRS) / len(all_tokens) for i in PAIRS]
    assert losses.tolist() == pytest.approx(per_pair, rel=1e-12)


def test_rpo_sequence_normalisation_is_each_response_mean_nll():
    """OpenRLHF's nll_loss_coef / the RPO paper: −(1/|y_w|)·Σ_t log π(y_w,t) per pair."""
    alpha = 2.0
    losses = RPOLoss(alpha=alpha, nll_normalization="sequence").pair_losses(scores(False), BETA)
    assert losses.tolist() == pytest.approx([dpo(i) - alpha * mean(POLICY_CHOSEN[i]) for i in PAIRS], rel=1e-12)


@pytest.mark.parametrize("normalization", ["tokens", "sequence"])
def test_rpo_on_a_length_normalised_loss_keeps_the_nll_on_the_same_scale(normalization):
    """Wrapped around IPO the module hands per-token means; the NLL term is the same as on sums."""
    rpo = RPOLoss(loss=IPOLoss(), alpha=1.0, nll_normalization=normalization)
    assert rpo.length_normalized and rpo.uses_reference
    losses = rpo.pair_losses(scores(True), BETA)
    ipo = [
        ((mean(POLICY_CHOSEN[i]) - mean(REFERENCE_CHOSEN[i])) - (mean(POLICY_REJECTED[i]) - mean(REFERENCE_REJECTED[i]))
         - 1 / (2 * BETA)) ** 2
        for i in PAIRS
    ]  # fmt: skip
    nll = RPOLoss(alpha=1.0, nll_normalization=normalization).chosen_nll(scores(False))
    assert losses.tolist() == pytest.approx([ipo[i] + nll[i].item() for i in PAIRS], rel=1e-12)


def test_rpo_with_alpha_zero_is_the_inner_loss_and_its_gradient_reaches_only_the_chosen_policy():
    s = scores(False)
    inner = SigmoidLoss().pair_losses(s, BETA).tolist()
    assert RPOLoss(alpha=0.0).pair_losses(s, BETA).tolist() == pytest.approx(inner, rel=1e-15)
    chosen = s.policy.chosen.clone().requires_grad_()
    rejected = s.policy.rejected.clone().requires_grad_()
    s.policy = PairLogps(chosen, rejected)
    nll = RPOLoss(nll_normalization="sequence").chosen_nll(s)
    nll.sum().backward()
    lengths = torch.tensor([len(r) for r in POLICY_CHOSEN], dtype=torch.float64)
    torch.testing.assert_close(chosen.grad, -1 / lengths)
    assert rejected.grad is None or not rejected.grad.any()


def test_simpo_is_the_papers_formula():
    """−log σ(β/|y_w|·log π(y_w) − β/|y_l|·log π(y_l) − γ): no reference anywhere."""
    gamma = 0.8
    loss = SimPOLoss(gamma=gamma)
    assert loss.length_normalized and not loss.uses_reference
    expected = [-log_sigmoid(BETA * mean(POLICY_CHOSEN[i]) - BETA * mean(POLICY_REJECTED[i]) - gamma) for i in PAIRS]
    assert loss.pair_losses(scores(True), BETA).tolist() == pytest.approx(expected, rel=1e-12)
    other_reference = scores(True)
    other_reference.reference = PairLogps(torch.full((4,), 9.0), torch.full((4,), -9.0))
    assert loss.pair_losses(other_reference, BETA).tolist() == pytest.approx(expected, rel=1e-12)


def test_simpo_matches_trl_cpo_simpo_form():
    """TRL's CPO trainer (loss_type="simpo"): logits = Δ − γ/β, loss = −log σ(β·logits) — the same number."""
    gamma = 0.5
    s = scores(True)
    delta = s.policy.chosen - s.policy.rejected
    trl = -torch.nn.functional.logsigmoid(BETA * (delta - gamma / BETA))
    torch.testing.assert_close(SimPOLoss(gamma=gamma).pair_losses(s, BETA), trl, rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    "make, key", [(lambda: RPOLoss(alpha=-1.0), "alpha"), (lambda: RPOLoss(nll_normalization="batch"), "nll_normal"),
                  (lambda: SimPOLoss(gamma=float("nan")), "gamma")]
)  # fmt: skip
def test_bad_arguments_name_their_key(make, key):
    with pytest.raises(ValueError, match=key):
        make()
