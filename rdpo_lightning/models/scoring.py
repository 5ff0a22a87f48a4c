"""The one forward that yields response log-probs: padded or packed batches, fused or full-logits output layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rdpo_lightning.batch_layout import CU_SEQ_LENS, MAX_SEQ_LEN, PACK_INDEX, SCORED_POSITIONS, unpack_token_logps
from rdpo_lightning.errors import InputError
from rdpo_lightning.models.fused_logprobs import fused_token_logps, unwrap_causal_lm
from rdpo_lightning.models.logprobs import DEFAULT_CHUNK_ROWS, token_logprobs
from rdpo_lightning.models.router_aux import router_aux_loss, router_logits_request
from rdpo_lightning.models.varlen_attention import boundary_kwargs, runs_varlen, varlen_attention
from rdpo_lightning.pair_scores import PairLogps


def model_inputs(batch: dict[str, torch.Tensor], one_row: bool = False) -> dict[str, Any]:
    """The forward's keyword arguments for a collated batch (no KV cache): a padded batch passes its attention mask,
    a packed one its restarting ``position_ids`` and no mask (so transformers separates the packed sequences); with
    ``one_row`` the packed rows laid end to end as one row with the sequence boundaries, for the variable-length
    attention (:mod:`rdpo_lightning.models.varlen_attention`)."""
    if PACK_INDEX in batch and one_row:
        ids = batch["input_ids"]
        return {
            "input_ids": ids.view(1, -1),
            "position_ids": batch["position_ids"].view(1, -1),
            "use_cache": False,
            **boundary_kwargs(batch[CU_SEQ_LENS], batch[MAX_SEQ_LEN], ids.device),
        }
    if PACK_INDEX in batch:
        return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}


def batch_logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The logits of a collated batch of pairs (one full forward per sequence)."""
    return model(**model_inputs(batch)).logits


@dataclass
class TokenScores:
    """What one forward of a collated batch gives the objective: per-token response log-probs and their mask, (2B,
    T−1) in the pair layout, and the router load-balancing loss of a Mixture-of-Experts model when asked for."""

    logps: torch.Tensor
    mask: torch.Tensor
    router_aux_loss: torch.Tensor | None = None


def score_tokens(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    chunk_rows: int | None = DEFAULT_CHUNK_ROWS,
    fused: bool = True,
    router_aux: bool = False,
) -> TokenScores:
    """The one forward that yields log-probs, for training, the reference cache and the DDP-redirected reference
    forward.

    ``fused``: through the output layer tile by tile, never building the logits
    (:mod:`rdpo_lightning.models.fused_logprobs`; a model it cannot handle falls back with one log line); otherwise full
    logits, log-softmaxed a chunk of rows at a time (``chunk_rows``). A packed (padding-free) batch runs as one row
    with variable-length attention where the model takes it (:func:`check_packing_support` decides), else as its
    rows, and is unpacked to the pair layout. ``router_aux``: ask a Mixture-of-Experts model for its router logits
    and return its load-balancing loss (:mod:`rdpo_lightning.models.router_aux`).
    """
    packed = PACK_INDEX in batch
    one_row = False
    if packed:
        check_packing_support(model, batch)
        one_row = packs_in_one_row(model, batch)
    inputs = {**model_inputs(batch, one_row), **router_logits_request(model, router_aux)}
    labels = batch["labels"].view(1, -1) if one_row else batch["labels"]
    outputs: list = []
    with varlen_attention(unwrap_causal_lm(model), one_row):
        result = None
        if fused:  # the collator's scored positions index the (rows, T) grid, which one row lays end to end
            positions = batch.get(SCORED_POSITIONS)
            result = fused_token_logps(model, inputs, labels, on_output=outputs.append, positions=positions)
        if result is None:
            outputs.append(model(**inputs))
            result = token_logprobs(outputs[-1].logits, labels, chunk_rows)
    logps, mask = unpack_token_logps(*result, batch[PACK_INDEX]) if packed else result
    return TokenScores(logps, mask, router_aux_loss(model, outputs[-1], batch) if router_aux else None)


def token_logps(
    model: nn.Module, batch: dict[str, torch.Tensor], chunk_rows: int | None = DEFAULT_CHUNK_ROWS, fused: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token response log-probs and their mask, (2B, T−1) in the pair layout of the collated ``batch``
    (:func:`score_tokens` without the router term)."""
    scores = score_tokens(model, batch, chunk_rows, fused)
    return scores.logps, scores.mask


_PACKING_CHECKED = "_rdpo_packing_checked"

#: what the probe found a model's packed batches run as
ONE_ROW, ROWS = "one_row", "rows"


def packs_in_one_row(model: nn.Module, batch: dict[str, Any]) -> bool:
    """Whether this packed batch runs as one row under the variable-length attention: the model passed the probe
    that way and the batch carries its boundaries."""
    return getattr(unwrap_causal_lm(model), _PACKING_CHECKED, None) == ONE_ROW and CU_SEQ_LENS in batch


@torch.no_grad()
def check_packing_support(model: nn.Module, batch: dict[str, torch.Tensor]) -> None:
    """Refuse a model whose attention lets a packed sequence see another one (once per model), and choose how its
    packed batches run.

    Two rows of two 4-token sequences, run as :func:`score_tokens` runs a packed batch, must give every sequence the
    logits it has alone: first as one row under the variable-length attention where the model takes it
    (:func:`~rdpo_lightning.models.varlen_attention.runs_varlen`), else (or when that differs) as rows with restarting
    ``position_ids``, which transformers' masking utilities keep apart for sdpa and eager. Two rows, not one: a kernel
    may keep packed sequences apart in a single row only (transformers' flash_attention_2 does), and a model with its
    own masking code may not at all.
    """
    lm = unwrap_causal_lm(model)
    if getattr(lm, _PACKING_CHECKED, None) is not None:
        return
    ids = batch["input_ids"].flatten()[:16]
    if ids.numel() < 16:
        ids = ids.repeat(16)[:16]
    sequences = ids.view(4, 4)
    positions = torch.arange(4, device=ids.device).repeat(2, 2)
    probe = {"input_ids": sequences.reshape(2, 8), "position_ids": positions, PACK_INDEX: torch.arange(16).view(4, 4)}
    probe |= {CU_SEQ_LENS: [0, 4, 8, 12, 16], MAX_SEQ_LEN: 4}
    was_training = model.training
    model.eval()
    try:
        alone = model(input_ids=sequences, attention_mask=torch.ones_like(sequences), use_cache=False).logits
        for layout in (ONE_ROW, ROWS) if runs_varlen(lm) else (ROWS,):
            with varlen_attention(lm, layout == ONE_ROW):
                together = model(**model_inputs(probe, layout == ONE_ROW)).logits.reshape(alone.shape)
            if same_logits(together, alone, ids.device):
                object.__setattr__(lm, _PACKING_CHECKED, layout)
                return
    finally:
        model.train(was_training)
    attention = getattr(lm.config, "_attn_implementation", None)
    fix = "model.attn_implementation: sdpa, or " if attention not in ("sdpa", "eager") else ""
    raise InputError(
        f"data.padding_free: true needs attention that keeps the sequences packed in a row apart;"
        f" {type(lm).__name__} with model.attn_implementation={attention!r} lets them attend to each other: set"
        f" {fix}data.padding_free: false (data.group_by_length: true still cuts most padding)"
    )


def same_logits(got: torch.Tensor, want: torch.Tensor, device: torch.device) -> bool:
    """Equal up to the precision the forward ran in."""
    precise = want.dtype in (torch.float32, torch.float64) and not torch.is_autocast_enabled(device.type)
    tolerance = 1e-3 if precise else 5e-2
    got, want = got.double(), want.double()
    return bool((got - want).abs().max() <= tolerance * want.abs().max().clamp(min=1e-6))


def pair_sequence_logps(scores: TokenScores, length_normalized: bool = False) -> tuple[PairLogps, torch.Tensor]:
    """Sequence log-probs of a pair batch's chosen and rejected responses from its token scores (summed, or
    per-token means for a length-normalised loss), and the response token counts (2B,)."""
    counts = scores.mask.sum(-1)
    values = scores.logps.sum(-1)
    if length_normalized:
        values = values / counts.clamp(min=1)
    half = values.shape[0] // 2
    return PairLogps(values[:half], values[half:]), counts
