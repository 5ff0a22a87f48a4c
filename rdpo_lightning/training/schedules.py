"""Learning-rate schedules, as multipliers for ``LambdaLR``."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float) -> Callable[[int], float]:
    """LR multiplier: linear warm-up to 1, then cosine decay to ``min_ratio`` at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def warmup_cosine_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_ratio: float
) -> dict[str, Any]:
    """Lightning's ``lr_scheduler`` entry for :func:`warmup_cosine`, stepped every optimizer step."""
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup_steps, total_steps, min_ratio))
    return {"scheduler": scheduler, "interval": "step"}
