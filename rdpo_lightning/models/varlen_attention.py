"""Variable-length attention for padding-free batches: one packed row, its sequence boundaries, no mask.

Packed into several rows, a padding-free batch makes transformers build an (R, 1, L, L) block mask, and with a mask
sdpa takes the memory-efficient kernel, copies K and V out to every query head and computes the whole R·L² square.
Here the rows are laid end to end as one row and the attention function registered under :data:`VARLEN` gets the
segment boundaries (``cu_seq_lens_q/k``, ``max_length_q/k``, passed as model kwargs, which transformers hands to
the attention function) and builds no mask: transformers skips mask creation for an implementation it has no mask
function for.

On CUDA in half precision, with sdpa's flash backend allowed, it calls ``torch.nn.attention.varlen.varlen_attn``
(flash varlen; grouped-query attention native where the installed torch takes ``enable_gqa``, else K and V heads
repeated). Everywhere else (CPU, float32/64, dropout, and under :func:`~rdpo_lightning.robust.base.math_attention`,
which exact WDPO's double backward needs) it runs causal sdpa on each segment alone: the same numbers, so every
exactness test of packing runs through this wiring on CPU.

Only a model loaded with ``sdpa`` whose attention layers dispatch through transformers' attention interface, with
full causal attention in every layer (no sliding window, no logit soft-cap), and a forward that hands keyword
arguments on, is a candidate (:func:`runs_varlen`; the packing probe in :mod:`rdpo_lightning.models.scoring` then
checks it against each sequence alone). The switch lasts for the packed forward only (:func:`varlen_attention`), so
padded forwards (validation, generation) keep sdpa; activation checkpointing recomputes a block with the
implementation its forward ran (:func:`rdpo_lightning.models.sharding.apply_activation_checkpointing`).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AttentionInterface

try:
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # torch < 2.10
    varlen_attn = None

#: the name the attention function is registered under in transformers' ``AttentionInterface``
VARLEN = "rdpo_varlen"

#: the attribute of a boundaries tensor made by :func:`boundary_kwargs` that holds its host copy (the per-segment
#: path slices by it, so a CUDA tensor is never read back)
_HOST_COPY = "_rdpo_host_boundaries"

#: per-layer arguments this function does not implement; a model that passes one is never switched (see runs_varlen)
_UNSUPPORTED = ("sliding_window", "softcap", "s_aux", "position_bias")


def runs_varlen(lm: nn.Module) -> bool:
    """Whether packed batches of this (unwrapped) causal LM run through :data:`VARLEN`: loaded with sdpa, attention
    dispatched through transformers' interface, full causal attention in every layer."""
    config = getattr(lm, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    if not getattr(lm, "_supports_attention_backend", False) or not takes_any_keyword(lm.forward):
        return False
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if getattr(text, "sliding_window", None) is not None or getattr(text, "attn_logit_softcapping", None) is not None:
        return False
    layer_types = getattr(text, "layer_types", None) or ()
    return all(kind == "full_attention" for kind in layer_types)


def takes_any_keyword(forward: Any) -> bool:
    """The boundaries reach the attention layers as keyword arguments of the model's forward."""
    parameters = inspect.signature(forward).parameters.values()
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


@contextlib.contextmanager
def varlen_attention(lm: nn.Module, active: bool = True) -> Iterator[None]:
    """Route the attention of ``lm`` (unwrapped) through :data:`VARLEN` for the forwards inside; nothing when not
    ``active``. The model reads ``config._attn_implementation`` at each call, so the switch holds for this forward."""
    if not active:
        yield
        return
    config = lm.config
    previous = config._attn_implementation
    config._attn_implementation = VARLEN
    try:
        yield
    finally:
        config._attn_implementation = previous


def boundary_kwargs(boundaries: Sequence[int], longest: int, device: torch.device) -> dict[str, Any]:
    """The model kwargs that carry a packed row's segment boundaries to the attention function (one host-to-device
    copy, from pinned memory so the host does not wait on the device; the host copy is kept for the per-segment
    path)."""
    cu = torch.tensor(list(boundaries), dtype=torch.int32)
    if device.type == "cuda":
        cu = cu.pin_memory().to(device, non_blocking=True)
    setattr(cu, _HOST_COPY, tuple(int(b) for b in boundaries))
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": int(longest), "max_length_k": int(longest)}


def varlen_attention_forward(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    cu_seq_lens_q: Tensor | None = None,
    max_length_q: int | None = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """Causal attention within each segment of one packed row. ``query`` (1, H, N, D), ``key`` and ``value`` (1,
    H_kv, N, D); returns (1, N, H, D) as transformers' attention functions do."""
    if cu_seq_lens_q is None or max_length_q is None:
        raise RuntimeError(f"attention {VARLEN!r} runs packed rows only: the forward got no cu_seq_lens_q/max_length_q")
    if query.shape[0] != 1 or attention_mask is not None:
        raise RuntimeError(f"attention {VARLEN!r} takes one packed row and no mask, got {tuple(query.shape)}")
    given = [name for name in _UNSUPPORTED if kwargs.get(name) is not None]
    if given:
        raise RuntimeError(f"attention {VARLEN!r} does not implement {', '.join(given)}")
    if uses_flash_varlen(query, dropout):
        return flash_varlen(query, key, value, cu_seq_lens_q, max_length_q, scaling), None
    boundaries = getattr(cu_seq_lens_q, _HOST_COPY, None)
    if boundaries is None:
        boundaries = tuple(cu_seq_lens_q.tolist())  # reads a device tensor back: only for boundaries made elsewhere
    return per_segment_sdpa(query, key, value, boundaries, dropout, scaling), None


def uses_flash_varlen(query: Tensor, dropout: float) -> bool:
    """Flash varlen where it applies: CUDA, half precision, no dropout, a head size flash takes, and sdpa's flash
    backend allowed (``math_attention()`` turns it off for double backward)."""
    return (
        query.is_cuda
        and query.dtype in (torch.float16, torch.bfloat16)
        and dropout == 0.0
        and query.shape[-1] <= 256
        and query.shape[-1] % 8 == 0
        and torch.backends.cuda.flash_sdp_enabled()
        and varlen_parameters() is not None
    )


@functools.cache
def varlen_parameters() -> frozenset[str] | None:
    """The keyword parameters of this torch's ``varlen_attn`` (its causal flag and GQA support changed across
    releases), None where it has none or cannot take a scale and causality (the per-segment path runs then)."""
    if varlen_attn is None:
        return None
    parameters = frozenset(inspect.signature(varlen_attn).parameters)
    if "scale" not in parameters or not parameters & {"is_causal", "window_size"}:
        return None
    return parameters


def flash_varlen(
    query: Tensor, key: Tensor, value: Tensor, cu_seq_lens: Tensor, longest: int, scaling: float | None
) -> Tensor:
    """torch's flash varlen kernel over the row: (T, H, D) layout, causal, GQA native where the torch has it."""
    parameters = varlen_parameters() or frozenset()
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))
    options: dict[str, Any] = {"scale": scaling}
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        if "enable_gqa" in parameters:
            options["enable_gqa"] = True
        else:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    if "window_size" in parameters:  # is_causal is deprecated where window_size exists (torch 2.11)
        options["window_size"] = (-1, 0)
    else:
        options["is_causal"] = True
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    out = varlen_attn(q, k, v, cu_seq_lens, cu_seq_lens, longest, longest, **options)
    return out.unsqueeze(0)


def per_segment_sdpa(
    query: Tensor, key: Tensor, value: Tensor, boundaries: Sequence[int], dropout: float, scaling: float | None
) -> Tensor:
    """Causal sdpa on each segment alone (what each sequence gets when it is scored by itself)."""
    gqa = query.shape[1] != key.shape[1]
    outputs = [
        F.scaled_dot_product_attention(
            query[:, :, start:end],
            key[:, :, start:end],
            value[:, :, start:end],
            dropout_p=dropout,
            is_causal=True,
            scale=scaling,
            enable_gqa=gqa,
        )
        for start, end in zip(boundaries[:-1], boundaries[1:], strict=True)
    ]
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous()


AttentionInterface.register(VARLEN, varlen_attention_forward)
