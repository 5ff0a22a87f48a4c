"""GroupedMean against plain sums; owned_samples against what a real DistributedSampler hands each rank."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from rdpo_lightning.callbacks.metrics import GroupedMean, owned_samples


def test_grouped_mean_is_the_weighted_mean_per_group_and_nan_when_empty() -> None:
    metric = GroupedMean(num_groups=3, num_columns=2)
    a = torch.tensor([[1.0, 2.0], [3.0, 5.0], [7.0, 11.0]])
    b = torch.tensor([[2.0, 4.0]])
    metric.update(0, a[:2])
    metric.update(0, a[2:], torch.tensor([2.0]))
    metric.update(2, b)
    means = metric.compute()
    expected0 = (a[0] + a[1] + 2 * a[2]) / 4
    torch.testing.assert_close(means[0], expected0.double())
    assert all(math.isnan(v) for v in means[1].tolist())
    torch.testing.assert_close(means[2], b[0].double())


def test_grouped_mean_rejects_the_wrong_number_of_columns() -> None:
    with pytest.raises(ValueError, match="expected 2 columns"):
        GroupedMean(1, 2).update(0, torch.zeros(4, 3))


@pytest.mark.parametrize(("size", "replicas"), [(37, 2), (10, 3), (5, 8), (12, 4)])
def test_owned_samples_drops_exactly_the_padding_repeats(size: int, replicas: int) -> None:
    dataset = list(range(size))
    owned_union = []
    for rank in range(replicas):
        sampler = DistributedSampler(dataset, num_replicas=replicas, rank=rank, shuffle=False)
        loader = DataLoader(dataset, sampler=sampler, batch_size=4)
        order = [int(i) for batch in loader for i in batch]
        owned = owned_samples(loader)
        assert len(order) == sampler.num_samples  # every rank yields the padded share
        owned_union += order[:owned]
    assert sorted(owned_union) == dataset  # each sample exactly once over all ranks


def test_owned_samples_is_none_without_a_distributed_sampler() -> None:
    assert owned_samples(DataLoader(list(range(5)))) is None
