"""WDPO's parameter gradient, both modes, against an independent per-pair autograd computation (float64)."""

from __future__ import annotations

import pytest
import torch

from rdpo_lightning.data.collate import PairCollator
from rdpo_lightning.data.tokenize import tokenize_pair
from rdpo_lightning.data.tokenizer import load_tokenizer
from rdpo_lightning.module import RobustDPO
from rdpo_lightning.robust import WassersteinPenalty
from rdpo_lightning.robust.base import math_attention
from rdpo_lightning.robust.wasserstein import pair_gradient_sq_norms

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


def independent_gradient(module: RobustDPO, batch: dict, form: str) -> torch.Tensor:
    """J = mean_i ℓ_i + ρ·mean_i pen(∇_z ℓ_i), each pair through its own forward, then ∇_θ J by autograd."""
    half = batch["input_ids"].shape[0] // 2
    reference = module.reference_logps(batch)
    terms = []
    with math_attention():  # double backward needs the math attention path
        for i in range(half):
            rows = {k: v[[i, half + i]] for k, v in batch.items() if k != "groups"}
            ref_i = type(reference)(reference.chosen[[i]], reference.rejected[[i]])
            pairs, _ = module.policy_forward(rows, ref_i, True)
            (g,) = torch.autograd.grad(pairs.losses.sum(), pairs.embeddings, create_graph=True)
            sq = g.pow(2).sum()
            terms.append(pairs.losses.sum() + RHO * (sq if form == "squared" else sq.sqrt()))
        objective = torch.stack(terms).mean()
        return torch.cat([g.flatten() for g in torch.autograd.grad(objective, list(module.policy.parameters()))])


def run_exact(module: RobustDPO, batch: dict) -> torch.Tensor:
    pairs, _ = module.policy_forward(batch, module.reference_logps(batch), capture=True)
    with module.robust.forward_context():
        module.robust(pairs).loss.backward()
    return grads(module)


def run_manual(module: RobustDPO, batch: dict) -> torch.Tensor:
    reference = module.reference_logps(batch)
    module.robust.manual_step(
        lambda shift: module.policy_forward(batch, reference, capture=shift is None, shift=shift)[0],
        lambda loss: loss.backward(),
    )
    return grads(module)


@pytest.mark.parametrize("form", ["squared", "norm"])
def test_exact_mode_matches_independent_gradient(batch, form):
    batch, vocab = batch
    module = make_module(vocab, WassersteinPenalty(rho=RHO, mode="exact", form=form))
    want = independent_gradient(module, batch, form)
    module.policy.zero_grad()
    torch.testing.assert_close(run_exact(module, batch), want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("form", ["squared", "norm"])
def test_finite_difference_matches_within_tolerance(batch, form):
    """Small ε in float64: the central-free forward difference is O(ε) accurate; 1e-6 relative is ample."""
    batch, vocab = batch
    module = make_module(vocab, WassersteinPenalty(rho=RHO, mode="finite_difference", form=form, epsilon=1e-6))
    assert not module.automatic_optimization
    want = independent_gradient(module, batch, form)
    module.policy.zero_grad()
    got = run_manual(module, batch)
    assert (got - want).norm() / want.norm() < 1e-5


def test_default_step_is_the_adversarial_form(batch):
    """ε = 2ρ: the gradient is exactly ∇_θ mean ℓ(z + 2ρ·∇_z ℓ), computed here by hand."""
    batch, vocab = batch
    module = make_module(vocab, WassersteinPenalty(rho=RHO))
    reference = module.reference_logps(batch)
    pairs, _ = module.policy_forward(batch, reference, capture=True)
    (g,) = torch.autograd.grad(pairs.losses.sum(), pairs.embeddings)
    shifted, _ = module.policy_forward(batch, reference, shift=2 * RHO * g)
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
    pairs, _ = module.policy_forward(batch, module.reference_logps(batch), capture=True)
    assert module.robust(pairs).loss.item() == pytest.approx(pairs.losses.mean().item())


@pytest.mark.parametrize(
    "kwargs, key",
    [({"rho": -0.1}, "rho"), ({"mode": "approx"}, "mode"), ({"form": "cubic"}, "form"), ({"epsilon": 0}, "epsilon")],
)
def test_bad_hyper_parameters_rejected(kwargs, key):
    with pytest.raises(ValueError, match=key):
        WassersteinPenalty(**kwargs)
