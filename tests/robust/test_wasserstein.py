"""WDPO's parameter gradient, both modes, against an independent per-pair autograd computation (float64)."""

from __future__ import annotations

import pytest
import torch

from rdpo_lightning.batch_layout import SCORED_POSITIONS
from rdpo_lightning.data.collate import PairCollator
from rdpo_lightning.data.tokenize import tokenize_pair
from rdpo_lightning.data.tokenizer import load_tokenizer
from rdpo_lightning.robust import ScoredPairs, WassersteinPenalty
from rdpo_lightning.robust.base import math_attention
from rdpo_lightning.robust.wasserstein import pair_gradient_sq_norms
from rdpo_lightning.training.module import RobustDPO

PAIRS = [
    ("the morning train", "rage fury the", "terror dread"),
    ("a city road", "happy laugh", "grief tears lonely sky"),
    ("night river", "afraid", "bitter hostile hate"),
]
RHO = 0.3


@pytest.fixture()
def batch(world_tokenizer_dir):
    tokenizer = load_tokenizer(world_tokenizer_dir)
    rows = [tokenize_pair({"prompt": p, "chosen": c, "rejected": r}, tokenizer, 32) for p, c, r in PAIRS]
    return PairCollator(tokenizer.pad_token_id)(rows), len(tokenizer)


def make_module(vocab: int, robust: WassersteinPenalty) -> RobustDPO:
    config = {"model_type": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 16, "n_positions": 32, "vocab_size": vocab}
    torch.manual_seed(0)
    module = RobustDPO(model_config=config, robust=robust, torch_dtype="float64", beta=0.5)
    module.configure_model()
    with torch.no_grad():  # move the policy away from the reference so the losses are not all log 2
        for p in module.policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return module


def grads(module: RobustDPO) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in module.policy.parameters()])


def independent_gradient(module: RobustDPO, batch: dict, penalty=lambda sq: sq) -> tuple[torch.Tensor, list[float]]:
    """J = mean_i ℓ_i + ρ·mean_i penalty(‖∇_z ℓ_i‖²), each pair through its own forward, then ∇_θ J by autograd;
    also each pair's ‖∇_z ℓ_i‖."""
    half = batch["input_ids"].shape[0] // 2
    reference = module.reference_logps(batch)
    terms, norms = [], []
    with math_attention():  # double backward needs the math attention path
        for i in range(half):
            rows = {k: v[[i, half + i]] for k, v in batch.items() if k not in ("columns", SCORED_POSITIONS)}
            ref_i = type(reference)(reference.chosen[[i]], reference.rejected[[i]])
            pairs = module.policy_forward(rows, ref_i, True)
            (g,) = torch.autograd.grad(pairs.losses.sum(), pairs.embeddings, create_graph=True)
            sq = g.pow(2).sum()
            norms.append(sq.item() ** 0.5)
            terms.append(pairs.losses.sum() + RHO * penalty(sq))
        objective = torch.stack(terms).mean()
        flat = torch.cat([g.flatten() for g in torch.autograd.grad(objective, list(module.policy.parameters()))])
    return flat, norms


def form_penalty(form: str):
    """WDPO's per-pair penalty of ‖∇_z ℓ_i‖²: itself (``squared``) or its square root (``norm``)."""
    return (lambda sq: sq) if form == "squared" else torch.sqrt


def run_exact(module: RobustDPO, batch: dict) -> torch.Tensor:
    pairs = module.policy_forward(batch, module.reference_logps(batch), capture=True)
    with module.robust.forward_context():
        module.robust(pairs).loss.backward()
    return grads(module)


def run_manual(module: RobustDPO, batch: dict) -> torch.Tensor:
    reference = module.reference_logps(batch)
    module.robust.manual_step(
        lambda shift: module.policy_forward(batch, reference, capture=shift is None, shift=shift),
        lambda loss: loss.backward(),
    )
    return grads(module)


@pytest.mark.parametrize("form", ["squared", "norm"])
def test_exact_mode_matches_independent_gradient(batch, form):
    batch, vocab = batch
    module = make_module(vocab, WassersteinPenalty(rho=RHO, mode="exact", form=form))
    want, _ = independent_gradient(module, batch, form_penalty(form))
    module.policy.zero_grad()
    torch.testing.assert_close(run_exact(module, batch), want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("form", ["squared", "norm"])
def test_finite_difference_matches_within_tolerance(batch, form):
    """Small ε in float64: the central-free forward difference is O(ε) accurate; 1e-6 relative is ample."""
    batch, vocab = batch
    module = make_module(vocab, WassersteinPenalty(rho=RHO, mode="finite_difference", form=form, epsilon=1e-6))
    assert not module.automatic_optimization
    want, _ = independent_gradient(module, batch, form_penalty(form))
    module.policy.zero_grad()
    got = run_manual(module, batch)
    assert (got - want).norm() / want.norm() < 1e-5


def test_default_step_is_the_adversarial_form(batch):
    """ε = 2ρ: the gradient is exactly ∇_θ mean ℓ(z + 2ρ·∇_z ℓ), computed here by hand."""
    batch, vocab = batch
    module = make_module(vocab, WassersteinPenalty(rho=RHO))
    reference = module.reference_logps(batch)
    pairs = module.policy_forward(batch, reference, capture=True)
    (g,) = torch.autograd.grad(pairs.losses.sum(), pairs.embeddings)
    shifted = module.policy_forward(batch, reference, shift=2 * RHO * g)
    want = torch.cat(
        [x.flatten() for x in torch.autograd.grad(shifted.losses.mean(), list(module.policy.parameters()))]
    )
    torch.testing.assert_close(run_manual(module, batch), want, rtol=1e-10, atol=1e-12)


def test_penalty_value_is_per_pair_sum_over_chosen_and_rejected():
    g = torch.arange(2 * 2 * 3 * 1, dtype=torch.float64).view(4, 3, 1)  # B = 2 pairs
    sq = pair_gradient_sq_norms(g)
    assert sq.tolist() == [g[0].pow(2).sum() + g[2].pow(2).sum(), g[1].pow(2).sum() + g[3].pow(2).sum()]


def test_zero_rho_is_plain_dpo(batch):
    batch, vocab = batch
    module = make_module(vocab, WassersteinPenalty(rho=0.0))
    assert module.automatic_optimization
    pairs = module.policy_forward(batch, module.reference_logps(batch), capture=True)
    assert module.robust(pairs).loss.item() == pytest.approx(pairs.losses.mean().item())


@pytest.mark.parametrize(
    "kwargs, key",
    [({"rho": -0.1}, "rho"), ({"mode": "approx"}, "mode"), ({"form": "cubic"}, "form"), ({"epsilon": 0}, "epsilon")],
)
def test_bad_hyper_parameters_rejected(kwargs, key):
    with pytest.raises(ValueError, match=key):
        WassersteinPenalty(**kwargs)


# --- the clamp (max_grad_norm) and overflow ----------------------------------------------------------------------


def clamped(max_norm: float):
    """The clamped squared penalty s_i‖∇_z ℓ_i‖², s_i = min(1, M/‖∇_z ℓ_i‖) a constant."""
    return lambda sq: min(1.0, max_norm / sq.item() ** 0.5) * sq


@pytest.mark.parametrize("mode", ["exact", "finite_difference"])
def test_clamped_penalty_matches_independent_gradient(batch, mode):
    batch, vocab = batch
    module = make_module(vocab, WassersteinPenalty(rho=RHO))
    _, norms = independent_gradient(module, batch)
    max_norm = sorted(norms)[len(norms) // 2]  # the median pair: some pairs clamped, some not
    assert min(norms) < max_norm < max(norms)
    want, _ = independent_gradient(module, batch, clamped(max_norm))
    epsilon = 1e-6 if mode == "finite_difference" else None
    module.robust = WassersteinPenalty(rho=RHO, mode=mode, epsilon=epsilon, max_grad_norm=max_norm)
    module.policy.zero_grad()
    got = run_exact(module, batch) if mode == "exact" else run_manual(module, batch)
    assert (got - want).norm() / want.norm() < (1e-9 if mode == "exact" else 1e-5)


def overflowing_pairs() -> ScoredPairs:
    """float32 losses whose input gradient has ‖g‖² ≈ 1e62: past float32's 3.4e38, fine in float64."""
    z = torch.randn(4, 3, 5, generator=torch.Generator().manual_seed(0)).requires_grad_()
    w = torch.randn(5, generator=torch.Generator().manual_seed(1))
    rows = 1e30 * torch.tanh(z @ w).sum(1)
    return ScoredPairs(losses=rows[:2] + rows[2:], embeddings=z)


def test_overflowing_gradient_norms_stay_finite_with_a_clamp():
    pairs = overflowing_pairs()
    sq = pair_gradient_sq_norms(torch.autograd.grad(pairs.losses.sum(), pairs.embeddings, retain_graph=True)[0])
    assert sq.dtype == torch.float64 and torch.isfinite(sq).all() and sq.min() > 1e50

    clamped = WassersteinPenalty(rho=0.1, mode="exact", max_grad_norm=1.0)(pairs)
    assert torch.isfinite(clamped.loss) and torch.isfinite(clamped.metrics["penalty"])
    (grad,) = torch.autograd.grad(clamped.loss, pairs.embeddings, retain_graph=True)
    assert torch.isfinite(grad).all()
    # the clamped penalty is ρ·mean M·‖g_i‖
    assert clamped.metrics["penalty"].item() == pytest.approx(0.1 * sq.sqrt().mean().item(), rel=1e-5)

    unclamped = WassersteinPenalty(rho=0.1, mode="exact")(pairs)
    assert not torch.isfinite(unclamped.loss)  # left for the module's on_nonfinite guard

    g = torch.autograd.grad(pairs.losses.sum(), pairs.embeddings)[0]
    direction = WassersteinPenalty(rho=0.1, max_grad_norm=2.0)._direction(g, sq)
    per_pair = pair_gradient_sq_norms(direction).sqrt()
    assert torch.isfinite(direction).all()
    torch.testing.assert_close(per_pair, torch.full_like(per_pair, 2.0), rtol=1e-5, atol=0)


def test_exactly_zero_gradient_pair_gives_a_finite_clamped_gradient():
    z = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)
    rows = torch.tanh(z.sum((1, 2)))
    losses = torch.stack([rows[0] + rows[2], rows[1].detach() * 0 + rows[3].detach()])  # pair 1: no dependence on z
    out = WassersteinPenalty(rho=0.1, mode="exact", max_grad_norm=1e-3)(ScoredPairs(losses=losses, embeddings=z))
    (grad,) = torch.autograd.grad(out.loss, z)
    assert torch.isfinite(grad).all()
