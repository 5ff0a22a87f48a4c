"""Joining and leaving the small 2-process gloo groups that check a robust strategy's math under data parallelism
(spawned workers import this module like the test module that spawned them)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import NoReturn

import torch
import torch.distributed as dist


def join(rank: int, world: int, store: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Join through a file rendezvous (no TCP port that a concurrent test could also pick); return the detached
    all-gather that ``ScoredPairs.gather`` expects."""
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)

    def gather(t: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(t) for _ in range(world)]
        dist.all_gather(parts, t.detach().contiguous())
        return torch.cat(parts)

    return gather


def leave(queue) -> NoReturn:
    """Tear the group down once the result is on ``queue``. Delete any DDP model first (its reducer must go before
    its process group). No rank tears gloo down while the other still talks to it, and the process exits without
    C++ static destructors, where a gloo/DDP thread aborts a rank now and then ("terminate called without an active
    exception") after the result is already delivered."""
    dist.barrier()
    dist.destroy_process_group()
    queue.close()
    queue.join_thread()
    os._exit(0)
