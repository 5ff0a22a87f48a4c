"""The identity of a model's weights: what the reference cache is keyed by and what an adapter-only checkpoint
records of its base."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch
from torch import Tensor, nn


def weights_digest(model: nn.Module | Mapping[str, Tensor]) -> str:
    """A digest of the model's weights (or of a state dict): blake2b over each tensor's name, dtype, shape and
    bytes."""
    digest = hashlib.blake2b(digest_size=16)
    state = model.state_dict() if isinstance(model, nn.Module) else model
    for name, tensor in state.items():
        tensor = tensor.detach()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
