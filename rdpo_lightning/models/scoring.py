"""The one forward that yields response log-probs: padded or packed batches, fused or full-logits output layer."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rdpo_lightning.batch_layout import PACK_INDEX, SCORED_POSITIONS, unpack_token_logps
from rdpo_lightning.errors import InputError
from rdpo_lightning.models.fused_logprobs import fused_token_logps, unwrap_causal_lm
from rdpo_lightning.models.logprobs import DEFAULT_CHUNK_ROWS, token_logprobs
from rdpo_lightning.models.router_aux import router_aux_loss, router_logits_request
from rdpo_lightning.pair_scores import PairLogps


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | bool]:
    """The forward's keyword arguments for a collated batch (no KV cache): a padded batch passes its attention mask,
    a packed one its restarting ``position_ids`` and no mask (so transformers separates the packed sequences)."""
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
    logits, log-softmaxed a chunk of rows at a time (``chunk_rows``). A packed (padding-free) batch is unpacked to the
    pair layout. ``router_aux``: ask a Mixture-of-Experts model for its router logits and return its load-balancing loss
    (:mod:`rdpo_lightning.models.router_aux`).
    """
    packed = PACK_INDEX in batch
    if packed:
        check_packing_support(model, batch)
    inputs = {**model_inputs(batch), **router_logits_request(model, router_aux)}
    outputs: list = []
    result = None
    if fused:
        positions = batch.get(SCORED_POSITIONS)
        result = fused_token_logps(model, inputs, batch["labels"], on_output=outputs.append, positions=positions)
    if result is None:
        outputs.append(model(**inputs))
        result = token_logprobs(outputs[-1].logits, batch["labels"], chunk_rows)
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


@torch.no_grad()
def check_packing_support(model: nn.Module, batch: dict[str, torch.Tensor]) -> None:
    """Refuse a model whose attention lets a packed sequence see the one before it (once per model).

    Two 4-token sequences packed into one row must give the second one the logits it has alone; transformers'
    masking utilities do this from the restarting ``position_ids`` (sdpa, eager, flash attention), a model with its
    own masking code may not.
    """
    lm = unwrap_causal_lm(model)
    if getattr(lm, _PACKING_CHECKED, False):
        return
    ids = batch["input_ids"].flatten()[:8]
    if ids.numel() < 8:
        ids = ids.repeat(8)[:8]
    first, second = ids[:4].unsqueeze(0), ids[4:].unsqueeze(0)
    positions = torch.arange(4, device=ids.device).unsqueeze(0)
    was_training = model.training
    model.eval()
    try:
        together = model(input_ids=torch.cat([first, second], 1), position_ids=positions.repeat(1, 2), use_cache=False)
        alone = model(input_ids=second, attention_mask=torch.ones_like(second), use_cache=False)
    finally:
        model.train(was_training)
    precise = alone.logits.dtype in (torch.float32, torch.float64) and not torch.is_autocast_enabled(ids.device.type)
    tolerance = 1e-3 if precise else 5e-2
    want, got = alone.logits.double(), together.logits[:, 4:].double()
    if (got - want).abs().max() > tolerance * want.abs().max().clamp(min=1e-6):
        attention = getattr(lm.config, "_attn_implementation", None)
        raise InputError(
            f"data.padding_free: true needs a model whose attention keeps packed sequences apart by their"
            f" position_ids; {type(lm).__name__} (attn_implementation={attention!r}) lets one see the other: set"
            " data.padding_free: false (data.group_by_length: true still cuts most padding)"
        )
    object.__setattr__(lm, _PACKING_CHECKED, True)


def pair_sequence_logps(scores: TokenScores, length_normalized: bool = False) -> tuple[PairLogps, torch.Tensor]:
    """Sequence log-probs of a pair batch's chosen and rejected responses from its token scores (summed, or
    per-token means for a length-normalised loss), and the response token counts (2B,)."""
    counts = scores.mask.sum(-1)
    values = scores.logps.sum(-1)
    if length_normalized:
        values = values / counts.clamp(min=1)
    half = values.shape[0] // 2
    return PairLogps(values[:half], values[half:]), counts
