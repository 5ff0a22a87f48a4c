"""log p(target) through a linear output layer in tiles, with a backward that recomputes the tiles: no logits kept.

A token's log-prob is ``logit[target] − logsumexp(logits)`` with ``logits = softcap(scale · (h Wᵀ + b))``. The
forward walks the vocabulary in slices of ``vocab_tile`` rows of W and the tokens in tiles of ``token_tile``, keeping
only a running maximum and sum per token (an online logsumexp) and the target's logit: one (token_tile, vocab_tile)
block of logits is alive at a time, and only the per-token logsumexp is saved. The backward takes any per-token upstream
gradient g (a robust strategy weights pairs, so g is an arbitrary (n,) vector), recomputes each block, forms
``∂/∂logits = g·(onehot − softmax)``, and accumulates the gradients of the hidden states, of W and of b in float32
(float64 for float64 inputs) across tiles; each slice of W is cast to the compute dtype once per pass, and its
gradient is written once.

Under autocast the matrix products run in the autocast dtype (as ``nn.Linear`` would) and everything after them in
float32. The backward is not itself differentiable (``once_differentiable``): a double backward through it raises
instead of silently dropping terms, and callers that need one (exact WDPO) take the checkpointed path
(:mod:`rdpo_lightning.models.fused_logprobs`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

#: tokens x vocabulary rows per block: 4,096 x 32,768 float32 logits are 512 MiB
DEFAULT_TOKEN_TILE = 4096
DEFAULT_VOCAB_TILE = 32768


def compute_dtype(weight: Tensor) -> torch.dtype:
    """The dtype the matrix products run in: the autocast dtype where autocast is on, else the weight's."""
    device = weight.device.type
    if torch.is_autocast_enabled(device) and weight.is_floating_point():
        return torch.get_autocast_dtype(device)
    return weight.dtype


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _block_logits(hidden: Tensor, weight: Tensor, bias: Tensor | None, scale: float, softcap: float | None, acc):
    """softcap(scale · (h Wᵀ + b)) of one block, in the accumulation dtype."""
    logits = torch.nn.functional.linear(hidden, weight, bias).to(acc)
    if scale != 1.0:
        logits = logits * scale
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return logits


def _local_targets(targets: Tensor, start: int, width: int) -> tuple[Tensor, Tensor]:
    """Targets as columns of the vocabulary slice [start, start + width), clamped, and whether each is inside it."""
    local = targets - start
    inside = (local >= 0) & (local < width)
    return local.clamp(0, width - 1).unsqueeze(1), inside


def _accumulate_product(total: Tensor, a: Tensor, b: Tensor) -> None:
    """total += a @ b, the product in a's dtype and the sum in total's (one fused addmm where they agree)."""
    if a.dtype == total.dtype:
        total.addmm_(a, b)
    else:
        total += (a @ b).to(total.dtype)


class TiledHeadLogps(torch.autograd.Function):
    """(n, H) hidden, (V, H) weight, (V,) bias or None, (n,) targets → (n,) log p(target), in the accumulation dtype."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        targets: Tensor,
        scale: float,
        softcap: float | None,
        token_tile: int,
        vocab_tile: int,
    ) -> Tensor:
        dtype = compute_dtype(weight)
        acc = accumulation_dtype(dtype)
        n, vocab = hidden.shape[0], weight.shape[0]
        with torch.autocast(hidden.device.type, enabled=False):
            h = hidden.to(dtype)
            running_max = torch.full((n,), -torch.inf, dtype=acc, device=hidden.device)
            running_sum = torch.zeros(n, dtype=acc, device=hidden.device)
            picked = torch.zeros(n, dtype=acc, device=hidden.device)
            for v0 in range(0, vocab, vocab_tile):
                w = weight[v0 : v0 + vocab_tile].to(dtype)
                b = None if bias is None else bias[v0 : v0 + vocab_tile].to(dtype)
                for t0 in range(0, n, token_tile):
                    t1 = min(n, t0 + token_tile)
                    logits = _block_logits(h[t0:t1], w, b, scale, softcap, acc)
                    local, inside = _local_targets(targets[t0:t1], v0, w.shape[0])
                    picked[t0:t1] += torch.where(inside, logits.gather(1, local).squeeze(1), 0.0)
                    old = running_max[t0:t1]
                    new = torch.maximum(old, logits.amax(1))
                    block_sum = logits.sub_(new.unsqueeze(1)).exp_().sum(1)  # in place: one block alive
                    running_sum[t0:t1] = running_sum[t0:t1] * torch.exp(old - new) + block_sum
                    running_max[t0:t1] = new
            lse = running_max + torch.log(running_sum)
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.settings = (scale, softcap, token_tile, vocab_tile, dtype)
        return picked - lse

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        scale, softcap, token_tile, vocab_tile, dtype = ctx.settings
        acc = lse.dtype
        n, vocab = hidden.shape[0], weight.shape[0]
        want_hidden, want_weight, want_bias = ctx.needs_input_grad[:3]
        grad_out = grad_output.to(acc)
        grad_hidden = torch.zeros(hidden.shape, dtype=acc, device=hidden.device) if want_hidden else None
        grad_weight = torch.empty_like(weight) if want_weight else None
        grad_bias = torch.empty_like(bias) if want_bias else None
        with torch.autocast(hidden.device.type, enabled=False):
            h = hidden.to(dtype)
            for v0 in range(0, vocab, vocab_tile):
                w = weight[v0 : v0 + vocab_tile].to(dtype)
                b = None if bias is None else bias[v0 : v0 + vocab_tile].to(dtype)
                slice_weight = torch.zeros(w.shape, dtype=acc, device=w.device) if want_weight else None
                slice_bias = torch.zeros(w.shape[0], dtype=acc, device=w.device) if want_bias else None
                for t0 in range(0, n, token_tile):
                    t1 = min(n, t0 + token_tile)
                    logits = _block_logits(h[t0:t1], w, b, scale, softcap, acc)
                    g = grad_out[t0:t1]
                    # logits = c·tanh(u/c): du = (1 − (logits/c)²)·dlogits, taken before the block is overwritten
                    capped = None if softcap is None else 1 - (logits / softcap) ** 2
                    # ∂/∂logits of g·(logit[target] − lse) = g·(onehot − softmax), in place: one block alive
                    grad_logits = logits.sub_(lse[t0:t1].unsqueeze(1)).exp_().mul_((-g).unsqueeze(1))
                    local, inside = _local_targets(targets[t0:t1], v0, w.shape[0])
                    grad_logits.scatter_add_(1, local, torch.where(inside, g, 0.0).unsqueeze(1))
                    if capped is not None:
                        grad_logits.mul_(capped)
                    if scale != 1.0:
                        grad_logits.mul_(scale)
                    if want_bias:
                        slice_bias += grad_logits.sum(0)
                    grad_z = grad_logits.to(dtype)
                    if want_hidden:
                        _accumulate_product(grad_hidden[t0:t1], grad_z, w)
                    if want_weight:
                        _accumulate_product(slice_weight, grad_z.T, h[t0:t1])
                if want_weight:
                    grad_weight[v0 : v0 + vocab_tile] = slice_weight
                if want_bias:
                    grad_bias[v0 : v0 + vocab_tile] = slice_bias
        if grad_hidden is not None:
            grad_hidden = grad_hidden.to(hidden.dtype)
        return grad_hidden, grad_weight, grad_bias, None, None, None, None, None


def tiled_head_logps(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    scale: float = 1.0,
    softcap: float | None = None,
    token_tile: int = DEFAULT_TOKEN_TILE,
    vocab_tile: int = DEFAULT_VOCAB_TILE,
) -> Tensor:
    """log p(target) for (n, H) hidden states and (n,) targets under ``softcap(scale · (h Wᵀ + b))``, in at least
    float32 (see the module docstring)."""
    if token_tile < 1 or vocab_tile < 1:
        raise ValueError(f"token_tile and vocab_tile must be >= 1, got {token_tile} and {vocab_tile}")
    return TiledHeadLogps.apply(hidden, weight, bias, targets, scale, softcap, token_tile, vocab_tile)


__all__ = ["DEFAULT_TOKEN_TILE", "DEFAULT_VOCAB_TILE", "TiledHeadLogps", "compute_dtype", "tiled_head_logps"]
