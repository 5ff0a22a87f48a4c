"""A training sampler whose position inside an epoch survives a checkpoint, so a resumed fit sees the same batches.

Lightning 2.6 stores ``state_dict()`` of every *train DataLoader* that has ``state_dict``/``load_state_dict`` in the
checkpoint (``loops.fit_loop`` → ``CombinedLoader._state_dicts``) and hands it back before the first ``iter()`` of a
resumed fit. A plain ``DataLoader`` has no such methods: Lightning warns and the resumed epoch starts over from its
first batch with a fresh random order. :class:`ResumableDataLoader` supplies the methods; its
:class:`ResumableSampler` draws each epoch's order from ``(seed, epoch)`` alone and remembers how far into it the
*consumer* got (counted where batches are handed out, so worker prefetching does not count as consumed).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sized
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler


class ResumableSampler(DistributedSampler):
    """Shuffles each epoch by ``torch.randperm`` seeded with ``seed + epoch`` and shards it across replicas.

    A fresh epoch yields exactly what :class:`~torch.utils.data.DistributedSampler` yields (so Lightning, which
    leaves a ``DistributedSampler`` in place, never wraps it). ``position`` is how many entries of the epoch's global
    order have been consumed by all replicas together; after :meth:`load_state_dict` the next pass resumes there. The
    remaining order is padded (or, with ``drop_last``, cut) to a multiple of the replica count and strided by rank,
    so a checkpoint taken with one world size can be resumed with another without repeating or skipping a pair
    (apart from the padding DistributedSampler itself adds).
    """

    def __init__(
        self,
        dataset: Sized,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.position = 0

    @classmethod
    def for_trainer(cls, dataset: Sized, trainer: Any = None, seed: int | None = None, **kwargs: Any):
        """A sampler for this process of ``trainer``'s run, seeded like Lightning's own (``PL_GLOBAL_SEED``)."""
        num_replicas, rank = data_parallel_replicas(trainer)
        if seed is None:
            seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        return cls(dataset, num_replicas=num_replicas, rank=rank, seed=seed, **kwargs)

    @property
    def epoch_length(self) -> int:
        """How many global positions an epoch has (``drop_last`` cuts the tail to a multiple of the replicas)."""
        return self.total_size if self.drop_last else len(self.dataset)

    def epoch_order(self) -> list[int]:
        """The whole epoch's global order: a pure function of (seed, epoch)."""
        if not self.shuffle:
            return list(range(len(self.dataset)))
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        return torch.randperm(len(self.dataset), generator=generator).tolist()

    def __iter__(self) -> Iterator[int]:
        remaining = self.epoch_order()[self.position : self.epoch_length]
        if not remaining:
            return iter([])
        if self.drop_last:
            remaining = remaining[: len(remaining) - len(remaining) % self.num_replicas]
        else:
            padding = -len(remaining) % self.num_replicas
            remaining += (remaining * math.ceil(padding / len(remaining)))[:padding]
        return iter(remaining[self.rank :: self.num_replicas])

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this at every epoch start, also right after a resume with the epoch it resumes in."""
        if epoch != self.epoch:
            self.position = 0
        super().set_epoch(epoch)

    def advance(self, per_replica: int) -> None:
        """Record that each replica's consumer took ``per_replica`` more samples."""
        self.position = min(self.position + per_replica * self.num_replicas, self.epoch_length)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "dataset_size": len(self.dataset)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["dataset_size"] != len(self.dataset):
            raise ValueError(
                f"cannot resume the training order: the checkpoint's training set had {state['dataset_size']} pairs,"
                f" this one has {len(self.dataset)} (resume with the same data, or start a new fit)"
            )
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        if self.position >= self.epoch_length:
            # a finished epoch: Lightning may call iter() (with workers: eagerly) before set_epoch(epoch + 1)
            self.epoch, self.position = self.epoch + 1, 0


class ResumableDataLoader(DataLoader):
    """A DataLoader over a :class:`ResumableSampler` that counts the batches it hands out and exposes the
    sampler's state to Lightning's checkpoints (the ``_Stateful`` protocol: ``state_dict``/``load_state_dict``)."""

    def __iter__(self) -> Iterator[Any]:
        sampler = self.sampler
        if not isinstance(sampler, ResumableSampler):
            raise TypeError(f"ResumableDataLoader needs a ResumableSampler, got {type(sampler).__name__}")
        for batch in super().__iter__():
            sampler.advance(self.batch_size)  # before handing it out: a checkpoint after this step includes it
            yield batch

    def state_dict(self) -> dict[str, int]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.load_state_dict(state)


def load_pending_loader_states(trainer: Any) -> None:
    """Hand a resumed fit's train-loader state to the loader, if Lightning has not done so (call at train start).

    Lightning 2.6 loads it only inside ``FitLoop.setup_data``; when ``configure_optimizers`` reads
    ``trainer.estimated_stepping_batches`` (as a warm-up/cosine schedule does) that runs *before* the checkpoint is
    restored and is not repeated, so the state is silently dropped (Lightning issue #20550). At ``on_train_start``
    the state is pending and no batch has been drawn yet (ResumableDataLoader starts its iteration lazily). A no-op
    when nothing is pending, so it stays harmless once Lightning fixes the bug.
    """
    load = getattr(getattr(trainer, "fit_loop", None), "_load_combined_loader_states", None)
    if callable(load):
        load()


class LengthGroupedSampler(ResumableSampler):
    """A :class:`ResumableSampler` whose epoch order puts pairs of similar length into the same batch.

    For models or attention implementations that cannot take packed (padding-free) batches: a batch padded to its
    longest pair wastes little when its pairs are about as long. Each epoch's random order (from ``(seed, epoch)``,
    as in the parent) is cut into mega-batches of ``group_batches`` global batches (``batch_size`` × replicas pairs
    each); a mega-batch is sorted by length, longest first, and cut into global batches, and the full global batches
    are shuffled by the same generator, the short one (if the epoch has one) kept last so every batch boundary stays
    on a global batch's. Every replica takes a stride of each global batch, so the replicas' batches are
    alike in length too. The order depends on ``batch_size`` and the replica count, so a checkpoint resumes only with
    the same ones (refused otherwise).
    """

    def __init__(
        self, dataset: Sized, lengths: list[int], batch_size: int, group_batches: int = 50, **kwargs: Any
    ) -> None:
        """``kwargs``: the parent's (``num_replicas``, ``rank``, ``shuffle``, ``seed``, ``drop_last``)."""
        super().__init__(dataset, **kwargs)
        if len(lengths) != len(dataset):
            raise ValueError(f"lengths has {len(lengths)} entries for {len(dataset)} pairs")
        self.lengths = list(lengths)
        self.batch_size = int(batch_size)
        self.group_batches = int(group_batches)

    def epoch_order(self) -> list[int]:
        order = super().epoch_order()
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch + 1)
        global_batch = self.batch_size * self.num_replicas
        mega = global_batch * self.group_batches
        batches: list[list[int]] = []
        for start in range(0, len(order), mega):
            group = sorted(order[start : start + mega], key=lambda i: -self.lengths[i])
            batches += [group[i : i + global_batch] for i in range(0, len(group), global_batch)]
        # a short batch (the epoch's last pairs) goes last: in among the full ones it would shift the boundaries of
        # every batch after it, so that each straddled two length groups
        short = [batch for batch in batches if len(batch) < global_batch]
        batches = [batch for batch in batches if len(batch) == global_batch]
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        return [index for batch in batches + short for index in batch]

    def state_dict(self) -> dict[str, int]:
        return {**super().state_dict(), "batch_size": self.batch_size, "num_replicas": self.num_replicas}

    def load_state_dict(self, state: dict[str, int]) -> None:
        saved = (state.get("batch_size", self.batch_size), state.get("num_replicas", self.num_replicas))
        if saved != (self.batch_size, self.num_replicas):
            raise ValueError(
                f"cannot resume the length-grouped training order: the checkpoint's data.batch_size × replicas was"
                f" {saved[0]} × {saved[1]}, this run's is {self.batch_size} × {self.num_replicas} (resume with the same"
                " ones, or set data.group_by_length: false)"
            )
        super().load_state_dict(state)


def data_parallel_replicas(trainer: Any = None) -> tuple[int, int]:
    """(number of data-parallel replicas, this process's replica index).

    From the Trainer's strategy when one is attached (ModelParallel counts only its data-parallel mesh dimension),
    else from an initialised ``torch.distributed`` process group, else a single process.
    """
    kwargs = getattr(trainer, "distributed_sampler_kwargs", None) if trainer is not None else None
    if kwargs:
        return int(kwargs["num_replicas"]), int(kwargs["rank"])
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0
