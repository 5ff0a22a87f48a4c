"""ResumableSampler / ResumableDataLoader: exact mid-epoch resume, sharding, and the order Lightning checkpoints."""

from __future__ import annotations

import pytest
from torch.utils.data import DistributedSampler

from rdpo_lightning.data.sampler import ResumableDataLoader, ResumableSampler, data_parallel_replicas

N = 22


def loader(size: int = N, batch_size: int = 4, num_replicas: int = 1, rank: int = 0, **kwargs) -> ResumableDataLoader:
    sampler = ResumableSampler(list(range(size)), num_replicas=num_replicas, rank=rank, seed=7)
    return ResumableDataLoader(list(range(size)), batch_size=batch_size, sampler=sampler, **kwargs)


def batches(iterable, limit: int | None = None) -> list[list[int]]:
    out = []
    for batch in iterable:
        out.append(batch.tolist())
        if limit is not None and len(out) == limit:
            break
    return out


@pytest.mark.parametrize("num_replicas, drop_last", [(1, False), (3, False), (3, True)])
@pytest.mark.parametrize("epoch", [0, 2])
def test_a_fresh_epoch_is_what_distributed_sampler_yields(num_replicas, drop_last, epoch):
    data = list(range(N))
    for rank in range(num_replicas):
        ours = ResumableSampler(data, num_replicas=num_replicas, rank=rank, seed=3, drop_last=drop_last)
        theirs = DistributedSampler(data, num_replicas=num_replicas, rank=rank, seed=3, drop_last=drop_last)
        ours.set_epoch(epoch)
        theirs.set_epoch(epoch)
        assert list(ours) == list(theirs)
        assert len(ours) == len(theirs)


def test_interrupted_epoch_resumes_at_the_next_batch_and_later_epochs_agree():
    uninterrupted = loader()
    want = [batches(uninterrupted)]
    uninterrupted.sampler.set_epoch(1)
    want.append(batches(uninterrupted))
    assert want[0] != want[1]  # epochs are shuffled differently

    first = loader()
    head = batches(first, limit=3)
    state = first.state_dict()
    assert state == {"epoch": 0, "position": 12, "seed": 7, "dataset_size": N}

    resumed = loader()
    resumed.sampler.seed = 99  # the checkpoint's seed wins over the new process's
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(0)  # what Lightning does right after restoring
    assert head + batches(resumed) == want[0]
    resumed.sampler.set_epoch(1)
    assert batches(resumed) == want[1]


def test_prefetching_workers_do_not_count_as_consumed():
    """Two workers prefetch several batches ahead; only the batches handed out move the position."""
    first = loader(size=40, batch_size=2, num_workers=2, prefetch_factor=4)
    head = batches(first, limit=3)
    assert first.state_dict()["position"] == 6
    resumed = loader(size=40, batch_size=2)
    resumed.load_state_dict(first.state_dict())
    assert head + batches(resumed) == batches(loader(size=40, batch_size=2))


def test_a_finished_epoch_resumes_in_the_next_one_even_if_iterated_before_set_epoch():
    done = loader()
    batches(done)
    resumed = loader()
    resumed.load_state_dict(done.state_dict())
    got = batches(resumed)  # Lightning may create the iterator before calling set_epoch(1)
    reference = loader()
    reference.sampler.set_epoch(1)
    assert got == batches(reference)


def test_resuming_with_another_world_size_consumes_every_pair_once():
    size, batch_size = 24, 2
    seen: list[int] = []
    two = [loader(size, batch_size, num_replicas=2, rank=r) for r in range(2)]
    for rank_loader in two:
        for batch in batches(rank_loader, limit=3):
            seen += batch
    state = two[0].state_dict()
    assert state["position"] == 12
    for rank in range(3):
        three = loader(size, batch_size, num_replicas=3, rank=rank)
        three.load_state_dict(state)
        for batch in batches(three):
            seen += batch
    assert sorted(seen) == list(range(size))


def test_a_different_training_set_is_refused():
    state = loader().state_dict()
    with pytest.raises(ValueError, match="training set had 22 pairs, this one has 30"):
        loader(size=30).load_state_dict(state)


def test_replicas_come_from_the_trainer_strategy_or_default_to_one_process():
    class FakeTrainer:
        distributed_sampler_kwargs = {"num_replicas": 4, "rank": 3}

    assert data_parallel_replicas(None) == (1, 0)
    assert data_parallel_replicas(FakeTrainer()) == (4, 3)
    sampler = ResumableSampler.for_trainer(list(range(N)), FakeTrainer(), seed=1)
    assert (sampler.num_replicas, sampler.rank, sampler.seed) == (4, 3, 1)
