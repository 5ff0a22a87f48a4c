"""Variable-length attention: a padding-free batch run as one row gives each sequence what it gets scored alone."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import AttentionInterface, AutoModelForCausalLM, GPT2Config, LlamaConfig

from rdpo_lightning.data.collate import PairCollator
from rdpo_lightning.errors import InputError
from rdpo_lightning.models import scoring, varlen_attention
from rdpo_lightning.models.loading import load_causal_lm
from rdpo_lightning.models.scoring import _PACKING_CHECKED, ONE_ROW, token_logps
from rdpo_lightning.models.varlen_attention import VARLEN, flash_varlen, runs_varlen, varlen_parameters
from rdpo_lightning.robust.base import math_attention
from tests.data.test_packing import VOCAB, pairs


def saved_model(kind: str, directory: Path, attention: str = "sdpa") -> torch.nn.Module:
    """A tiny model written with ``save_pretrained`` and loaded back the way a run loads model.model."""
    torch.manual_seed(0)
    if kind == "gpt2":
        config = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=64)
    else:  # Llama with grouped-query attention
        config = LlamaConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64,
        )  # fmt: skip
    AutoModelForCausalLM.from_config(config).save_pretrained(directory / kind)
    return load_causal_lm(str(directory / kind), torch_dtype="float64", attn_implementation=attention).eval()


def alone_logps(lm: torch.nn.Module, examples: list[dict]) -> list[torch.Tensor]:
    """Each sequence's response log-prob, each in a forward of its own (full logits, no packing, no mask)."""
    values = []
    for key in ("chosen_ids", "rejected_ids"):
        for ex in examples:
            ids = torch.tensor([ex["prompt_ids"] + ex[key]])
            logps = torch.log_softmax(lm(input_ids=ids, use_cache=False).logits[0, :-1], -1)
            picked = logps.gather(-1, ids[0, 1:, None])[:, 0]
            values.append(picked[len(ex["prompt_ids"]) - 1 :].sum())
    return values


@pytest.fixture()
def attention_calls(monkeypatch):
    """How often the registered variable-length attention function ran."""
    calls = []
    original = AttentionInterface._global_mapping[VARLEN]

    def counted(*args, **kwargs):
        calls.append(kwargs.get("cu_seq_lens_q"))
        return original(*args, **kwargs)

    monkeypatch.setitem(AttentionInterface._global_mapping, VARLEN, counted)
    return calls


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("fused", [True, False])
def test_packed_sequences_score_as_each_alone_through_one_row(kind, fused, tmp_path, attention_calls):
    lm = saved_model(kind, tmp_path)
    assert runs_varlen(lm)
    examples = pairs()
    batch = PairCollator(0, padding_free=True)(examples)
    assert batch["input_ids"].shape[0] > 1  # several rows, run as one
    logps, mask = token_logps(lm, batch, fused=fused)
    assert getattr(lm, _PACKING_CHECKED) == ONE_ROW
    assert len(attention_calls) >= 2 and all(c is not None for c in attention_calls)  # every layer, boundaries given
    assert lm.config._attn_implementation == "sdpa"  # the switch lasts for the packed forward only
    packed = logps.sum(-1)
    (packed**2).sum().backward()
    got_grads = {n: p.grad.clone() for n, p in lm.named_parameters()}
    lm.zero_grad()
    want = torch.stack(alone_logps(lm, examples))
    (want**2).sum().backward()
    torch.testing.assert_close(packed.detach(), want.detach(), rtol=0, atol=1e-10)
    for name, param in lm.named_parameters():
        torch.testing.assert_close(got_grads[name], param.grad, rtol=0, atol=1e-10, msg=name)


def keeps_one_row_apart_only(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """A kernel like transformers' flash_attention_2: it finds packed sequences from ``position_ids`` in a single row,
    and runs each row causally as one sequence when there are several."""
    position_ids = kwargs["position_ids"]
    if query.shape[0] == 1:
        starts = [int(i) for i in (position_ids[0] == 0).nonzero()[:, 0]] + [query.shape[2]]
        out = torch.cat(
            [
                torch.nn.functional.scaled_dot_product_attention(
                    query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], is_causal=True, scale=scaling, enable_gqa=True
                )
                for a, b in zip(starts[:-1], starts[1:], strict=True)
            ],
            2,
        )
    else:
        out = torch.nn.functional.scaled_dot_product_attention(
            query, key, value, is_causal=True, scale=scaling, enable_gqa=True
        )
    return out.transpose(1, 2).contiguous(), None


def test_a_kernel_that_keeps_only_a_single_row_apart_is_refused_naming_the_key(tmp_path, monkeypatch):
    monkeypatch.setitem(AttentionInterface._global_mapping, "row_blind_kernel", keeps_one_row_apart_only)
    lm = saved_model("llama", tmp_path, attention="row_blind_kernel")
    assert not runs_varlen(lm)
    with pytest.raises(InputError, match=r"model\.attn_implementation='row_blind_kernel'") as error:
        token_logps(lm, PairCollator(0, padding_free=True)(pairs()))
    assert "\n" not in str(error.value)


def test_a_model_whose_one_row_differs_falls_back_to_rows(tmp_path, monkeypatch):
    """Boundaries that do not separate the sequences fail the probe as one row; the rows path still scores them."""
    monkeypatch.setattr(scoring, "boundary_kwargs", wrong_boundaries(varlen_attention.boundary_kwargs))
    lm = saved_model("gpt2", tmp_path)
    batch = PairCollator(0, padding_free=True)(pairs())
    logps, _ = token_logps(lm, batch)
    assert getattr(lm, _PACKING_CHECKED) == "rows"
    torch.testing.assert_close(logps.sum(-1), torch.stack(alone_logps(lm, pairs())), rtol=0, atol=1e-10)


def wrong_boundaries(boundary_kwargs):
    def one_segment(boundaries, longest, device):
        return boundary_kwargs([0, boundaries[-1]], boundaries[-1], device)

    return one_segment


def reference_varlen(query, key, value, cu_q, cu_k, max_q, max_k, *, scale=None, **options):
    """torch's documented ``varlen_attn`` semantics, written out: (T, H, D) tensors, softmax per segment and head."""
    causal = options.get("is_causal", False) or options.get("window_size") == (-1, 0)
    if key.shape[1] != query.shape[1]:
        assert options.get("enable_gqa"), "K/V heads differ without enable_gqa"
    groups = query.shape[1] // key.shape[1]
    out = torch.zeros_like(query)
    bounds = cu_q.tolist()
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        for h in range(query.shape[1]):
            for t in range(a, b):
                last = t + 1 if causal else b
                weights = torch.stack([query[t, h] @ key[s, h // groups] for s in range(a, last)])
                weights = torch.softmax(weights * (scale or 1 / math.sqrt(query.shape[-1])), 0)
                out[t, h] = sum(w * value[s, h // groups] for w, s in zip(weights, range(a, last), strict=True))
    return out


@pytest.mark.parametrize("signature", ["gqa_and_window", "is_causal_only"])
def test_the_cuda_call_lays_out_heads_and_boundaries_as_varlen_attn_reads_them(signature, monkeypatch):
    """The CUDA branch with torch's kernel replaced by its documented semantics: the (T, H, D) layout, causality and
    grouped-query heads (native, or repeated on a torch without ``enable_gqa``)."""

    def kernel(query, key, value, cu_q, cu_k, max_q, max_k, *, scale=None, **options):
        return reference_varlen(query, key, value, cu_q, cu_k, max_q, max_k, scale=scale, **options)

    def older(query, key, value, cu_q, cu_k, max_q, max_k, *, scale=None, is_causal=False):
        return reference_varlen(query, key, value, cu_q, cu_k, max_q, max_k, scale=scale, is_causal=is_causal)

    def newer(query, key, value, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False):
        return kernel(
            query, key, value, cu_q, cu_k, max_q, max_k, scale=scale, window_size=window_size, enable_gqa=enable_gqa
        )

    monkeypatch.setattr(varlen_attention, "varlen_attn", newer if signature == "gqa_and_window" else older)
    varlen_parameters.cache_clear()
    try:
        g = torch.Generator().manual_seed(0)
        query = torch.randn(1, 4, 9, 8, dtype=torch.float64, generator=g)
        key, value = (torch.randn(1, 2, 9, 8, dtype=torch.float64, generator=g) for _ in range(2))
        bounds = [0, 4, 5, 9]
        out = flash_varlen(query, key, value, torch.tensor(bounds), 4, 0.3)
    finally:
        varlen_parameters.cache_clear()
    want = varlen_attention.per_segment_sdpa(query, key, value, bounds, 0.0, 0.3)
    assert out.shape == (1, 9, 4, 8)
    torch.testing.assert_close(out, want, rtol=0, atol=1e-12)


class CudaQuery:
    """What :func:`uses_flash_varlen` reads of a query, as a bf16 CUDA tensor would give it (no GPU here)."""

    is_cuda = True
    dtype = torch.bfloat16
    shape = (1, 32, 100, 64)


def test_flash_varlen_is_left_under_the_math_backend_exact_wdpo_needs():
    """Exact WDPO's double backward runs under ``math_attention()``: the flash kernel (no double backward) is not
    taken there, and it is taken otherwise."""
    assert varlen_attention.uses_flash_varlen(CudaQuery(), 0.0)
    assert not varlen_attention.uses_flash_varlen(CudaQuery(), 0.1)  # dropout: flash varlen has none
    with math_attention():
        assert not varlen_attention.uses_flash_varlen(CudaQuery(), 0.0)


def test_a_varlen_attn_that_cannot_be_told_causal_and_scaled_is_not_called(monkeypatch):
    """A torch whose ``varlen_attn`` takes neither ``is_causal`` nor ``window_size`` (or no ``scale``) would compute
    something else: the per-segment path runs instead."""

    def bare(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None):
        raise AssertionError("called")

    monkeypatch.setattr(varlen_attention, "varlen_attn", bare)
    varlen_parameters.cache_clear()
    try:
        assert not varlen_attention.uses_flash_varlen(CudaQuery(), 0.0)
    finally:
        varlen_parameters.cache_clear()
