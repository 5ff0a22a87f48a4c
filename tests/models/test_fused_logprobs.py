"""Fused output-layer log-probs against the full-logits path (the model's own logits, log-softmaxed and gathered).

The reference computation is independent of the fused code: ``model(...).logits`` over the whole batch, then
``logprobs.token_logprobs``. Losses and gradients (every parameter, and the input embeddings) must agree to 1e-10 in
float64 and 1e-5 in float32, for GPT-2 (tied) and Llama (tied and untied), with activation checkpointing, and through
a double backward (exact WDPO's penalty).
"""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import (
    CohereConfig,
    CohereForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)
from transformers.modeling_outputs import CausalLMOutputWithPast

from rdpo_lightning.batch_layout import IGNORE_INDEX, scored_positions
from rdpo_lightning.double_backward import double_backward
from rdpo_lightning.models.fused_logprobs import fused_token_logps
from rdpo_lightning.models.logprobs import token_logprobs
from rdpo_lightning.models.scoring import token_logps
from rdpo_lightning.models.sharding import apply_activation_checkpointing
from rdpo_lightning.robust.base import math_attention

VOCAB = 97


def gpt2() -> torch.nn.Module:
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=64))


def llama(tied: bool) -> torch.nn.Module:
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=tied,
    )  # fmt: skip
    return LlamaForCausalLM(config)


MODELS = {"gpt2": gpt2, "llama_tied": lambda: llama(True), "llama_untied": lambda: llama(False)}


def build(name: str, dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    return MODELS[name]().to(dtype).eval()


def batch(rows: int = 6, length: int = 13) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Right-padded rows of different lengths with prompts of different lengths, like PairCollator makes."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (rows, length), generator=g)
    attention = torch.zeros_like(ids)
    labels = torch.full_like(ids, IGNORE_INDEX)
    for r in range(rows):
        end, prompt = length - 2 * (r % 3), 2 + r % 4
        attention[r, :end] = 1
        labels[r, prompt:end] = ids[r, prompt:end]
    return {"input_ids": ids, "attention_mask": attention, "use_cache": False}, labels


def objective(logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Something like a DPO loss: a nonlinear function of the per-row sums."""
    sums = (logps * mask).sum(-1)
    return torch.nn.functional.logsigmoid(0.1 * (sums[::2] - sums[1::2])).sum()


def loss_and_grads(
    model, inputs, labels, fused: bool, chunk_tokens: int | None = 5, vocab_tile=None, of=None, positions=None
):
    """The objective (or ``of(logps, mask)``), its parameter gradients and its input-embedding gradient."""
    model.zero_grad()
    captured = []

    def hook(_m, _i, out):
        if not out.requires_grad:  # frozen embeddings (PEFT): a leaf for the input gradient
            out = out.detach().requires_grad_()
        out.retain_grad()
        captured.append(out)
        return out

    handle = model.get_input_embeddings().register_forward_hook(hook)
    try:
        if fused:
            result = fused_token_logps(model, inputs, labels, chunk_tokens, vocab_tile=vocab_tile, positions=positions)
            assert result is not None
            logps, mask = result
        else:
            logps, mask = token_logprobs(model(**inputs).logits, labels, None)
    finally:
        handle.remove()
    loss = (of or objective)(logps, mask)
    loss.backward()
    grads = {
        n.replace("._checkpoint_wrapped_module", ""): p.grad.clone()
        for n, p in model.named_parameters()
        if p.requires_grad
    }
    return loss.detach(), grads, captured[0].grad.clone(), logps.detach()


def assert_same(fused, full, atol: float) -> None:
    loss_f, grads_f, z_f, logps_f = fused
    loss_n, grads_n, z_n, logps_n = full
    torch.testing.assert_close(logps_f, logps_n, rtol=0, atol=atol)
    torch.testing.assert_close(loss_f, loss_n, rtol=0, atol=atol)
    torch.testing.assert_close(z_f, z_n, rtol=0, atol=atol)
    assert grads_f.keys() == grads_n.keys()
    for name in grads_n:
        torch.testing.assert_close(grads_f[name], grads_n[name], rtol=0, atol=atol, msg=name)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize(("dtype", "atol"), [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_losses_and_gradients_match_the_full_logits_path(name, dtype, atol):
    model = build(name, dtype)
    inputs, labels = batch()
    full = loss_and_grads(model, inputs, labels, fused=False)
    fused = loss_and_grads(model, inputs, labels, fused=True)
    assert fused[3].dtype == dtype
    assert_same(fused, full, atol)
    assert full[0].abs() > 1  # a real objective, not a degenerate zero


def random_per_token_weights(logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A robust strategy's view: each scored token's log-prob weighted by its own (signed) factor."""
    weights = torch.randn(logps.shape, generator=torch.Generator().manual_seed(5), dtype=logps.dtype)
    return (logps * weights * mask).sum()


@pytest.mark.parametrize(
    "make", [gpt2, lambda: cohere(), lambda: gemma2()], ids=["gpt2_tied", "cohere_logit_scale", "gemma2_softcap"]
)
@pytest.mark.parametrize(("chunk_tokens", "vocab_tile"), [(5, 10), (3, 96), (None, None)])
def test_tiled_path_for_any_per_token_gradient(make, chunk_tokens, vocab_tile):
    """Tiles that divide neither the scored tokens (39) nor the vocabulary (97), a tied output layer, a logit scale and
    a soft-cap: log-probs and every gradient equal the full-logits path's for random per-token upstream gradients."""
    torch.manual_seed(0)
    model = make().double().eval()
    inputs, labels = batch()
    assert int((labels[:, 1:] != IGNORE_INDEX).sum()) % 5 and VOCAB % 10 and VOCAB % 96
    fused = loss_and_grads(model, inputs, labels, True, chunk_tokens, vocab_tile, of=random_per_token_weights)
    full = loss_and_grads(model, inputs, labels, False, of=random_per_token_weights)
    assert_same(fused, full, 1e-10)


@pytest.mark.parametrize("chunk_tokens", [1, 7, None])
def test_any_chunk_size_gives_the_same_result(chunk_tokens):
    model = build("llama_untied", torch.float64)
    inputs, labels = batch()
    assert_same(
        loss_and_grads(model, inputs, labels, True, chunk_tokens), loss_and_grads(model, inputs, labels, False), 1e-10
    )


def test_activation_checkpointing():
    model = build("llama_untied", torch.float64)
    inputs, labels = batch()
    full = loss_and_grads(model, inputs, labels, fused=False)
    apply_activation_checkpointing(model)
    assert_same(loss_and_grads(model, inputs, labels, fused=True), full, 1e-10)


def test_double_backward_of_an_input_gradient_penalty():
    """Exact WDPO: ‖∇_z ℓ‖² differentiated w.r.t. the parameters (autograd.grad with create_graph, then backward),
    inside the strategy's forward context, which sends the output layer down its checkpointed path. Outside it the
    tiled Function refuses the double backward instead of dropping its terms."""

    def penalty_grads(model, fused: bool):
        model.zero_grad()
        inputs, labels = batch()
        captured = []

        def hook(_m, _i, out):
            captured.append(out)
            return out

        handle = model.get_input_embeddings().register_forward_hook(hook)
        try:
            if fused:
                logps, mask = fused_token_logps(model, inputs, labels, 4)
            else:
                logps, mask = token_logprobs(model(**inputs).logits, labels, None)
        finally:
            handle.remove()
        loss = objective(logps, mask)
        (grad_z,) = torch.autograd.grad(loss, captured[0], create_graph=True)
        penalty = grad_z.pow(2).sum()
        (loss + penalty).backward()
        return penalty.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    model = build("llama_untied", torch.float64)
    with math_attention():
        penalty_n, grads_n = penalty_grads(model, fused=False)
        penalty_f, grads_f = penalty_grads(model, fused=True)
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        with pytest.raises(RuntimeError, match="differentiate twice"):
            penalty_grads(model, fused=True)
    torch.testing.assert_close(penalty_f, penalty_n, rtol=0, atol=1e-10)
    assert penalty_n > 0
    for name in grads_n:
        torch.testing.assert_close(grads_f[name], grads_n[name], rtol=0, atol=1e-10, msg=name)


def test_bf16_autocast_is_close_to_float32():
    model = build("llama_untied", torch.float32)
    inputs, labels = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = loss_and_grads(model, inputs, labels, fused=True)
    full = loss_and_grads(model, inputs, labels, fused=False)
    assert fused[3].dtype == torch.float32
    torch.testing.assert_close(fused[3], full[3], rtol=0, atol=0.1)
    torch.testing.assert_close(fused[0], full[0], rtol=0.02, atol=0.02)


def test_bf16_weights_give_float32_logps():
    model = build("gpt2", torch.bfloat16)
    inputs, labels = batch()
    logps, _ = fused_token_logps(model, inputs, labels)
    want, _ = token_logprobs(model(**inputs).logits, labels)
    assert logps.dtype == torch.float32
    torch.testing.assert_close(logps, want, rtol=0, atol=0.05)


def saved_and_head_calls(model, inputs, labels, chunk_tokens: int):
    """Shapes of what the fused path saves for backward, and of the inputs of each output-layer module call, over a
    forward and backward."""
    calls, saved = [], []
    handle = model.lm_head.register_forward_hook(lambda _m, i, _o: calls.append(tuple(i[0].shape)))

    def pack(tensor):
        saved.append(tuple(tensor.shape))
        return tensor

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            logps, mask = fused_token_logps(model, inputs, labels, chunk_tokens=chunk_tokens)
        objective(logps, mask).backward()
    finally:
        handle.remove()
    rows = inputs["input_ids"].shape[0]
    head_calls = [shape for shape in calls if shape != (rows, 1, 32)]  # the model's own one-position head
    logits_like = [shape for shape in saved if shape and shape[-1] == VOCAB and shape != (32, VOCAB)]  # not W^T
    return saved, head_calls, logits_like


def test_no_logits_are_kept_for_backward_and_only_scored_tokens_are_projected():
    """Tiled path: only the scored tokens' hidden states, the weight and per-token values are saved, no tensor with a
    vocabulary-sized last dimension. Checkpointed path (inside a double backward's context): each output-layer call
    sees at most one chunk of scored tokens, in forward and in the backward recompute, and no logits are saved outside
    the checkpointed chunks."""
    model = build("llama_untied", torch.float32)
    inputs, labels = batch()
    scored = int((labels[:, 1:] != IGNORE_INDEX).sum())

    saved, head_calls, logits_like = saved_and_head_calls(model, inputs, labels, 4)
    assert not head_calls and not logits_like, (head_calls, logits_like)
    assert (scored, 32) in saved and (VOCAB, 32) in saved and (scored,) in saved

    with double_backward():
        _, head_calls, logits_like = saved_and_head_calls(model, inputs, labels, 4)
    assert all(shape[0] <= 4 for shape in head_calls), head_calls
    assert sum(shape[0] for shape in head_calls) == 2 * scored  # forward, then one recompute in backward
    assert not logits_like, logits_like

    # the same check does see the logits the full-logits path saves: it can fail
    saved.clear()

    def pack(tensor):
        saved.append(tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        token_logprobs(model(**inputs).logits, labels, None)
    assert any(shape and shape[-1] == VOCAB and shape != (32, VOCAB) for shape in saved)


def gemma2() -> torch.nn.Module:
    config = Gemma2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, final_logit_softcapping=2.0,
    )  # fmt: skip
    return Gemma2ForCausalLM(config)


def cohere() -> torch.nn.Module:
    config = CohereConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, logit_scale=0.25,
    )  # fmt: skip
    return CohereForCausalLM(config)


@pytest.mark.parametrize("make", [gemma2, cohere], ids=["gemma2_softcap", "cohere_logit_scale"])
def test_soft_capping_and_logit_scale(make, caplog):
    torch.manual_seed(0)
    model = make().double().eval()
    inputs, labels = batch()
    with caplog.at_level(logging.WARNING):
        assert_same(loss_and_grads(model, inputs, labels, True), loss_and_grads(model, inputs, labels, False), 1e-10)
    assert "full-logits" not in caplog.text


class DoubledLogits(LlamaForCausalLM):
    """A causal LM whose logits are not what its config says: the fused path must notice and step aside."""

    def forward(self, input_ids=None, attention_mask=None, use_cache=None, logits_to_keep=0):
        output = super().forward(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache, logits_to_keep=logits_to_keep
        )
        output.logits = 2 * output.logits
        return output


class NoLogitsToKeep(LlamaForCausalLM):
    def forward(self, input_ids=None, attention_mask=None, use_cache=None):
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache)


class BypassesItsBody(LlamaForCausalLM):
    """A causal LM that runs its body's forward without calling the body module (as OPT runs ``model.decoder``): no
    hook on the body fires."""

    def forward(self, input_ids=None, attention_mask=None, use_cache=None, logits_to_keep=0):
        body = type(self.model).forward(self.model, input_ids=input_ids, attention_mask=attention_mask)
        hidden = body.last_hidden_state
        return CausalLMOutputWithPast(logits=self.lm_head(hidden[:, -logits_to_keep:]))


@pytest.mark.parametrize(
    ("cls", "reason"),
    [(DoubledLogits, "does not reproduce"), (NoLogitsToKeep, "logits_to_keep"), (BypassesItsBody, "never calls")],
)
def test_a_model_it_cannot_handle_falls_back_with_one_log_line(cls, reason, caplog):
    torch.manual_seed(0)
    model = cls(llama(False).config).eval()
    inputs, labels = batch()
    with caplog.at_level(logging.WARNING, logger="rdpo_lightning.models.fused_logprobs"):
        assert fused_token_logps(model, inputs, labels) is None
        assert fused_token_logps(model, inputs, labels) is None
    assert len(caplog.records) == 1
    assert reason in caplog.text and "full-logits path" in caplog.text
    want = token_logprobs(model(**inputs).logits, labels)[0]
    torch.testing.assert_close(token_logps(model, {**inputs, "labels": labels})[0], want, rtol=0, atol=0)


def test_given_positions_give_the_same_log_probs_and_stale_ones_are_refused():
    """The collator's ``scored_positions`` replace the boolean mask's gather: same log-probs and gradients as when the
    positions are computed from the labels here; positions of other labels are refused on the host, where checking
    costs no device sync."""
    model = build("gpt2", torch.float64)
    inputs, labels = batch()
    positions = scored_positions(labels)
    computed = loss_and_grads(model, inputs, labels, True, of=random_per_token_weights)
    given = loss_and_grads(model, inputs, labels, True, of=random_per_token_weights, positions=positions)
    assert_same(given, computed, 0)
    with pytest.raises(ValueError, match="scored_positions"):
        fused_token_logps(model, inputs, labels.flip(0), positions=positions)


def test_rows_without_scored_tokens():
    model = build("llama_untied", torch.float64)
    inputs, labels = batch()
    labels[:] = IGNORE_INDEX
    logps, mask = fused_token_logps(model, inputs, labels)
    assert not mask.any() and (logps == 0).all() and logps.shape == (6, 12)


def test_a_peft_wrapped_model_takes_the_fused_path_with_adapters_on_and_off():
    """LoRA on the attention and the output layer: the adapters' gradients match the full-logits path, and with the
    adapters disabled (the reference under PEFT) the log-probs are the base model's."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = llama(False).double().eval()
    plain = [p.detach().clone() for p in base.parameters()]
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "lm_head"], init_lora_weights=False)
    model = get_peft_model(base, config).eval()
    inputs, labels = batch()
    full = loss_and_grads(model, inputs, labels, fused=False)
    fused = loss_and_grads(model, inputs, labels, fused=True)
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n for n in trained)
    assert_same(fused, full, 1e-10)
    with model.disable_adapter():
        off, _ = fused_token_logps(model, inputs, labels)
    reference = llama(False).double().eval()
    with torch.no_grad():
        for p, value in zip(reference.parameters(), plain, strict=True):
            p.copy_(value)
    want, _ = token_logprobs(reference(**inputs).logits, labels)
    torch.testing.assert_close(off, want, rtol=0, atol=1e-10)
    assert (off - fused[3]).abs().max() > 1e-3  # the adapters do change the log-probs


def test_wdpo_sees_the_embeddings_of_the_forward_that_was_scored():
    """A policy whose fused attempt is discarded (its logits disagree on the first batch) runs a second, full-logits
    forward: the strategy's embeddings must be that forward's, or ∇_z ℓ does not exist."""
    from rdpo_lightning.data.collate import PairCollator
    from rdpo_lightning.training.module import RobustDPO

    torch.manual_seed(0)
    config = {
        "model_type": "llama", "vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2,
    }  # fmt: skip
    dpo = RobustDPO(model_config=config, precompute_reference=False)
    dpo.configure_model()
    dpo.policy.__class__ = DoubledLogits  # its own logits are 2x what its config says: the fused path steps aside
    g = torch.Generator().manual_seed(2)
    keys = ("prompt_ids", "chosen_ids", "rejected_ids")
    rows = [{k: torch.randint(3, VOCAB, (n,), generator=g).tolist() for k, n in zip(keys, sizes, strict=True)}
            for sizes in [(3, 4, 2), (2, 5, 3)]]  # fmt: skip
    batch = PairCollator(0)(rows)
    pairs = dpo.train().policy_forward(batch, dpo.reference_logps(batch), capture=True)
    (grad_z,) = torch.autograd.grad(pairs.losses.sum(), pairs.embeddings)
    assert grad_z.abs().max() > 0
