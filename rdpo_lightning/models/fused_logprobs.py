"""Per-token log-probs straight from the model body's last hidden states, without a (rows, T, V) logits tensor.

At a real vocabulary (128k) the logits of a batch dwarf everything else a step holds: 16 rows × 2,048 tokens is
16 GiB in float32. Here the causal LM runs with ``logits_to_keep=1`` (its own head sees one position per row), a
forward hook takes the body's last hidden states, and the output layer is applied only at the scored (non-ignored)
positions, gathered by the collator's integer positions (``scored_positions``: no host sync, as a boolean mask's
gather would cost on an accelerator).

Two paths compute the log-probs from there:

* **tiled** (the default, for a plain ``nn.Linear`` output layer): :mod:`rdpo_lightning.models.tiled_head`, an
  ``autograd.Function`` over blocks of thousands of tokens × a slice of the vocabulary, recomputed in backward, with the
  weight and hidden gradients accumulated in float32; logit scale and soft-cap included.
* **checkpointed** chunks (an output layer that is not a plain linear one, e.g. a LoRA-wrapped head, and any forward
  inside :func:`rdpo_lightning.double_backward.double_backward`, i.e. exact WDPO): a chunk of tokens at a time, each
  a non-reentrant activation checkpoint whose logits are freed as soon as its log-probs exist and recomputed in
  backward. The recomputed chunk is an ordinary graph, so ``autograd.grad`` w.r.t. the inputs with
  ``create_graph=True`` and the double backward through it work; the tiled Function's backward is not differentiable
  (it raises if differentiated twice).

The head computation runs inside the root module's forward (a forward hook on the module that is called), so under
FSDP1/FSDP2 the output layer is used while its parameters are unsharded, and the log-probs are the forward's output,
on which FSDP registers its backward hooks. A model whose logits are not ``scale · output_layer(hidden)``, soft-capped
where the config says so, is detected on its first batch (its own logits at the last position are compared with
ours) and served by the full-logits path from then on, with one log line. So is a model whose forward never calls the
modules the hidden states are taken from (:func:`body_modules`): no hidden states arrive, and the batch is scored
again by the full-logits path.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from rdpo_lightning.batch_layout import IGNORE_INDEX, SCORED_POSITIONS, scored_positions
from rdpo_lightning.double_backward import double_backward_expected
from rdpo_lightning.models.tiled_head import DEFAULT_TOKEN_TILE, DEFAULT_VOCAB_TILE, tiled_head_logps

log = logging.getLogger(__name__)

#: float32 bytes one chunk's logits may take; at a 128,256-token vocabulary that is 261 tokens per chunk
DEFAULT_CHUNK_BYTES = 128 * 2**20


@dataclass(frozen=True)
class OutputHead:
    """The model's logits as a function of its last hidden states: ``softcap(scale · layer(hidden))``."""

    layer: nn.Module
    scale: float = 1.0
    softcap: float | None = None

    def logits(self, hidden: Tensor) -> Tensor:
        """Logits in at least float32 (the scale and soft-cap are applied after the up-cast)."""
        logits = self.layer(hidden)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        if self.scale != 1.0:
            logits = logits * self.scale
        if self.softcap is not None:
            logits = self.softcap * torch.tanh(logits / self.softcap)
        return logits

    def logps(self, hidden: Tensor, targets: Tensor) -> Tensor:
        """log p(target) for (n, H) hidden states and (n,) targets."""
        logits = self.logits(hidden)
        picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return picked - torch.logsumexp(logits, dim=-1)


def output_head(model: nn.Module) -> OutputHead | None:
    """The output layer of a Hugging Face causal LM and the logit scale / soft-cap its config declares (the names
    the transformers models use); None when it has no output embeddings."""
    layer = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if layer is None:
        return None
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    scale = None
    for name in ("logit_scale", "output_multiplier", "lm_head_multiplier"):  # Cohere, Muse, Falcon-H1 multiply
        if getattr(config, name, None) is not None:
            scale = float(getattr(config, name))
            break
    if scale is None and getattr(config, "logits_scaling", None) is not None:  # Granite, MiniCPM3 divide
        scale = 1.0 / float(config.logits_scaling)
    softcap = getattr(config, "final_logit_softcapping", None)  # Gemma 2/3
    return OutputHead(layer, 1.0 if scale is None else scale, None if softcap is None else float(softcap))


def chunk_tokens_for(vocab_size: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Tokens per chunk so that one chunk's float32 logits take at most ``chunk_bytes``."""
    return max(1, chunk_bytes // (4 * max(1, vocab_size)))


def takes_tiled_path(head: OutputHead) -> bool:
    """Whether the tiled ``autograd.Function`` computes this head's log-probs: a plain ``nn.Linear`` output layer,
    outside a forward that will be differentiated twice."""
    return type(head.layer) is nn.Linear and not double_backward_expected()


def checked_positions(labels: Tensor, positions: Tensor | None) -> Tensor:
    """The flat scored positions of ``labels`` (:func:`~rdpo_lightning.batch_layout.scored_positions`): the
    collator's when given, else computed from the labels (a host sync on an accelerator). Host labels are checked
    against the given positions (free there), so a batch whose rows were changed after collation fails loudly."""
    if positions is None:
        return scored_positions(labels)
    positions = positions.to(labels.device)
    if labels.device.type == "cpu" and not torch.equal(positions, scored_positions(labels)):
        raise ValueError(
            f"batch[{SCORED_POSITIONS!r}] does not match the batch's labels (rows changed after collation?): drop the"
            " key or recompute it with rdpo_lightning.batch_layout.scored_positions"
        )
    return positions


def head_token_logps(
    hidden: Tensor,
    labels: Tensor,
    head: OutputHead,
    chunk_tokens: int | None = None,
    positions: Tensor | None = None,
    vocab_tile: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-token log p(label) from (rows, T, H) last hidden states: ``(logps, mask)``, both (rows, T-1).

    Only positions whose next-token label is not ``IGNORE_INDEX`` (``positions``, flat in the (rows, T) grid: see
    :func:`checked_positions`) go through the output layer; the others are 0. ``chunk_tokens``: tokens per tile or
    checkpointed chunk (defaults: :data:`~rdpo_lightning.models.tiled_head.DEFAULT_TOKEN_TILE`, and enough for
    :data:`DEFAULT_CHUNK_BYTES` of float32 logits); ``vocab_tile``: vocabulary rows per tile (tiled path).
    """
    rows, length = labels.shape
    mask = labels[:, 1:] != IGNORE_INDEX
    positions = checked_positions(labels, positions)
    scored_hidden = hidden.flatten(0, 1).index_select(0, positions)
    scored_targets = labels.flatten().index_select(0, positions + 1)
    if takes_tiled_path(head):
        layer = head.layer
        flat = tiled_head_logps(
            scored_hidden, layer.weight, layer.bias, scored_targets, head.scale, head.softcap,
            chunk_tokens or DEFAULT_TOKEN_TILE, vocab_tile or DEFAULT_VOCAB_TILE,
        )  # fmt: skip
    else:
        flat = checkpointed_logps(scored_hidden, scored_targets, head, chunk_tokens)
    logps = flat.new_zeros(rows * length).index_copy(0, positions, flat)
    return logps.view(rows, length)[:, :-1], mask


def checkpointed_logps(hidden: Tensor, targets: Tensor, head: OutputHead, chunk_tokens: int | None) -> Tensor:
    """log p(target) for (n, H) hidden states, a chunk of tokens at a time; with grad enabled each chunk is
    checkpointed, so one chunk's logits are alive at a time in backward too."""
    chunk = chunk_tokens or chunk_tokens_for(getattr(head.layer, "out_features", 1))  # nn.Linear and PEFT's LoRA
    recompute = torch.is_grad_enabled() and (
        hidden.requires_grad or any(p.requires_grad for p in head.layer.parameters())
    )
    pieces = []
    for start in range(0, targets.shape[0], chunk):
        piece = hidden[start : start + chunk], targets[start : start + chunk]
        if recompute:
            pieces.append(checkpoint(head.logps, *piece, use_reentrant=False))
        else:
            pieces.append(head.logps(*piece))
    return torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.promote_types(hidden.dtype, torch.float32))


def unwrap_causal_lm(model: nn.Module) -> nn.Module:
    """The Hugging Face causal LM inside FSDP1 / DDP wrappers and PEFT adapters."""
    while True:
        if hasattr(model, "get_base_model"):  # PeftModel
            model = model.get_base_model()
        elif type(model).__name__ in ("FullyShardedDataParallel", "DistributedDataParallel"):
            model = model.module
        else:
            return model


def called_root(model: nn.Module) -> nn.Module:
    """The module whose forward hooks run inside the call of ``model`` (FSDP1: the wrapped module, so the hook runs
    before FSDP registers its backward hooks on the output)."""
    return model.module if type(model).__name__ == "FullyShardedDataParallel" else model


class _Support:
    """Per-model verdict, kept on the model: None until the first batch checked it, then True or False."""

    attribute = "_rdpo_fused_logprobs_ok"

    @classmethod
    def get(cls, lm: nn.Module) -> bool | None:
        return getattr(lm, cls.attribute, None)

    @classmethod
    def set(cls, lm: nn.Module, ok: bool) -> None:
        object.__setattr__(lm, cls.attribute, ok)


def body_modules(lm: nn.Module) -> list[nn.Module]:
    """The modules whose output is the last hidden state: ``base_model``, and its ``decoder`` where the causal LM
    calls that directly (OPT's ``forward`` runs ``self.model.decoder``, never ``self.model``). Where both run, the
    outer one's output (hooked last) is taken."""
    body = lm.base_model
    decoder = getattr(body, "decoder", None)
    return [body, decoder] if isinstance(decoder, nn.Module) else [body]


def _last_hidden_state(output: object) -> Tensor | None:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, tuple):
        return output[0] if output and isinstance(output[0], Tensor) else None
    return getattr(output, "last_hidden_state", None)


def unsupported_reason(lm: nn.Module) -> str | None:
    """Why ``lm`` cannot take the fused path (before trying it), or None."""
    if output_head(lm) is None:
        return "it has no output embeddings (get_output_embeddings() is None)"
    body = getattr(lm, "base_model", None)
    if body is None or body is lm:
        return "its body is not reachable as base_model"
    if "logits_to_keep" not in inspect.signature(lm.forward).parameters:
        return "its forward takes no logits_to_keep"
    return None


def _refuse(lm: nn.Module, reason: str) -> None:
    _Support.set(lm, False)
    log.warning("fused output-layer log-probs: %s %s; using the full-logits path", type(lm).__name__, reason)


def _logits_agree(ours: Tensor, theirs: Tensor) -> bool:
    """Whether the model's own last-position logits match ``softcap(scale · head(hidden))``."""
    ours, theirs = ours.double(), theirs.double()
    tolerance = 1e-4 if theirs.dtype == torch.float64 and ours.dtype == torch.float64 else 3e-2
    scale = max(1.0, theirs.abs().max().item())
    return ours.shape == theirs.shape and bool(((ours - theirs).abs().max() <= tolerance * scale).item())


def fused_token_logps(
    model: nn.Module,
    inputs: dict[str, Tensor],
    labels: Tensor,
    chunk_tokens: int | None = None,
    on_output: Callable[[Any], None] | None = None,
    positions: Tensor | None = None,
    vocab_tile: int | None = None,
) -> tuple[Tensor, Tensor] | None:
    """``(logps, mask)`` (rows, T-1) of ``labels`` under ``model`` called on ``inputs`` (keyword arguments of its
    forward), or None when the model cannot take the fused path (then the caller computes full logits; the reason is
    logged once per model). ``chunk_tokens``, ``positions``, ``vocab_tile``: see :func:`head_token_logps`
    (``positions``: the collator's ``scored_positions``). ``on_output``: called with the model's output when the
    log-probs come from it (for what else the forward returns, e.g. a router load-balancing loss).
    """
    lm = unwrap_causal_lm(model)
    verdict = _Support.get(lm)
    if verdict is False:
        return None
    if verdict is None:
        reason = unsupported_reason(lm)
        if reason is not None:
            _refuse(lm, reason)
            return None
    head = output_head(lm)
    state: dict[str, object] = {}

    def capture(_module, _inputs, output):
        hidden = _last_hidden_state(output)
        if hidden is not None:
            state["hidden"] = hidden

    def finish(_module, _inputs, output):
        hidden = state.pop("hidden", None)
        if hidden is None:  # the forward bypassed every body module: nothing to score from
            state["bypassed"] = True
            return output
        if verdict is None:
            with torch.no_grad():
                state["agree"] = _logits_agree(head.logits(hidden[:, -1:]), output.logits[:, -1:])
            if not state["agree"]:
                return output
        state["result"] = head_token_logps(hidden, labels, head, chunk_tokens, positions, vocab_tile)
        output.logits = state["result"][0]  # the forward's output: FSDP hooks its backward on it
        return output

    handles = [body.register_forward_hook(capture) for body in body_modules(lm)]
    handles.append(called_root(model).register_forward_hook(finish, prepend=True))
    try:
        output = model(**inputs, logits_to_keep=1)
    finally:
        for handle in handles:
            handle.remove()
    if state.get("bypassed", False):
        _refuse(lm, f"never calls {' or '.join(type(b).__name__ for b in body_modules(lm))} in its forward")
        return None
    if verdict is None:
        if not state.get("agree", False):
            _refuse(lm, "computes its logits in a way this path does not reproduce")
            return None
        _Support.set(lm, True)
    if on_output is not None:
        on_output(output)
    return output.logits, state["result"][1]


__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "OutputHead",
    "checked_positions",
    "checkpointed_logps",
    "chunk_tokens_for",
    "fused_token_logps",
    "head_token_logps",
    "body_modules",
    "output_head",
    "takes_tiled_path",
]
