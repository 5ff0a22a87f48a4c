"""KLReweighter against direct computations, and its global normalisation under a real 2-process DDP run."""

from __future__ import annotations

import math
from decimal import Context, Decimal

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from rdpo_lightning.robust import KLReweighter, NoRobust, ScoredPairs
from tests import gloo_ranks  # the repository root is on the path, for spawned ranks too

LOSSES = [0.3, 1.2, 0.05, 2.5, 0.7, 0.7]


def test_normalised_weights_are_softmax_of_loss_over_tau():
    tau = 0.5
    losses = torch.tensor(LOSSES, dtype=torch.float64, requires_grad=True)
    out = KLReweighter(tau=tau)(ScoredPairs(losses=losses))
    expected_w = np.exp(np.array(LOSSES) / tau) / np.exp(np.array(LOSSES) / tau).sum()
    assert out.loss.item() == pytest.approx(float(expected_w @ np.array(LOSSES)), rel=1e-12)
    out.loss.backward()
    assert losses.grad.tolist() == pytest.approx(expected_w.tolist(), rel=1e-12)
    assert out.metrics["weight_max"].item() == pytest.approx(expected_w.max() * len(LOSSES), rel=1e-6)
    ess = expected_w.sum() ** 2 / (expected_w**2).sum() / len(LOSSES)
    assert out.metrics["ess_fraction"].item() == pytest.approx(ess, rel=1e-6)


def test_gradient_is_that_of_the_dual_objective():
    """∇ of τ·log mean exp(ℓ/τ), the KL-ball worst case, through autograd — an independent route."""
    tau = 0.7
    theta = torch.tensor([0.4, -0.2], dtype=torch.float64, requires_grad=True)
    x = torch.tensor([[1.0, 2.0], [0.5, -1.0], [-2.0, 0.3], [0.1, 0.1]], dtype=torch.float64)
    losses = torch.nn.functional.softplus(-(x @ theta))
    KLReweighter(tau=tau)(ScoredPairs(losses=losses)).loss.backward()
    ours = theta.grad.clone()
    theta.grad = None
    losses = torch.nn.functional.softplus(-(x @ theta))
    (tau * (torch.logsumexp(losses / tau, 0) - math.log(len(losses)))).backward()
    torch.testing.assert_close(ours, theta.grad)


def test_authors_form_is_clamped_and_unnormalised():
    tau, clamp = 0.25, 10.0
    losses = torch.tensor(LOSSES, dtype=torch.float64)
    out = KLReweighter(tau=tau, normalize=False, clamp_max=clamp)(ScoredPairs(losses=losses))
    raw = np.exp((np.array(LOSSES) - np.mean(LOSSES)) / tau)
    w = np.minimum(raw, clamp)
    assert raw.max() > clamp  # the clamp is exercised
    assert out.loss.item() == pytest.approx(float(np.mean(w * np.array(LOSSES))), rel=1e-12)


def test_authors_form_gradient_is_the_clamped_weight_over_n():
    """d(loss)/dℓ_i = min(exp((ℓ_i − mean ℓ)/τ), clamp)/n: the weight is a constant (its exponent detached), so the
    gradient carries no term from differentiating the weight itself."""
    tau, clamp = 0.5, 10.0
    losses = torch.tensor(LOSSES, dtype=torch.float64, requires_grad=True)
    out = KLReweighter(tau=tau, normalize=False, clamp_max=clamp)(ScoredPairs(losses=losses))
    (grad,) = torch.autograd.grad(out.loss, losses)
    values = np.array(LOSSES)
    raw = np.exp((values - values.mean()) / tau)
    assert (raw < clamp).sum() >= 3 and (raw > clamp).any()  # both branches of the clamp are exercised
    assert grad.tolist() == pytest.approx((np.minimum(raw, clamp) / len(LOSSES)).tolist(), rel=1e-12, abs=1e-15)


def exact_softmax(values: list[float], tau: float) -> list[float]:
    """softmax(ℓ/τ) in 60-digit decimal arithmetic: no float rounding to lose the differences between ℓ_i/τ."""
    context = Context(prec=60)
    scaled = [context.divide(Decimal(v), Decimal(tau)) for v in values]
    top = max(scaled)
    exps = [context.exp(x - top) for x in scaled]
    total = sum(exps[1:], exps[0])
    return [float(context.divide(e, total)) for e in exps]


EXTREME_LOSSES = {
    "two tied maxima": [1e4, 3.0, 9999.0, 0.0, 1e4, 0.5],
    "one maximum": [1e4, 9999.75, 0.0, 5000.0, 1.0],
    "all equal": [1e4] * 5,
    "spread": np.linspace(0.0, 1e4, 33).tolist(),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("tau", [1.0, 1e-2, 1e-6, 1e-10, 1e-12])
@pytest.mark.parametrize("case", list(EXTREME_LOSSES))
def test_weights_sum_to_one_and_match_exact_softmax_down_to_tiny_tau(dtype, tau, case):
    """Shifted by the global maximum *before* dividing by τ: at τ = 1e-12 and ℓ = 1e4 (ℓ/τ = 1e16) the weights still
    sum to 1 (within 1e-12 in float64; float32 weights are each rounded to float32) and equal the exact softmax, and
    the objective of tied maxima is the maximum (it was 2·1e4 for two tied maxima of 1e4 at τ = 1e-12)."""
    values = torch.tensor(EXTREME_LOSSES[case], dtype=dtype)
    losses = values.clone().requires_grad_()
    out = KLReweighter(tau=tau)(ScoredPairs(losses=losses))
    (weights,) = torch.autograd.grad(out.loss, losses)  # d(Σ w·ℓ)/dℓ = w
    exact = exact_softmax(values.double().tolist(), tau)  # the losses as the dtype holds them
    rounding = 1e-12 if dtype == torch.float64 else len(exact) * 2.0**-24
    assert abs(weights.double().sum().item() - 1) <= rounding
    assert weights.double().tolist() == pytest.approx(exact, rel=rounding, abs=torch.finfo(dtype).tiny)
    objective = sum(w * v for w, v in zip(exact, values.double().tolist(), strict=True))
    assert out.loss.item() == pytest.approx(objective, rel=rounding)


@pytest.mark.parametrize("tau", [1e-4, 1e-2])
def test_finite_for_small_tau_and_huge_losses(tau):
    losses = torch.tensor([1e4, 3.0, 9999.0, 0.0], requires_grad=True)
    for normalize in (True, False):
        out = KLReweighter(tau=tau, normalize=normalize)(ScoredPairs(losses=losses))
        assert torch.isfinite(out.loss)
        (grad,) = torch.autograd.grad(out.loss, losses)
        assert torch.isfinite(grad).all()


def test_large_tau_approaches_the_mean():
    losses = torch.tensor(LOSSES)
    kl = KLReweighter(tau=1e6)(ScoredPairs(losses=losses)).loss
    assert kl.item() == pytest.approx(NoRobust()(ScoredPairs(losses=losses)).loss.item(), rel=1e-5)


@pytest.mark.parametrize("kwargs", [{"tau": 0}, {"tau": -1.0}, {"tau": float("nan")}, {"clamp_max": 0}])
def test_bad_hyper_parameters_rejected(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        KLReweighter(**kwargs)


# --- a real 2-process gloo run -----------------------------------------------------------------------------------


def _per_pair_losses(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.softplus(-model(x).squeeze(-1))


NORMALIZE = (True, False)
TAU = 0.5


def _pairs() -> torch.Tensor:
    return torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def _ddp_worker(rank: int, world: int, store: str, x: torch.Tensor, tau: float, queue) -> None:
    gather = gloo_ranks.join(rank, world, store)
    grads = {}
    for normalize in NORMALIZE:  # one launch for both forms
        torch.manual_seed(0)
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(3, 1).double())
        local = x.chunk(world)[rank]
        losses = _per_pair_losses(model, local)
        out = KLReweighter(tau=tau, normalize=normalize)(ScoredPairs(losses=losses, gather=gather, world_size=world))
        out.loss.backward()
        grads[normalize] = [p.grad.tolist() for p in model.parameters()]
        del model  # DDP's reducer goes before its process group
    if rank == 0:
        queue.put(grads)
    gloo_ranks.leave(queue)


@pytest.fixture(scope="module")
def distributed_grads(tmp_path_factory) -> dict[bool, list]:
    """Rank 0's gradient after DDP's averaging, by ``normalize``, from one 2-process launch."""
    queue = mp.get_context("spawn").Queue()
    store = str(tmp_path_factory.mktemp("kl_ddp") / "gloo_store")
    mp.start_processes(_ddp_worker, args=(2, store, _pairs(), TAU, queue), nprocs=2, start_method="spawn")
    return queue.get(timeout=60)


@pytest.mark.parametrize("normalize", NORMALIZE)
def test_distributed_weighted_gradient_equals_full_batch(normalize, distributed_grads):
    """Two gloo ranks, DDP gradient averaging: the same gradient as one process on the whole batch."""
    tau, x, distributed = TAU, _pairs(), distributed_grads[normalize]
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1).double()
    KLReweighter(tau=tau, normalize=normalize)(ScoredPairs(losses=_per_pair_losses(model, x))).loss.backward()
    for got, want in zip(distributed, [p.grad for p in model.parameters()], strict=True):
        torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tau", [1e-4, 1e-2, 1.0])
def test_weights_are_a_finite_distribution_at_extreme_tau_and_losses(dtype, tau):
    """τ down to 1e-4, losses up to 1e4, in the dtypes training runs in: ℓ/τ reaches 1e8, far past exp's range."""
    values = [1e4, 3.0, 9999.0, 0.0, 1e4, 0.5]
    losses = torch.tensor(values, dtype=dtype, requires_grad=True)
    out = KLReweighter(tau=tau)(ScoredPairs(losses=losses))
    (weights,) = torch.autograd.grad(out.loss, losses)  # d(Σ w·ℓ)/dℓ = w: the weights themselves
    assert torch.isfinite(weights).all() and (weights >= 0).all()
    assert weights.double().sum().item() == pytest.approx(1.0, abs=1e-2 if dtype == torch.bfloat16 else 1e-6)
    if tau <= 1e-2:  # the worst case puts (almost) all mass on the largest loss(es), as the dtype rounds them
        top = losses.detach() == losses.detach().max()
        assert weights[top].double().sum().item() == pytest.approx(1.0, abs=1e-2)
    assert all(torch.isfinite(v) for v in out.metrics.values())

    clamped = KLReweighter(tau=tau, normalize=False, clamp_max=10.0)(ScoredPairs(losses=losses))
    (raw,) = torch.autograd.grad(clamped.loss, losses)
    assert torch.isfinite(raw).all() and (raw * len(values) <= 10.0 * 1.01).all()
    assert all(torch.isfinite(v) for v in clamped.metrics.values())
