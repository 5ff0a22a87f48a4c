"""The Mixture-of-Experts router load-balancing term on a tiny Mixtral, against transformers' own
``load_balancing_loss_func`` fed router logits computed independently (each layer's gate weight applied to the
hidden states its router receives, captured by forward hooks), over the concatenated chosen + rejected batch with its
padding masked out; and its place in the training objective (``coef`` × aux on top of the robust objective)."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import pytest
import torch
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

from rdpo_lightning.data.collate import PairCollator
from rdpo_lightning.errors import InputError
from rdpo_lightning.models.loading import load_causal_lm
from rdpo_lightning.models.scoring import score_tokens
from rdpo_lightning.robust.base import local_gather
from rdpo_lightning.training.accumulation import MicroBatch, WindowPasses, run_window, scale_gradients
from rdpo_lightning.training.module import RobustDPO

VOCAB = 61
MIXTRAL = {
    "model_type": "mixtral", "vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "num_local_experts": 4, "num_experts_per_tok": 2,
    "bos_token_id": 1, "eos_token_id": 2,
}  # fmt: skip


def pairs() -> list[dict]:
    g = torch.Generator().manual_seed(5)

    def ids(n: int) -> list[int]:
        return torch.randint(3, VOCAB, (n,), generator=g).tolist()

    return [{"prompt_ids": ids(p), "chosen_ids": ids(c), "rejected_ids": ids(r)} for p, c, r in [(3, 6, 2), (1, 2, 9)]]


def mixtral() -> torch.nn.Module:
    torch.manual_seed(0)
    return load_causal_lm(None, MIXTRAL)


def independent_aux(model: torch.nn.Module, batch: dict, mask: torch.Tensor | None, grad: bool = False):
    """transformers' load_balancing_loss_func on gate logits recomputed from each router's input."""
    gate_logits = []
    hooks = [
        layer.mlp.gate.register_forward_hook(
            lambda m, inputs, _out: gate_logits.append(inputs[0].reshape(-1, m.weight.shape[1]) @ m.weight.T)
        )
        for layer in model.model.layers
    ]
    try:
        with torch.set_grad_enabled(grad):
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        for hook in hooks:
            hook.remove()
    return load_balancing_loss_func(tuple(gate_logits), 4, 2, mask)


@pytest.mark.parametrize("fused", [True, False])
def test_the_aux_loss_of_a_padded_and_a_packed_batch_is_transformers_own(fused):
    model = mixtral().eval()
    batch = PairCollator(0)(pairs())
    want = independent_aux(model, batch, batch["attention_mask"])
    assert (want - independent_aux(model, batch, None)).abs() > 1e-4  # the padding mask matters on this batch
    scores = score_tokens(model, batch, fused=fused, router_aux=True)
    torch.testing.assert_close(scores.router_aux_loss, want, rtol=1e-6, atol=1e-6)
    assert scores.router_aux_loss.requires_grad
    packed = score_tokens(model, PairCollator(0, padding_free=True)(pairs()), fused=fused, router_aux=True)
    torch.testing.assert_close(packed.router_aux_loss, want, rtol=1e-5, atol=1e-5)
    assert score_tokens(model, batch, fused=fused).router_aux_loss is None


def module(coef: float | None, config: dict = MIXTRAL, robust=None) -> RobustDPO:
    torch.manual_seed(0)
    dpo = RobustDPO(model_config=config, precompute_reference=False, router_aux_loss_coef=coef, robust=robust)
    dpo.configure_model()
    return dpo.train()


@pytest.mark.parametrize(("coef", "weight"), [(None, 0.001), (0.5, 0.5), (0.0, 0.0)])
def test_the_training_objective_adds_coef_times_the_aux_loss(coef, weight):
    """At step 0 the policy is its reference: DPO's loss is exactly log 2, the rest is the router term; the gradient
    is DPO's (the same module without the term) plus ``weight`` × the independent aux loss's."""
    dpo, plain = module(coef), module(0.0)
    batch = PairCollator(0)(pairs())
    aux = independent_aux(dpo.policy, batch, batch["attention_mask"], grad=True)
    loss = dpo.training_step(batch, 0)
    torch.testing.assert_close(loss.detach(), torch.tensor(math.log(2) + weight * aux.item()), rtol=0, atol=1e-6)
    loss.backward()
    plain.training_step(batch, 0).backward()
    aux_grads = torch.autograd.grad(aux, list(dpo.policy.parameters()), allow_unused=True)
    for (name, p), q, a in zip(dpo.policy.named_parameters(), plain.policy.parameters(), aux_grads, strict=True):
        want = q.grad + (0 if a is None else weight * a)
        torch.testing.assert_close(p.grad, want, rtol=1e-5, atol=1e-8, msg=name)
    assert any(a is not None and a.abs().max() > 1e-4 for a in aux_grads)


def window_passes(dpo: RobustDPO) -> WindowPasses:
    """What the module's optimizer step hands :func:`run_window`, without a Trainer (one process, no seeding)."""
    return WindowPasses(
        reference=dpo.reference_logps,
        forward=dpo.policy_forward,
        seed=lambda index: None,
        backward=lambda loss: loss.backward(),
        scale_gradients=functools.partial(scale_gradients, list(dpo.policy.parameters())),
        gather=local_gather,
        world_size=1,
        router_aux_coef=dpo._router_aux_coef,
    )


def moved(dpo: RobustDPO) -> RobustDPO:
    """The policy moved away from its (resident) reference, so that a reweighting is not uniform."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in dpo.policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return dpo


def test_wdpos_manual_step_adds_the_term_once_from_the_unperturbed_forward():
    """WDPO's finite difference with ε ≠ 2ρ backpropagates two forwards (unperturbed, perturbed): the gradient is the
    strategy's own plus ``coef`` × the unperturbed aux loss's, counted once."""
    from rdpo_lightning.robust import WassersteinPenalty

    coef, grads = 0.5, []
    for weight in (coef, 0.0):
        dpo = module(weight, robust=WassersteinPenalty(rho=0.01, mode="finite_difference", epsilon=0.002))
        batch = PairCollator(0)(pairs())
        aux = independent_aux(dpo.policy, batch, batch["attention_mask"], grad=True)
        aux_grads = torch.autograd.grad(aux, list(dpo.policy.parameters()), allow_unused=True)
        dpo.policy.zero_grad()
        run_window([MicroBatch(0, batch)], dpo.robust, window_passes(dpo), "optimizer_batch")
        grads.append([p.grad.clone() for p in dpo.policy.parameters()])
    for with_term, plain, a in zip(*grads, aux_grads, strict=True):
        torch.testing.assert_close(with_term, plain + (0 if a is None else coef * a), rtol=1e-4, atol=1e-7)


def test_accumulated_kl_adds_each_micro_batchs_term_by_its_pair_share():
    """KLDPO over a window of two one-pair micro-batches with the term on (its softmax route then scores first): the
    gradient is the one-batch KLDPO gradient of both pairs (a module without the term, automatic optimisation) plus
    coef × the pair-share-weighted sum of each micro-batch's own independent aux-loss gradient."""
    from rdpo_lightning.robust import KLReweighter

    coef = 0.5
    dpo, plain = (moved(module(c, robust=KLReweighter(tau=0.05))) for c in (coef, 0.0))
    micro = [PairCollator(0)([pair]) for pair in pairs()]
    dpo.policy.zero_grad()
    run_window([MicroBatch(i, b) for i, b in enumerate(micro)], dpo.robust, window_passes(dpo), "optimizer_batch")
    loss = plain.training_step(PairCollator(0)(pairs()), 0)
    loss.backward()
    want = [q.grad.clone() for q in plain.policy.parameters()]
    for batch in micro:
        aux = independent_aux(dpo.policy, batch, batch["attention_mask"], grad=True)
        for i, a in enumerate(torch.autograd.grad(aux, list(dpo.policy.parameters()), allow_unused=True)):
            if a is not None:
                want[i] = want[i] + coef * 0.5 * a
    for (name, p), w in zip(dpo.policy.named_parameters(), want, strict=True):
        torch.testing.assert_close(p.grad, w, rtol=1e-4, atol=1e-7, msg=name)


def test_a_coefficient_for_a_model_without_router_logits_is_one_line():
    with pytest.raises(InputError, match="model.router_aux_loss_coef=0.1: GPT2LMHeadModel is not a Mixture"):
        module(0.1, {"model_type": "gpt2", "vocab_size": VOCAB, "n_embd": 16, "n_layer": 1, "n_head": 2})


@pytest.mark.parametrize(
    "robust",
    [[], ["-c", "wasserstein.yaml"]],
    ids=["dpo", "wdpo_adversarial"],
)
def test_rdpo_fit_logs_the_router_aux_loss(robust, tmp_path, tensorboard_scalars):
    """A real fit of a tiny Mixtral: automatic optimisation, and WDPO's manual step where only the perturbed forward
    is backpropagated (ε = 2ρ; the unperturbed one's graph is gone by then)."""
    from rdpo_lightning.cli import main

    configs = Path(__file__).resolve().parents[2] / "configs"
    robust = [str(configs / "robust" / a) if a.endswith(".yaml") else a for a in robust]
    config = {k: v for k, v in MIXTRAL.items() if k not in ("vocab_size", "bos_token_id", "eos_token_id")}
    main([
        "fit", "-c", str(configs / "quickstart.yaml"), *robust, f"--model.model_config={json.dumps(config)}",
        "--model.router_aux_loss_coef=0.01", f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.max_steps=2", "--trainer.log_every_n_steps=1",
        "--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false", "--trainer.callbacks=[]",
        "--data.init_args.num_train=16", "--data.init_args.batch_size=8", "--data.init_args.num_val=8",
        "--data.init_args.val_alphas=[0.5]",
    ])  # fmt: skip
    aux = tensorboard_scalars(tmp_path)["train/router_aux_loss"]
    assert sorted(aux) == [0, 1] and all(1.0 < value < 4.0 for value in aux.values()), aux


def eight_pairs() -> list[dict]:
    """Eight pairs of different lengths (so micro-batches pad differently and their router terms differ)."""
    g = torch.Generator().manual_seed(11)

    def ids(n: int) -> list[int]:
        return torch.randint(3, VOCAB, (n,), generator=g).tolist()

    lengths = [(3, 6, 2), (1, 2, 9), (2, 5, 5), (4, 3, 7), (2, 8, 1), (3, 2, 2), (1, 7, 4), (5, 4, 6)]
    return [{"prompt_ids": ids(p), "chosen_ids": ids(c), "rejected_ids": ids(r)} for p, c, r in lengths]


def test_scored_route_adds_each_unequal_micro_batchs_term_by_its_pair_share():
    """The scored route (CVaR here; the clamped KL, chi-square and Group DRO take it too) over micro-batches of 3, 3
    and 2 pairs with the term on: the gradient is the one-batch objective's gradient over all 8 pairs (a module
    without the term, automatic optimisation) plus coef × Σ_k (n_k / 8) × micro-batch k's own independent aux-loss
    gradient. Equal micro-batches (or one pair each) cannot tell the pair share from 1/(number of micro-batches);
    3/8, 3/8, 2/8 can."""
    from rdpo_lightning.robust import CVaR

    coef, everything = 2.0, eight_pairs()
    dpo, plain = (moved(module(c, robust=CVaR(worst_fraction=0.3))) for c in (coef, 0.0))
    assert dpo.robust.accumulation == "scored"
    micro = [PairCollator(0)(everything[a:b]) for a, b in ((0, 3), (3, 6), (6, 8))]
    dpo.policy.zero_grad()
    run_window([MicroBatch(i, b) for i, b in enumerate(micro)], dpo.robust, window_passes(dpo), "optimizer_batch")
    plain.training_step(PairCollator(0)(everything), 0).backward()
    want = [q.grad.clone() for q in plain.policy.parameters()]
    for batch, pairs_in in zip(micro, (3, 3, 2), strict=True):
        aux = independent_aux(dpo.policy, batch, batch["attention_mask"], grad=True)
        for i, a in enumerate(torch.autograd.grad(aux, list(dpo.policy.parameters()), allow_unused=True)):
            if a is not None:
                want[i] = want[i] + coef * (pairs_in / 8) * a
    for (name, p), w in zip(dpo.policy.named_parameters(), want, strict=True):
        torch.testing.assert_close(p.grad, w, rtol=1e-4, atol=1e-7, msg=lambda m, n=name: f"{n}: {m}")
