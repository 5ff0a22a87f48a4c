"""Training randomness as a pure function of (seed, epoch, batch, data-parallel rank).

Lightning checkpoints hold no RNG state, and between a checkpoint and the next step the global generator is drawn
from by things unrelated to training (every ``iter(DataLoader)`` draws a worker base seed, sanity-check validation
runs in the resumed process only). So a resumed fit with dropout would draw different masks. Reseeding the global
torch generator (CPU and CUDA) at every training batch from ``PL_GLOBAL_SEED`` (set by ``seed_everything``, which the
CLI calls) makes the masks of batch b of epoch e the same in an uninterrupted and in a resumed fit.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from rdpo_lightning.data.sampler import data_parallel_replicas


def batch_seed(seed: int, epoch: int, batch_idx: int, rank: int) -> int:
    """A well-mixed 63-bit seed for one training batch of one data-parallel replica."""
    words = [int(seed) % 2**32, int(seed) // 2**32 % 2**32, int(epoch), int(batch_idx), int(rank)]
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def seed_training_batch(trainer: Any, batch_idx: int) -> int | None:
    """Reseed torch for this batch; a no-op (None) when the run was not seeded (no reproducibility promised)."""
    seed = os.environ.get("PL_GLOBAL_SEED")
    if seed is None:
        return None
    _, rank = data_parallel_replicas(trainer)  # tensor-parallel peers share a replica and must draw alike
    value = batch_seed(int(seed), trainer.current_epoch, batch_idx, rank)
    torch.manual_seed(value)
    return value
