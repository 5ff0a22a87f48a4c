"""The non-finite guard on a real 2-process gloo group: a loss or gradient norm that is non-finite on one rank only
makes every rank skip that step (the flags are all-reduced before the one host read), and the rank that saw nothing
says so."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import torch
import torch.multiprocessing as mp

from rdpo_lightning.training.guards import NonFiniteGuard
from tests import gloo_ranks  # the repository root is on the path, for spawned ranks too

NAN = float("nan")
#: per step, what (loss, gradient norm) each rank sees: rank 0's loss, then all fine, then rank 1's gradient
STEPS = [{0: (NAN, 1.0), 1: (0.5, 1.0)}, {0: (0.5, 1.0), 1: (0.5, 1.0)}, {0: (0.5, 2.0), 1: (0.5, NAN)}]


def _worker(rank: int, world: int, store: str, queue) -> None:
    gloo_ranks.join(rank, world, store)
    trainer = SimpleNamespace(
        strategy=SimpleNamespace(root_device=torch.device("cpu")), world_size=world, global_step=0,
        precision_plugin=SimpleNamespace(),
    )  # fmt: skip
    module = SimpleNamespace(trainer=trainer, log=lambda *args, **kwargs: None)
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    guard = NonFiniteGuard("skip")
    decisions, messages = [], []
    for step, seen in enumerate(STEPS):
        trainer.global_step = step
        loss, norm = seen[rank]
        weight.grad = torch.ones(3)
        guard.observe_loss(torch.tensor(loss))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            decisions.append(guard.before_optimizer_step(module, optimizer, torch.tensor(norm)))
        messages.append([str(w.message).split(":")[0] for w in caught])
        assert decisions[-1] == (weight.grad is not None)  # a skipped step's gradients are dropped
    queue.put((rank, decisions, messages, guard.skipped_steps))
    gloo_ranks.leave(queue)


def test_one_rank_non_finite_every_rank_skips(tmp_path):
    queue = mp.get_context("spawn").Queue()
    mp.start_processes(_worker, args=(2, str(tmp_path / "gloo_store"), queue), nprocs=2, start_method="spawn")
    by_rank = {rank: rest for rank, *rest in (queue.get(timeout=120) for _ in range(2))}
    for rank in (0, 1):
        decisions, _, skipped = by_rank[rank]
        assert decisions == [False, True, False] and skipped == 2, rank
    assert by_rank[0][1] == [
        ["non-finite loss at step 0"],
        [],
        ["non-finite loss or gradient on another rank at step 2"],
    ]
    assert by_rank[1][1] == [
        ["non-finite loss or gradient on another rank at step 0"],
        [],
        ["non-finite gradient at step 2"],
    ]
