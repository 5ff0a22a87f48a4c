"""A sweep over the common decoder architectures, each built from a tiny config the way ``model.model_config`` builds
one: the response log-probs rdpo trains on (the fused output-layer path, the default) and their gradients against an
independent computation from the model's own full logits (``log_softmax`` and a gather, in float64), and padding-free
batches against padded ones where the model can keep packed sequences apart (refused, as one ``rdpo: error:`` line
through the CLI, where it cannot).

Every model here must take the fused path: a model that silently fell back to full logits would pass a log-prob
check and lose the memory saving, so the fallback's log line is a failure. That covers the logit transforms the
fused head reproduces from the config: Gemma 2/3's soft-capping, Granite's and MiniCPM3's ``logits_scaling`` (the
model divides by it; a wrong formula would fall back), and Cohere's ``logit_scale`` in
tests/models/test_fused_logprobs.py.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from rdpo_lightning.batch_layout import IGNORE_INDEX
from rdpo_lightning.data.collate import PairCollator
from rdpo_lightning.errors import InputError
from rdpo_lightning.models.loading import load_causal_lm
from rdpo_lightning.models.scoring import token_logps

VOCAB = 61
LLAMA_LIKE = dict(
    hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
)
#: the eager experts loop: the default grouped matmul has no float64 kernel on CPU (the router is the same either way)
MOE = dict(num_experts_per_tok=2, moe_intermediate_size=24, experts_implementation="eager")

ARCHITECTURES: dict[str, dict] = {
    "gpt2": dict(n_embd=32, n_layer=2, n_head=2, n_positions=64),
    "llama": dict(LLAMA_LIKE, tie_word_embeddings=False),
    "qwen2": dict(LLAMA_LIKE),
    "qwen3": dict(LLAMA_LIKE, head_dim=8),
    "mistral": dict(LLAMA_LIKE, sliding_window=None),
    "mixtral": dict(LLAMA_LIKE, num_local_experts=4, num_experts_per_tok=2, experts_implementation="eager"),
    "qwen2_moe": dict(LLAMA_LIKE, **MOE, num_experts=4, shared_expert_intermediate_size=24),
    "qwen3_moe": dict(LLAMA_LIKE, **MOE, num_experts=4, head_dim=8),
    "phi3": dict(LLAMA_LIKE, pad_token_id=0),
    "gpt_neox": dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4),
    "falcon": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, alibi=True),
    "gemma2": dict(LLAMA_LIKE, head_dim=8, final_logit_softcapping=2.0),
    "gemma3_text": dict(LLAMA_LIKE, head_dim=8, final_logit_softcapping=2.0, sliding_window=8),
    "opt": dict(
        hidden_size=32, ffn_dim=48, num_hidden_layers=2, num_attention_heads=4, word_embed_proj_dim=32,
        max_position_embeddings=64,
    ),
    "gpt_bigcode": dict(n_embd=32, n_layer=2, n_head=4, n_positions=64),
    "granite": dict(LLAMA_LIKE, logits_scaling=4.0, embedding_multiplier=2.0, residual_multiplier=0.5),
    "minicpm3": dict(  # logits_scaling = hidden_size / dim_model_base = 4
        LLAMA_LIKE, num_key_value_heads=4, kv_lora_rank=8, q_lora_rank=16, qk_nope_head_dim=4, qk_rope_head_dim=4,
        v_head_dim=8, dim_model_base=8,
    ),
    "bloom": dict(hidden_size=32, n_layer=2, n_head=4),
}  # fmt: skip

#: attention that lets a packed sequence see the one before it (its own masking code): padding_free is refused (OPT
#: masks by itself too, but under sdpa its packed batches run as one row through the variable-length attention, which
#: needs no mask; under eager it is refused: test_a_model_that_cannot_pack_is_one_error_line_from_rdpo_fit)
CANNOT_PACK = {"bloom"}


def build(model_type: str) -> torch.nn.Module:
    torch.manual_seed(0)
    config = {"model_type": model_type, "vocab_size": VOCAB, "bos_token_id": 1, "eos_token_id": 2}
    return load_causal_lm(None, {**config, **ARCHITECTURES[model_type]}, torch_dtype="float64").eval()


def pairs() -> list[dict]:
    """Three pairs whose prompts and responses differ in length (padding inside the batch)."""
    g = torch.Generator().manual_seed(3)

    def ids(n: int) -> list[int]:
        return torch.randint(3, VOCAB, (n,), generator=g).tolist()

    return [{"prompt_ids": ids(p), "chosen_ids": ids(c), "rejected_ids": ids(r)} for p, c, r in [(3, 5, 2), (1, 2, 6)]]


def independent_logps(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """log softmax of the model's own full logits at each position, gathered at the next token; 0 where unscored."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
    targets = batch["labels"][:, 1:]
    scored = targets != IGNORE_INDEX
    picked = logits[:, :-1].log_softmax(-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return torch.where(scored, picked, torch.zeros_like(picked))


def objective_and_grads(model: torch.nn.Module, logps: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A nonlinear function of the per-sequence sums and its parameter gradients."""
    objective = torch.nn.functional.logsigmoid(logps.sum(-1)[0::2] - logps.sum(-1)[1::2]).sum()
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(objective, params, allow_unused=True)
    return objective.detach(), [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_log_probs_and_gradients_match_the_models_own_logits(model_type, caplog):
    model = build(model_type)
    batch = PairCollator(0)(pairs())
    with caplog.at_level(logging.WARNING, logger="rdpo_lightning.models.fused_logprobs"):
        logps, mask = token_logps(model, batch)
    assert "full-logits path" not in caplog.text, caplog.text  # the fused path was taken
    want = independent_logps(model, batch)
    assert torch.equal(mask, batch["labels"][:, 1:] != IGNORE_INDEX) and mask.sum() >= 15
    torch.testing.assert_close(logps, want, rtol=0, atol=1e-10)
    objective, grads = objective_and_grads(model, logps)
    want_objective, want_grads = objective_and_grads(model, want)
    torch.testing.assert_close(objective, want_objective, rtol=0, atol=1e-10)
    for got, expected in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)
    assert any(g.abs().max() > 1e-6 for g in want_grads)

    packed = PairCollator(0, padding_free=True)(pairs())
    if model_type in CANNOT_PACK:
        with pytest.raises(InputError, match="data.padding_free: true needs"):
            token_logps(model, packed)
    else:
        torch.testing.assert_close(token_logps(model, packed)[0], logps.detach(), rtol=0, atol=1e-10)


def test_a_model_that_cannot_pack_is_one_error_line_from_rdpo_fit(tmp_path: Path, world_tokenizer_dir, capsys):
    """OPT (eager attention) with ``data.padding_free: true``: ``rdpo fit`` ends with exit status 2 and one ``rdpo:
    error:`` line."""
    from rdpo_lightning.cli import main
    from rdpo_lightning.data.tokenizer import load_tokenizer
    from tests.cli.test_input_errors import own_model_args, write_pairs

    tokenizer = load_tokenizer(world_tokenizer_dir)
    torch.manual_seed(0)
    config = {"model_type": "opt", **ARCHITECTURES["opt"], "pad_token_id": tokenizer.pad_token_id}
    load_causal_lm(None, config, tokenizer).save_pretrained(tmp_path / "opt")
    tokenizer.save_pretrained(tmp_path / "opt")
    args = own_model_args(tmp_path / "opt", write_pairs(tmp_path / "pairs.jsonl", count=8), tmp_path)
    with pytest.raises(SystemExit) as exit_status:
        main(
            [
                "fit",
                *args,
                "--data.init_args.padding_free=true",
                "--model.attn_implementation=eager",
                "--trainer.max_steps=1",
            ]
        )
    assert exit_status.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("rdpo: error:")]
    assert len(errors) == 1 and "data.padding_free: true needs" in errors[0] and "OPTForCausalLM" in errors[0], err
    assert "Traceback" not in err
