"""DrDPO and GroupDRO under a real 2-process gloo DDP run: the same gradient (and group weights) as one process on
the whole batch, with a group present on only one rank."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rdpo_lightning.robust import DrDPO, GroupDRO, PairBatch

BETA_PRIME, ETA, NUM_GROUPS = 0.5, 0.7, 3
GROUPS = torch.tensor([0, 1, 0, 1, 0, 2, 0, 0])  # group 2 only on rank 1, group 1 only on rank 0


def per_pair_losses(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.softplus(-model(x).squeeze(-1))


def strategies() -> dict[str, torch.nn.Module]:
    return {"dr_dpo": DrDPO(BETA_PRIME), "group_dro": GroupDRO(NUM_GROUPS, eta=ETA)}


def _worker(rank: int, world: int, store: str, x: torch.Tensor, queue) -> None:
    # a file rendezvous: no TCP port that a concurrent test could also pick
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)

    def gather(t: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(t) for _ in range(world)]
        dist.all_gather(parts, t.detach().contiguous())
        return torch.cat(parts)

    results = {}
    for name, strategy in strategies().items():
        torch.manual_seed(0)
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(3, 1).double())
        for _step in range(2):  # the second step uses the weights the first one moved
            model.zero_grad()
            losses = per_pair_losses(model, x.chunk(world)[rank])
            batch = PairBatch(losses=losses, groups=GROUPS.chunk(world)[rank], gather=gather, world_size=world)
            out = strategy(batch)
            out.loss.backward()
        weights = strategy.group_weights.tolist() if isinstance(strategy, GroupDRO) else None
        results[name] = (out.loss.item(), [p.grad.tolist() for p in model.parameters()], weights)
    queue.put((rank, results))
    del model  # DDP's reducer goes before its process group (else a rank can abort at exit: "terminate called")
    dist.barrier()  # no rank tears gloo down while the other still talks to it
    dist.destroy_process_group()
    # skip C++ static destructors at interpreter exit: a gloo/DDP thread torn down there aborts a rank now and then
    # ("terminate called without an active exception") after the result is already delivered
    queue.close()
    queue.join_thread()
    os._exit(0)


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
            out = strategy(PairBatch(losses=per_pair_losses(model, x), groups=GROUPS))
            out.loss.backward()
        for rank in (0, 1):
            value, grads, weights = by_rank[rank][name]
            assert value == pytest.approx(out.loss.item(), rel=1e-12), (name, rank)
            for got, want in zip(grads, [p.grad for p in model.parameters()], strict=True):
                torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), want, rtol=1e-12, atol=1e-12)
            if weights is not None:
                assert weights == pytest.approx(strategy.group_weights.tolist(), rel=1e-12)
