"""Block discovery, FSDP1 auto-wrap, activation checkpointing, refusals, manual accumulation, bf16-mixed steps."""

from __future__ import annotations

import contextlib
import functools

import lightning as L
import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from rdpo_lightning.data import AttributeWorldDataModule
from rdpo_lightning.models.sharding import (
    apply_activation_checkpointing,
    is_sharded,
    prepare_models,
    transformer_block_classes,
    transformer_blocks,
)
from rdpo_lightning.robust import KLReweighter, NoRobust, WassersteinPenalty
from rdpo_lightning.robust.wasserstein import pair_gradient_sq_norms
from rdpo_lightning.training.module import RobustDPO
from rdpo_lightning.training.quiet import quiet_trainer


def tiny_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=40, n_layer=2, n_head=2, n_embd=16, n_positions=32))


def tiny_llama() -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2
    )
    return LlamaForCausalLM(config)


def test_blocks_are_found_from_the_model_not_hard_coded():
    assert [c.__name__ for c in transformer_block_classes(tiny_gpt2())] == ["GPT2Block"]
    llama = tiny_llama()
    assert [c.__name__ for c in transformer_block_classes(llama)] == ["LlamaDecoderLayer"]
    assert transformer_blocks(llama) == list(llama.model.layers)


def test_blocks_fall_back_to_the_longest_module_list_and_fail_clearly_without_one():
    class Layer(nn.Linear):
        pass

    stacked = nn.Sequential(nn.Embedding(4, 4), nn.ModuleList([Layer(4, 4) for _ in range(3)]))
    assert transformer_block_classes(stacked) == (Layer,)
    with pytest.raises(ValueError, match="cannot find the transformer blocks of Linear"):
        transformer_block_classes(nn.Linear(2, 2))


class RecordingWrapper(nn.Module):
    """Stands in for FSDP1's wrapper class (FSDP1 cannot be constructed without a GPU): records what it was given."""

    def __init__(self, module: nn.Module, **kwargs) -> None:
        super().__init__()
        self.module, self.kwargs = module, kwargs


def test_fsdp1_wraps_each_model_as_its_own_root_with_a_block_auto_wrap_policy():
    """Inside the strategy's enable_wrap context (active in configure_model), as Lightning sets it up."""
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy, enable_wrap

    policy, reference = tiny_llama(), tiny_llama()
    strategy = FSDPStrategy()
    with enable_wrap(wrapper_cls=RecordingWrapper, **strategy.kwargs):
        wrapped_policy, none, wrapped_reference = prepare_models(strategy, [policy, None, reference])
    assert none is None
    assert wrapped_policy.module is policy and wrapped_reference.module is reference
    wrap = wrapped_policy.kwargs["auto_wrap_policy"]
    assert isinstance(wrap, ModuleWrapPolicy)
    assert {c.__name__ for c in wrap._module_classes} == {"LlamaDecoderLayer"}
    assert wrapped_policy.kwargs["use_orig_params"] is True  # the strategy's own settings reach the wrapper

    chosen = ModuleWrapPolicy({nn.Linear})
    user = FSDPStrategy(auto_wrap_policy=chosen)
    with enable_wrap(wrapper_cls=RecordingWrapper, **user.kwargs):
        (wrapped,) = prepare_models(user, [tiny_gpt2()])
    assert wrapped.kwargs["auto_wrap_policy"] is chosen


def test_models_pass_through_unsharded_strategies():
    model = tiny_gpt2()
    assert prepare_models(DDPStrategy(), [model, None]) == [model, None]
    assert prepare_models(None, [model]) == [model]


def test_only_fsdp_counts_as_sharded_and_exact_wdpo_is_refused_there():
    assert is_sharded(FSDPStrategy()) and not is_sharded(DDPStrategy()) and not is_sharded(None)
    assert WassersteinPenalty(rho=0.1, mode="exact").sharding_refusal() is not None
    assert WassersteinPenalty(rho=0.1, mode="finite_difference").sharding_refusal() is None
    assert WassersteinPenalty(rho=0.0, mode="exact").sharding_refusal() is None  # no penalty, no double backward
    assert NoRobust().sharding_refusal() is None and KLReweighter().sharding_refusal() is None


def exact_penalty_gradients(model: nn.Module, ids: torch.Tensor, forward_context=contextlib.nullcontext):
    """∇_θ of mean loss + ρ‖∇_z ℓ‖² through double backward (z: the input embeddings, captured by a hook), the
    forward alone inside ``forward_context``, as the module runs it."""
    captured = []
    handle = model.get_input_embeddings().register_forward_hook(lambda m, i, out: captured.append(out) or out)
    with forward_context():
        logits = model(input_ids=ids).logits
    handle.remove()
    losses = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none").mean(1)
    (grad_z,) = torch.autograd.grad(losses.sum(), captured[0], create_graph=True)
    objective = losses.mean() + 0.1 * pair_gradient_sq_norms(grad_z).mean()
    return torch.autograd.grad(objective, [p for p in model.parameters()])


def test_activation_checkpointing_is_non_reentrant_and_keeps_double_backward_exact():
    """Exact WDPO's double backward through checkpointed blocks; the recompute (during autograd.grad, outside the math
    attention context) must reuse the forward's attention kernel: flash attention has no double backward."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

    from rdpo_lightning.robust.base import math_attention

    ids = torch.randint(0, 40, (4, 7), generator=torch.Generator().manual_seed(0))
    plain = tiny_gpt2().double().eval()  # eval: no dropout, so both models compute the same function
    checkpointed = tiny_gpt2().double().eval()
    apply_activation_checkpointing(checkpointed)
    wrapped = [m for m in checkpointed.modules() if isinstance(m, CheckpointWrapper)]
    assert len(wrapped) == 2
    with math_attention():
        want = exact_penalty_gradients(plain, ids)
    got = exact_penalty_gradients(checkpointed, ids, forward_context=math_attention)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def one_step(
    model_dir, robust, batch_size, accumulate=1, max_steps=1, precision="64-true", trainer_accumulate=1, **module_kwargs
):
    L.seed_everything(0, verbose=False)
    module = RobustDPO(
        model=str(model_dir),
        robust=robust,
        optimizer=functools.partial(torch.optim.SGD, lr=1.0),
        min_lr_ratio=1.0,
        gradient_clip_val=None,
        accumulate_grad_batches=accumulate,
        precompute_reference=False,
        **module_kwargs,
    )
    data = AttributeWorldDataModule(
        num_train=8, num_val=2, val_alphas=[], batch_size=batch_size, max_length=24, tokenizer_dir=str(model_dir)
    )
    trainer = quiet_trainer(
        accelerator="cpu",
        precision=precision,
        max_steps=max_steps,
        limit_val_batches=0,
        accumulate_grad_batches=trainer_accumulate,
    )
    trainer.fit(module, datamodule=data)
    return module, trainer


def test_manual_accumulation_equals_one_full_batch_step(tiny_model_dir):
    """WDPO finite_difference (manual optimisation): 2 micro-batches of 4 accumulate to the 8-pair batch's step."""
    robust = functools.partial(WassersteinPenalty, rho=0.05, mode="finite_difference")
    full, _ = one_step(tiny_model_dir, robust(), batch_size=8)
    accumulated, trainer = one_step(tiny_model_dir, robust(), batch_size=4, accumulate=2)
    assert trainer.global_step == 1  # one optimizer step for the two micro-batches
    for (name, a), (_, b) in zip(full.policy.named_parameters(), accumulated.policy.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12, msg=name)


def test_trainer_accumulation_is_refused_with_the_key_to_use(tiny_model_dir):
    """Lightning's accumulation would form the objective per micro-batch: one line naming the module's key."""
    from rdpo_lightning.errors import InputError

    with pytest.raises(InputError, match=r"set model.accumulate_grad_batches: 2 instead") as refused:
        one_step(tiny_model_dir, KLReweighter(), batch_size=4, trainer_accumulate=2)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(
    "robust",
    [NoRobust(), KLReweighter(tau=0.5), WassersteinPenalty(rho=0.05), WassersteinPenalty(rho=0.05, mode="exact")],
    ids=["none", "kl", "wdpo_fd", "wdpo_exact"],
)
def test_bf16_mixed_step_with_every_robust_strategy(tiny_model_dir, robust):
    module, trainer = one_step(tiny_model_dir, robust, batch_size=4, precision="bf16-mixed", max_steps=2)
    assert trainer.global_step == 2
    assert all(torch.isfinite(p).all() for p in module.policy.parameters())
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


def test_activation_checkpointing_leaves_the_exact_wdpo_step_unchanged(tiny_model_dir):
    exact = functools.partial(WassersteinPenalty, rho=0.05, mode="exact")
    plain, _ = one_step(tiny_model_dir, exact(), batch_size=4)
    checkpointed, _ = one_step(tiny_model_dir, exact(), batch_size=4, activation_checkpointing=True)
    named = dict(plain.policy.named_parameters())
    for name, param in checkpointed.policy.named_parameters():
        torch.testing.assert_close(param, named[name.replace("_checkpoint_wrapped_module.", "")], rtol=0, atol=1e-12)


def test_activation_checkpointing_recomputes_a_packed_row_with_the_varlen_attention(tmp_path):
    """The blocks of a packed one-row forward are recomputed in backward, after the forward's switch to the
    variable-length attention has ended: they must recompute with it (sdpa over the whole row would let the
    sequences see each other), giving the gradients of each sequence scored alone."""
    from rdpo_lightning.data.collate import PairCollator
    from rdpo_lightning.models.scoring import _PACKING_CHECKED, ONE_ROW, token_logps
    from tests.data.test_packing import pairs
    from tests.models.test_varlen_attention import alone_logps, saved_model

    lm = saved_model("llama", tmp_path)
    apply_activation_checkpointing(lm)
    logps, _ = token_logps(lm, PairCollator(0, padding_free=True)(pairs()))
    assert getattr(lm, _PACKING_CHECKED) == ONE_ROW
    (logps.sum(-1) ** 2).sum().backward()
    got = {n: p.grad.clone() for n, p in lm.named_parameters()}
    lm.zero_grad()
    (torch.stack(alone_logps(lm, pairs())) ** 2).sum().backward()
    for name, param in lm.named_parameters():
        torch.testing.assert_close(got[name], param.grad, rtol=0, atol=1e-10, msg=name)
