"""CVaR and ChiSquareDRO under a real 2-process gloo DDP run: the weights come from the *global* batch. Each rank's
loss value and DDP's averaged gradient equal the full-batch objective and Σ p_i ∇ℓ_i with p computed independently
(a sort; a bisection), and differ from what per-rank weights would give (the worst pairs all sit on rank 1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from rdpo_lightning.robust import ChiSquareDRO, CVaR, ScoredPairs
from tests import gloo_ranks  # the repository root is on the path, for spawned ranks too
from tests.robust.fixed_weights import fixed_weight_gradient, fresh_model, pair_losses
from tests.robust.test_chi_square import best_point_by_bisection
from tests.robust.test_cvar import sorted_tail_weights

Q, RHO = 0.3, 1.0


def strategies() -> dict[str, torch.nn.Module]:
    return {"cvar": CVaR(worst_fraction=Q), "chi_square": ChiSquareDRO(rho=RHO)}


def independent_weights(name: str, losses: list[float]) -> torch.Tensor:
    if name == "cvar":
        return torch.tensor(sorted_tail_weights(losses, Q))
    return torch.tensor(best_point_by_bisection(np.array(losses), RHO))


def pairs() -> torch.Tensor:
    """10 pairs; rank 1's half is shifted so its losses are the large ones."""
    x = torch.randn(10, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    x[5:] -= 2.0
    return x


def _worker(rank: int, world: int, store: str, queue) -> None:
    gather = gloo_ranks.join(rank, world, store)
    results = {}
    for name, strategy in strategies().items():
        model = torch.nn.parallel.DistributedDataParallel(fresh_model())
        losses = pair_losses(model, pairs().chunk(world)[rank])
        out = strategy(ScoredPairs(losses=losses, gather=gather, world_size=world))
        out.loss.backward()
        results[name] = (out.loss.item(), [p.grad.tolist() for p in model.parameters()])
        del model  # DDP's reducer goes before its process group
    queue.put((rank, results))
    gloo_ranks.leave(queue)


def test_weights_are_global_not_per_rank(tmp_path):
    queue = mp.get_context("spawn").Queue()
    mp.start_processes(_worker, args=(2, str(tmp_path / "gloo_store"), queue), nprocs=2, start_method="spawn")
    by_rank = dict(queue.get(timeout=120) for _ in range(2))

    x = pairs()
    for name in strategies():
        value, gradient = fixed_weight_gradient(lambda losses, n=name: independent_weights(n, losses), x)
        for rank in (0, 1):
            got_value, got_gradient = by_rank[rank][name]
            assert got_value == pytest.approx(value, rel=1e-9), (name, rank)
            for got, want in zip(got_gradient, gradient, strict=True):
                torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), want, rtol=1e-9, atol=1e-12)

        halves = [fixed_weight_gradient(lambda losses, n=name: independent_weights(n, losses), h) for h in x.chunk(2)]
        per_rank = [(a + b) / 2 for a, b in zip(halves[0][1], halves[1][1], strict=True)]
        assert max((a - b).abs().max().item() for a, b in zip(per_rank, gradient, strict=True)) > 1e-2, name
