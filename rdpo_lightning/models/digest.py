"""The identity of a model's weights: what the reference cache is keyed by and what an adapter-only checkpoint
records of its base.

Each storage is hashed once. A state dict names a tied weight under every alias (GPT-2's ``transformer.wte.weight``
and ``lm_head.weight`` are one tensor): the bytes go into the digest under the first name, and every later alias adds
its own name, dtype and shape and the name it aliases. So the digest still covers every entry of the state (and says
which are tied), and a 128,256 x 2,048 tied matrix is copied to the host and hashed once, not twice (issue 33).

A state without aliases digests to exactly what it did before this rule; a tied one does not. Digests recorded
before it (adapter-only checkpoints of a tied base, written by earlier versions) are still recognised:
:func:`digest_matches` accepts :func:`legacy_weights_digest`, which hashes every entry's bytes, and computes it only
when the recorded digest is not the current one and the state has aliases. A reference-cache entry keyed by an old
digest is simply not found, and recomputed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn


def _state(model: nn.Module | Mapping[str, Tensor]) -> Mapping[str, Tensor]:
    return model.state_dict() if isinstance(model, nn.Module) else model


def _alias_key(tensor: Tensor) -> tuple | None:
    """Equal for two tensors that are the same view of the same memory (hence hold the same bytes); None for a
    tensor without memory of its own to compare."""
    local = _local(tensor)
    if local.numel() == 0:
        return None
    return (local.device, local.data_ptr(), local.dtype, tuple(tensor.shape), local.stride())


def _local(tensor: Tensor) -> Tensor:
    """A DTensor's local shard (FSDP2: tied parameters share it); the tensor itself otherwise."""
    to_local = getattr(tensor, "to_local", None)
    return to_local() if callable(to_local) else tensor


def _header(name: str, tensor: Tensor) -> bytes:
    return f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode()


def _update_with_bytes(digest, tensor: Tensor) -> None:
    """The tensor's bytes, copied to the host once (``update`` reads the array's buffer: no second copy); a DTensor's
    whole value (a collective: every rank digests)."""
    full_tensor = getattr(tensor, "full_tensor", None)
    tensor = full_tensor() if callable(full_tensor) else tensor
    digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())


def weights_digest(model: nn.Module | Mapping[str, Tensor]) -> str:
    """A digest of the model's weights (or of a state dict): blake2b over each tensor's name, dtype and shape, and the
    bytes of each storage once (an alias names the entry whose bytes it shares)."""
    return _digest(_state(model), aliases_once=True)


def has_aliases(model: nn.Module | Mapping[str, Tensor]) -> bool:
    keys = [key for key in map(_alias_key, _state(model).values()) if key is not None]
    return len(set(keys)) < len(keys)


def legacy_weights_digest(model: nn.Module | Mapping[str, Tensor]) -> str:
    """The digest before storages were hashed once: every entry's bytes, aliases again (what older adapter-only
    checkpoints record of a tied base). Equal to :func:`weights_digest` for a state without aliases."""
    return _digest(_state(model), aliases_once=False)


def _digest(state: Mapping[str, Tensor], aliases_once: bool) -> str:
    digest = hashlib.blake2b(digest_size=16)
    first: dict[tuple, str] = {}
    for name, tensor in state.items():
        digest.update(_header(name, tensor))
        key = _alias_key(tensor) if aliases_once else None
        if key is not None and key in first:
            digest.update(f"=alias of {first[key]}".encode())
            continue
        if key is not None:
            first[key] = name
        _update_with_bytes(digest, tensor)
    return digest.hexdigest()


def digest_matches(recorded: str | None, current: str, state: Callable[[], nn.Module | Mapping[str, Tensor]]) -> bool:
    """Whether a ``recorded`` digest names the weights whose current digest is ``current``: equal, or recorded by an
    earlier version that hashed aliases twice (``state`` gives the weights; read only in that case)."""
    if recorded == current:
        return True
    if recorded is None:
        return False
    weights = state()
    return has_aliases(weights) and recorded == legacy_weights_digest(weights)
