"""The layout of a collated batch, which the data layer writes and the model layer reads.

Labels mark positions that score nothing with :data:`IGNORE_INDEX`. A padding-free batch (built by
:mod:`rdpo_lightning.data.packing`) carries ``pack_index`` (2B, T): every position of the *pair layout* (row i: the
i-th sequence, as :class:`~rdpo_lightning.data.collate.PairCollator` lays it out) mapped to its flat position in the
packed (R, L) grid, −1 where the pair layout pads. :func:`unpack` and :func:`pack` move tensors between the two
layouts differentiably, so log-probs and input embeddings reach the loss and the robust strategies in the pair layout
they expect. A packed batch also carries its sequence boundaries as plain integers, over its rows laid end to end
as one row (:data:`CU_SEQ_LENS`: cumulative lengths from 0, every row's trailing padding a segment of its own;
:data:`MAX_SEQ_LEN`: the longest segment), so a variable-length attention kernel can run it as one row with no mask
and no host sync. A leaf: data and models both import it, and neither imports the other.
"""

from __future__ import annotations

import torch
from torch import Tensor

IGNORE_INDEX = -100

PACK_INDEX = "pack_index"

#: the collator's flat positions (r·T + t in the (rows, T) grid) whose next-token label is scored: the output layer
#: gathers them without the host sync a boolean mask's gather costs on an accelerator
SCORED_POSITIONS = "scored_positions"


def scored_positions(labels: Tensor) -> Tensor:
    """Flat positions r·T + t of the (rows, T) ``labels`` whose next label (t + 1) is not :data:`IGNORE_INDEX`, in
    row-major order. Computed where the labels are (the collator's host tensors: no device sync)."""
    rows, columns = (labels[:, 1:] != IGNORE_INDEX).nonzero(as_tuple=True)
    return rows * labels.shape[1] + columns


#: a packed batch's segment boundaries over its (R, L) grid read as one row of R*L tokens: a list of ints from 0 to R*L
CU_SEQ_LENS = "cu_seq_lens"

#: the longest segment of :data:`CU_SEQ_LENS` (an int)
MAX_SEQ_LEN = "max_seq_len"


def unpack(packed: Tensor, pack_index: Tensor) -> Tensor:
    """(R, L, ...) packed → (N, T, ...) pair layout; zeros where the pair layout pads."""
    flat = packed.flatten(0, 1)
    valid = pack_index >= 0
    out = flat[pack_index.clamp(min=0)]
    return out * valid.view(*valid.shape, *([1] * (out.dim() - 2))).to(out.dtype)


def pack(padded: Tensor, pack_index: Tensor, like: Tensor) -> Tensor:
    """(N, T, ...) pair layout → (R, L, ...) like ``like``: its real positions replaced by ``padded``'s, the packed
    rows' trailing padding kept from ``like``."""
    valid = pack_index >= 0
    flat = like.flatten(0, 1).index_put((pack_index[valid],), padded[valid])
    return flat.view_as(like)


def unpack_token_logps(logps: Tensor, mask: Tensor, pack_index: Tensor) -> tuple[Tensor, Tensor]:
    """Next-token log-probs and mask (R, L−1) of a packed batch → (N, T−1) of the pair layout.

    Position t of sequence s predicts token t+1; its packed position is ``pack_index[s, t]`` (the packed label of
    each sequence's first token is ignored, so a sequence's last position scores nothing).
    """
    logps = torch.nn.functional.pad(logps, (0, 1))
    mask = torch.nn.functional.pad(mask, (0, 1))
    return unpack(logps, pack_index)[:, :-1], unpack(mask, pack_index)[:, :-1].bool()
