"""Capturing (and shifting) the input-embedding output z of a forward: what WDPO differentiates.

A forward hook on ``get_input_embeddings()`` rather than calling the embedding directly: under FSDP the embedding's
weights exist in full only inside the root forward. z is seen in the pair layout (2B, T, H), rows 0..B-1 chosen and
B..2B-1 rejected, also when the batch is packed into one row (padding-free), so a strategy never sees the packing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import Tensor, nn

from rdpo_lightning.batch_layout import PACK_INDEX, pack, unpack


@contextlib.contextmanager
def embedding_capture(
    model: nn.Module, batch: dict[str, Tensor], capture: bool = False, shift: Tensor | None = None
) -> Iterator[list[Tensor]]:
    """Inside, each forward of ``model`` adds ``shift`` to z (if given) and, with ``capture``, appends z (made to
    require grad, so ∇_z ℓ exists even when the embedding is frozen) to the yielded list."""
    captured: list[Tensor] = []
    pack_index = batch.get(PACK_INDEX)

    def hook(_module, _inputs, output):
        embeddings = output if pack_index is None else unpack(output, pack_index)
        if shift is not None:
            embeddings = embeddings + shift.to(embeddings.dtype)
        if capture:
            if not embeddings.requires_grad:
                embeddings = embeddings.detach().requires_grad_()
            captured.append(embeddings)
        return embeddings if pack_index is None else pack(embeddings, pack_index, output)

    handle = model.get_input_embeddings().register_forward_hook(hook) if capture or shift is not None else None
    try:
        yield captured
    finally:
        if handle is not None:
            handle.remove()
