"""DrDPO and GroupDRO under a real 2-process gloo DDP run: the same gradient (and group weights) as one process on
the whole batch, with a group present on only one rank."""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp

from rdpo_lightning.robust import DrDPO, GroupDRO, ScoredPairs
from tests import gloo_ranks  # the repository root is on the path, for spawned ranks too

BETA_PRIME, ETA, NUM_GROUPS = 0.5, 0.7, 3
GROUPS = torch.tensor([0, 1, 0, 1, 0, 2, 0, 0])  # group 2 only on rank 1, group 1 only on rank 0


def per_pair_losses(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.softplus(-model(x).squeeze(-1))


def strategies() -> dict[str, torch.nn.Module]:
    return {"dr_dpo": DrDPO(BETA_PRIME), "group_dro": GroupDRO(NUM_GROUPS, eta=ETA)}


def _worker(rank: int, world: int, store: str, x: torch.Tensor, queue) -> None:
    gather = gloo_ranks.join(rank, world, store)

    results = {}
    for name, strategy in strategies().items():
        torch.manual_seed(0)
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(3, 1).double())
        for _step in range(2):  # the second step uses the weights the first one moved
            model.zero_grad()
            losses = per_pair_losses(model, x.chunk(world)[rank])
            batch = ScoredPairs(
                losses=losses, columns={"group": GROUPS.chunk(world)[rank]}, gather=gather, world_size=world
            )
            out = strategy(batch)
            out.loss.backward()
        weights = strategy.group_weights.tolist() if isinstance(strategy, GroupDRO) else None
        results[name] = (out.loss.item(), [p.grad.tolist() for p in model.parameters()], weights)
    queue.put((rank, results))
    del model  # DDP's reducer goes before its process group
    gloo_ranks.leave(queue)


def test_distributed_equals_full_batch(tmp_path):
    x = torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    queue = mp.get_context("spawn").Queue()
    store = str(tmp_path / "gloo_store")
    mp.start_processes(_worker, args=(2, store, x, queue), nprocs=2, start_method="spawn")
    by_rank = dict(queue.get(timeout=120) for _ in range(2))

    for name, strategy in strategies().items():
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 1).double()
        for _step in range(2):
            model.zero_grad()
            out = strategy(ScoredPairs(losses=per_pair_losses(model, x), columns={"group": GROUPS}))
            out.loss.backward()
        for rank in (0, 1):
            value, grads, weights = by_rank[rank][name]
            assert value == pytest.approx(out.loss.item(), rel=1e-12), (name, rank)
            for got, want in zip(grads, [p.grad for p in model.parameters()], strict=True):
                torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), want, rtol=1e-12, atol=1e-12)
            if weights is not None:
                assert weights == pytest.approx(strategy.group_weights.tolist(), rel=1e-12)
