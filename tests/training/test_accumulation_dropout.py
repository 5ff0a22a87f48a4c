"""With dropout left on, the scored accumulation route's scoring pass and gradient pass of one micro-batch draw the
same dropout masks (accumulation.py's promise), so its step is the gradient of the objective it scored.

A real one-step fit (tiny GPT-2, float64, SGD lr=1, ``model.disable_policy_dropout: false``) with KLDPO's clamped form
over micro-batches of 3, 3 and 2 pairs, against a computation by hand that draws one set of masks per micro-batch:
with the seed of loader batch k, the per-pair DPO losses from the model's own logits (log-softmax and a gather) and a
reference computed separately; the clamped weights w_i = min(exp((ℓ_i − mean ℓ)/τ), c) over all 8 losses; then, with
the same seed again, Σ w_i ℓ_i / 8 back-propagated per micro-batch. The clamped weights are a smooth function of the
losses, so masks that differ between the two passes (or from the batch's seed) move the step.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from rdpo_lightning.robust import KLReweighter
from rdpo_lightning.training.reproducibility import batch_seed
from tests.lora_fits import brute_logps, fit

SEED, BETA, TAU, CLAMP = 0, 0.1, 0.02, 2.0  # fit() seeds everything with 0


class RecordBatches(L.Callback):
    """The loader batches the fit saw, in order (cloned: the window keeps them until the step)."""

    def __init__(self) -> None:
        self.batches: list[dict[str, torch.Tensor]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        assert batch_idx == len(self.batches)
        self.batches.append({k: v.clone() for k, v in batch.items() if isinstance(v, torch.Tensor)})


def hand_losses(policy, reference, batch) -> torch.Tensor:
    """Per-pair DPO losses of one collated batch (chosen rows first, then rejected), from full logits."""
    policy_logps, reference_logps = brute_logps(policy, batch), brute_logps(reference, batch)
    ratios = policy_logps - reference_logps
    half = ratios.shape[0] // 2
    return -F.logsigmoid(BETA * (ratios[:half] - ratios[half:]))


def test_scoring_and_gradient_passes_draw_the_same_masks_with_dropout_on(tiny_model_dir, tiny_reference_dir, tmp_path):
    recorder = RecordBatches()
    module = fit(
        tiny_model_dir, tmp_path / "cache", steps=1, data={"batch_size": 3}, trainer_args={"callbacks": [recorder]},
        reference=str(tiny_reference_dir), beta=BETA, robust=KLReweighter(tau=TAU, normalize=False, clamp_max=CLAMP),
        disable_policy_dropout=False, accumulate_grad_batches=3,
    )  # fmt: skip
    trainer = module.trainer
    assert [b["input_ids"].shape[0] // 2 for b in recorder.batches] == [3, 3, 2]

    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64).train()
    assert policy.config.resid_pdrop > 0 and policy.config.attn_pdrop > 0
    reference = AutoModelForCausalLM.from_pretrained(tiny_reference_dir, dtype=torch.float64).eval()
    seeds = [batch_seed(SEED, 0, index, 0) for index in range(len(recorder.batches))]

    def losses_of(index: int) -> torch.Tensor:
        torch.manual_seed(seeds[index])
        return hand_losses(policy, reference, recorder.batches[index])

    with torch.no_grad():
        scored = torch.cat([losses_of(k) for k in range(3)])
        torch.manual_seed(seeds[0] + 1)  # other masks move the losses: dropout is on
        assert (hand_losses(policy, reference, recorder.batches[0]) - scored[:3]).abs().max() > 1e-4
    weights = torch.exp((scored - scored.mean()) / TAU).clamp(max=CLAMP)
    assert weights.max() == CLAMP and weights.min() < 1  # clamped and unequal: the weights matter
    offset = 0
    for k in range(3):
        losses = losses_of(k)
        (weights[offset : offset + losses.shape[0]] * losses).sum().div(len(scored)).backward()
        offset += losses.shape[0]

    trained = dict(module.policy.named_parameters())
    for name, param in policy.named_parameters():
        want = param.detach() - param.grad  # one SGD step, lr 1
        torch.testing.assert_close(trained[name].detach(), want, rtol=0, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}")
    assert trainer.logged_metrics["train/loss"].item() == pytest.approx((weights * scored).mean().item(), rel=1e-12)
