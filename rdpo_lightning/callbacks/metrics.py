"""Exact means across processes: grouped weighted sums as a torchmetrics ``Metric``, and sampler-padding removal.

Lightning's ``self.log(..., sync_dist=True)`` averages per-rank means; and under a ``DistributedSampler`` each rank's
share is padded to equal length by repeating the first samples, so some pairs would count twice. Here every rank
adds plain sums (float64) of only the samples it really owns, and torchmetrics sums them across ranks once per
validation pass: the result is the mean over the dataset, whatever the world size or the size of the last batch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DistributedSampler
from torchmetrics import Metric


class GroupedMean(Metric):
    """Weighted means of ``num_columns`` values in each of ``num_groups`` groups (e.g. one group per mixture).

    ``update(group, values, weights)`` adds the (n, C) ``values`` with (n,) ``weights`` to one group; ``compute``
    returns the (G, C) means, NaN for a group that received no weight on any process.
    """

    full_state_update = False

    def __init__(self, num_groups: int, num_columns: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_groups = num_groups
        self.num_columns = num_columns
        zeros = torch.zeros(num_groups, num_columns, dtype=torch.float64)
        self.add_state("sums", default=zeros, dist_reduce_fx="sum")
        self.add_state("weights", default=torch.zeros(num_groups, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, group: int, values: Tensor, weights: Tensor | None = None) -> None:
        values = values.detach().to(self.sums.device, torch.float64)
        if values.ndim == 1:
            values = values.unsqueeze(-1)
        if values.shape[1] != self.num_columns:
            raise ValueError(f"GroupedMean expected {self.num_columns} columns, got values of shape {values.shape}")
        if weights is None:
            weights = torch.ones(values.shape[0], dtype=torch.float64, device=self.sums.device)
        weights = weights.detach().to(self.sums.device, torch.float64)
        self.sums[group] += (values * weights.unsqueeze(-1)).sum(0)
        self.weights[group] += weights.sum()

    def compute(self) -> Tensor:
        return self.sums / self.weights.unsqueeze(-1)


def owned_samples(dataloader: Any) -> int | None:
    """How many of this rank's samples are real under a padding ``DistributedSampler``; None when all are.

    The sampler appends repeats so that ``total_size`` divides evenly, then gives rank r the positions
    r, r + W, r + 2W, ...; positions at or past ``len(dataset)`` are the repeats, and they come last in the rank's
    order. So rank r owns exactly ``len(range(r, len(dataset), W))`` leading samples.
    """
    sampler = getattr(dataloader, "sampler", None)
    if not isinstance(sampler, DistributedSampler) or sampler.drop_last:
        return None
    return len(range(sampler.rank, len(sampler.dataset), sampler.num_replicas))
