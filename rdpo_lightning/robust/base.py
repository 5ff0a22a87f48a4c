"""The robust-strategy interface: turn per-pair losses into the objective to optimise.

The module never asks *which* robust method it runs. It hands :class:`ScoredPairs` to its :class:`RobustLoss` and
gets back the scalar to back-propagate and the numbers worth logging. Strategies that must drive the backward passes
themselves (WDPO without double backward) set ``automatic_optimization = False`` and implement :meth:`manual_step`;
what a strategy cannot run with (sharded parameters, the module's own accumulation) it says itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from rdpo_lightning.double_backward import double_backward
from rdpo_lightning.pair_scores import PairScores


def local_gather(tensor: Tensor) -> Tensor:
    """The single-process stand-in for an all-gather across data-parallel ranks."""
    return tensor.detach()


@dataclass
class ScoredPairs:
    """What a strategy sees of one (per-rank) training batch once the policy has scored it.

    ``losses``: per-pair losses (B,), differentiable. ``scores``: the policy and reference log-probs behind them and
    the response lengths (None only where a caller builds losses by hand, e.g. in tests). ``columns``: extra per-pair
    columns of the data, by name (``"group"``: an int group id per pair). ``embeddings``: the input-embedding output
    z (2B, T, D) the losses were computed from (rows 0..B-1 chosen, B..2B-1 rejected), captured only when the
    strategy asks. ``gather``: detached all-gather over data-parallel ranks returning a flat (world_size·B,) tensor;
    ``world_size``: how many ranks DDP averages gradients over. ``reversed_losses``: the pair losses of the opposite
    label (rejected preferred), differentiable, computed only for a strategy that sets ``needs_reversed_losses``.
    """

    losses: Tensor
    scores: PairScores | None = None
    columns: dict[str, Tensor] = field(default_factory=dict)
    embeddings: Tensor | None = None
    gather: Callable[[Tensor], Tensor] = local_gather
    world_size: int = 1
    reversed_losses: Tensor | None = None

    def loss_vectors(self) -> list[Tensor]:
        """The differentiable per-pair vectors the objective is a function of: ``losses``, then ``reversed_losses``
        when present (what the accumulation's scored route differentiates the objective by)."""
        return [self.losses] if self.reversed_losses is None else [self.losses, self.reversed_losses]

    @property
    def groups(self) -> Tensor | None:
        """The ``group`` column, if the data has one."""
        return self.columns.get("group")


#: the former name of :class:`ScoredPairs`
PairBatch = ScoredPairs


@dataclass
class RobustOutput:
    """``loss``: the per-rank scalar to back-propagate (scaled so DDP's gradient average gives the global objective);
    ``metrics``: detached scalars, logged as ``train/robust/<name>``."""

    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


ForwardFn = Callable[[Tensor | None], ScoredPairs]
BackwardFn = Callable[[Tensor], None]


class RobustLoss(nn.Module):
    """Base class of the robust strategies (``NoRobust``, ``KLReweighter``, ``WassersteinPenalty``, ...)."""

    #: capture the input-embedding output z for this strategy
    needs_embeddings: bool = False
    #: have the module compute ``ScoredPairs.reversed_losses`` (the pair loss with each pair's order reversed)
    needs_reversed_losses: bool = False
    #: False when the strategy runs its own backward passes through :meth:`manual_step`
    automatic_optimization: bool = True
    #: how the objective is formed over an accumulation window (:mod:`rdpo_lightning.training.accumulation`):
    #: ``"additive"`` (a mean over pairs: each micro-batch's own objective times its pair share), ``"softmax"``
    #: (gradient Σ softmax(softmax_scale·ℓ)_i ∇ℓ_i: one pass under a running log-sum-exp), or ``"scored"`` (any function
    #: of the pair losses: a scoring pass without gradients, then the gradient pass)
    accumulation: str = "scored"
    #: s in softmax(s·ℓ), for ``accumulation = "softmax"``
    softmax_scale: float = 1.0

    def forward(self, batch: ScoredPairs) -> RobustOutput:
        raise NotImplementedError

    def setup_data(self, datamodule: object | None) -> None:
        """Read what the strategy needs from the fit's DataModule (None when the fit has none), before training;
        raise :class:`~rdpo_lightning.errors.InputError` naming what is missing. Default: nothing."""

    def uncertainty_set(self, full: bool = False) -> str | None:
        """The set of distributions the strategy takes its worst case over, in words, once :meth:`setup_data` has run:
        one line (logged when the fit starts), or with ``full`` every member (``rdpo fit --print_set``); None for a
        strategy whose set is not a list to show (a KL or Wasserstein ball over the batch). Default: None."""
        return None

    def forward_context(self) -> contextlib.AbstractContextManager:
        """A context the policy's training forward runs in (e.g. the math attention path for double backward)."""
        return contextlib.nullcontext()

    def manual_step(self, forward: ForwardFn, backward: BackwardFn) -> tuple[ScoredPairs, RobustOutput]:
        """Run forward(s) and backward(s) for one step; ``forward(shift)`` adds ``shift`` to z before the model."""
        raise NotImplementedError(f"{type(self).__name__} uses automatic optimisation")

    def sharding_refusal(self) -> str | None:
        """Why this strategy, as configured, cannot run with sharded parameters (FSDP), or None if it can."""
        return None

    def accumulation_refusal(self, accumulate_grad_batches: int) -> str | None:
        """Why ``model.accumulate_grad_batches`` cannot be used with this strategy, or None if it can (every
        shipped strategy can)."""
        return None

    def degeneracy(self, pairs: int) -> str | None:
        """What is lost when the objective is formed over ``pairs`` pairs per optimizer step (all ranks), or None.

        A reweighting over one pair is uniform: the objective is then DPO's."""
        if self.accumulation != "additive" and pairs < 2:
            return f"{type(self).__name__} weighs {pairs} pair per optimizer step: its weights are uniform (DPO)"
        return None


def global_softmax_weights(losses: Tensor, gather: Callable[[Tensor], Tensor], temperature: float) -> Tensor:
    """Detached softmax(ℓ/temperature) weights of the *local* pairs, normalised over the *global* batch.

    Every rank sees the same gathered losses and so the same normaliser; each weights only its own pairs. The
    exponents are (ℓ_i − ℓ*)/temperature, ℓ* the global loss that maximises ℓ/temperature (the largest loss for a
    positive temperature, the smallest for a negative one), taken in float64 *before* dividing: every exponent is then
    ≤ 0, the largest exactly 0, and the normaliser lies in [1, n], so the weights sum to 1 to float64 rounding for any
    temperature. Dividing first loses the differences: at ℓ/τ ≈ 1e16 (ℓ = 1e4, τ = 1e-12) a float64 keeps no fraction,
    a log-sum-exp rounds log(number of maxima) away, and the weights summed to 2 for two tied maxima.
    """
    local = losses.detach().double()
    global_losses = gather(losses.detach()).double()
    anchor = global_losses.max() if temperature > 0 else global_losses.min()
    normaliser = torch.exp((global_losses - anchor) / temperature).sum()
    return (torch.exp((local - anchor) / temperature) / normaliser).to(losses.dtype)


def effective_sample_fraction(weights: Tensor) -> Tensor:
    """Kish's effective sample size (Σw)²/Σw², as a fraction of the number of weights (1 = uniform)."""
    weights = weights.double()
    return (weights.sum() ** 2 / (weights.pow(2).sum() * weights.numel())).float()


@contextlib.contextmanager
def math_attention() -> Iterator[None]:
    """The forward context of a double backward: PyTorch's math SDPA path (flash / memory-efficient kernels have no
    double backward), and the output layer's checkpointed path (:mod:`rdpo_lightning.double_backward`)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH), double_backward():
        yield
