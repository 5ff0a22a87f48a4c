"""Gradient accumulation with the robust objective formed over the optimizer's batch, not per micro-batch.

A robust objective weighs pairs against each other, so it is only as robust as the set of pairs it sees. Under
Lightning's own accumulation each micro-batch's objective is formed alone and the micro-batches are averaged: at one
pair per micro-batch every reweighting is uniform, i.e. DPO. Here the module (manual optimisation) collects a rank's
``model.accumulate_grad_batches`` micro-batches as the loader yields them (token ids only, no activations), and at the
window's last micro-batch runs one of three exact routes, chosen by the strategy's ``accumulation`` attribute:

* ``additive`` (:class:`~rdpo_lightning.robust.NoRobust`, :class:`~rdpo_lightning.robust.WassersteinPenalty`): the
  objective is a mean over pairs, so each micro-batch's own objective counts its pair share n_k/n. One pass.
* ``softmax`` (KL normalised, Dr. DPO): the gradient is Σ softmax(s·ℓ)_i ∇ℓ_i over the window's gathered losses.
  One forward+backward per micro-batch accumulates the unnormalised Σ exp(s·ℓ_i − m)·∇ℓ_i under a running maximum m of
  the *gathered* s·ℓ (every rank agrees), rescales the accumulated gradients by exp(m_old − m) when m grows, and
  divides by the running total at the end. One pass.
* ``scored`` (the default; KL's clamped form, CVaR, χ², Group DRO, any strategy whose objective is a function of the
  pair losses): a scoring pass without gradients gives the window's losses; the strategy forms its objective over
  them once (Group DRO updates its weights once), and c_i = ∂objective/∂ℓ_i (autograd on that small graph, so no
  strategy restates its weights); a gradient pass then back-propagates Σ c_i ℓ_i per micro-batch, which sums to the
  chain rule's Σ c_i ∇ℓ_i. Two forwards, one backward per micro-batch. A strategy that also reads the reversed-order
  losses ℓ'_i (``needs_reversed_losses``: MixtureDRO) gets c'_i = ∂objective/∂ℓ'_i the same way, and Σ c'_i ℓ'_i joins
  the gradient pass.

Reference log-probs are taken once per micro-batch (the batch's cached columns, or the reference forward) and shared
by both passes; every forward of a micro-batch is preceded by its own per-batch seed
(:func:`~rdpo_lightning.training.reproducibility.seed_training_batch`), so both passes draw the same dropout masks and a
resumed fit draws what an uninterrupted one did. A Mixture-of-Experts router's load-balancing term
(:mod:`rdpo_lightning.models.router_aux`) is additive per forward: it enters each micro-batch's gradient backward times
the micro-batch's pair share. The ``softmax`` route rescales what it has accumulated, which would rescale that term too,
so with the term on it runs as ``scored`` (exact, one more forward per micro-batch).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from rdpo_lightning.batch_layout import PACK_INDEX
from rdpo_lightning.models.router_aux import RouterAuxOnce
from rdpo_lightning.pair_scores import PairLogps, PairScores
from rdpo_lightning.robust.base import RobustLoss, RobustOutput, ScoredPairs

ROUTES = ("additive", "softmax", "scored")
SCOPES = ("optimizer_batch", "micro_batch")


@dataclass
class MicroBatch:
    """One micro-batch of the window: its loader index (its seed) and the collated batch."""

    index: int
    batch: dict[str, Any]

    @property
    def pairs(self) -> int:
        ids = self.batch[PACK_INDEX] if PACK_INDEX in self.batch else self.batch["input_ids"]
        return ids.shape[0] // 2


class AccumulationWindow:
    """Collects a rank's micro-batches until the optimizer batch is complete (``size`` of them, or the epoch ends),
    and keeps Lightning's logging step counting optimizer steps meanwhile."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._pending: list[MicroBatch] = []
        self._joined = False  # the last loader batch only joined the window (no optimizer step)

    def add(self, index: int, batch: dict[str, Any], last: bool) -> list[MicroBatch] | None:
        """The whole window when ``batch`` completes it, else None."""
        self._pending.append(MicroBatch(index, batch))
        self._joined = len(self._pending) < self.size and not last
        if self._joined:
            return None
        window, self._pending = self._pending, []
        return window

    def __len__(self) -> int:
        return len(self._pending)

    def before_batch(self, trainer: Any) -> None:
        """At each training batch's start: a previous batch that only joined the window did not step."""
        if self._joined:
            hold_logging_step(trainer)
            self._joined = False

    def warn_if_open(self) -> None:
        """A checkpoint written inside a window resumes at the next micro-batch, without the window's first ones."""
        if self._pending:
            rank_zero_warn(
                f"a checkpoint is written inside an accumulation window ({len(self)} of {self.size} micro-batches"
                " seen): a fit resumed from it starts the next window at the next micro-batch, without these;"
                " checkpoint after optimizer steps (ModelCheckpoint every_n_train_steps)"
            )


def optimized_parameters(optimizer: Any) -> list[Tensor]:
    """The parameters an optimizer (or Lightning's wrapper of one) steps."""
    return [param for group in getattr(optimizer, "optimizer", optimizer).param_groups for param in group["params"]]


def scale_gradients(parameters: list[Tensor], factor: float) -> None:
    """Multiply the accumulated gradients of ``parameters`` by ``factor`` (the softmax route's rescaling).

    Pass the optimizer's parameters (:func:`optimized_parameters`), not the module's: between its forward and backward
    an FSDP2 root module shows its unsharded parameters (no ``.grad``), while the gradients accumulated so far stay on
    the sharded parameters the optimizer holds."""
    for param in parameters:
        if param.grad is not None:
            param.grad.mul_(factor)


@dataclass
class WindowPasses:
    """What a route needs of the module: ``reference(batch)``, ``forward(batch, reference, capture, shift)`` (the
    policy's scored pairs), ``seed(index)``, ``backward(loss)``, ``scale_gradients(factor)``, and the data-parallel
    ``gather`` / ``world_size`` the strategies use; ``router_aux_coef``: the weight of the policy's router
    load-balancing loss (0: none)."""

    reference: Callable[[dict[str, Any]], PairLogps]
    forward: Callable[..., ScoredPairs]
    seed: Callable[[int], None]
    backward: Callable[[Tensor], None]
    scale_gradients: Callable[[float], None]
    gather: Callable[[Tensor], Tensor]
    world_size: int
    router_aux_coef: float = 0.0

    def router_term(self, pairs: ScoredPairs, share: float, seen: list[Tensor]) -> Tensor | float:
        """``share`` × coef × the forward's router loss (0 without one); the loss is kept in ``seen`` for logging."""
        aux = pairs.scores.router_aux_loss if pairs.scores is not None else None
        if aux is None or self.router_aux_coef == 0:
            return 0.0
        seen.append(share * aux.detach())
        return share * self.router_aux_coef * aux


@dataclass
class WindowResult:
    """The window's pairs (detached, in loader order: what ``train/*`` describes) and its objective and metrics."""

    pairs: ScoredPairs
    output: RobustOutput
    parts: list[ScoredPairs] = field(default_factory=list, repr=False)
    router_aux: Tensor | None = None  # the router load-balancing loss, pair-share weighted over the window


def _share_sum(seen: list[Tensor]) -> Tensor | None:
    return torch.stack(seen).sum() if seen else None


def route_of(robust: RobustLoss, scope: str) -> str:
    """The strategy's route; every strategy is ``additive`` (its own objective per micro-batch) under the explicit
    ``micro_batch`` scope."""
    return "additive" if scope == "micro_batch" else robust.accumulation


def run_window(window: list[MicroBatch], robust: RobustLoss, passes: WindowPasses, scope: str) -> WindowResult:
    """Forward and backward the whole window (gradients accumulate into ``.grad``; the caller zeroes and steps)."""
    route = route_of(robust, scope)
    if route == "softmax" and passes.router_aux_coef != 0:
        route = "scored"  # its rescaling would rescale the router term's gradient too
    if route not in ROUTES:
        raise ValueError(f"{type(robust).__name__}.accumulation must be one of {ROUTES}, got {route!r}")
    references = []
    for micro in window:
        passes.seed(micro.index)
        references.append(passes.reference(micro.batch))
    if route == "additive":
        return _additive(window, references, robust, passes)
    if route == "softmax":
        return _softmax(window, references, robust, passes)
    return _scored(window, references, robust, passes)


def _additive(window, references, robust: RobustLoss, passes: WindowPasses) -> WindowResult:
    total = sum(micro.pairs for micro in window)
    parts, value, metrics, seen = [], 0.0, {}, []
    for micro, reference in zip(window, references, strict=True):
        share = micro.pairs / total
        passes.seed(micro.index)
        if robust.automatic_optimization:
            pairs = passes.forward(micro.batch, reference, capture=robust.needs_embeddings)
            output = robust(pairs)
            passes.backward(share * output.loss + passes.router_term(pairs, share, seen))
        else:
            router = RouterAuxOnce(passes.router_aux_coef)

            def forward(shift: Tensor | None, batch=micro.batch, reference=reference, router=router) -> ScoredPairs:
                pairs = passes.forward(batch, reference, capture=shift is None, shift=shift)
                router.seen(pairs.scores.router_aux_loss if pairs.scores is not None else None)
                return pairs

            def backward(loss: Tensor, share=share, router=router) -> None:
                passes.backward(share * router.added_to(loss))

            pairs, output = robust.manual_step(forward, backward)
            if router.added is not None and passes.router_aux_coef != 0:
                seen.append(share * router.added.detach())
        parts.append(detached(pairs))
        value = value + share * output.loss.detach()
        for name, metric in output.metrics.items():
            metrics[name] = metrics.get(name, 0.0) + share * metric.detach()
    output = RobustOutput(loss=value, metrics=metrics)
    return WindowResult(concatenate(parts, passes), output, parts, _share_sum(seen))


def _softmax(window, references, robust: RobustLoss, passes: WindowPasses) -> WindowResult:
    scale = robust.softmax_scale
    anchor, total, parts = None, None, []
    for micro, reference in zip(window, references, strict=True):
        passes.seed(micro.index)
        pairs = passes.forward(micro.batch, reference)
        losses = pairs.losses
        exponents = scale * passes.gather(losses).double()
        top = exponents.max()
        if anchor is None:
            anchor, total = top, torch.zeros((), dtype=torch.float64, device=top.device)
        elif top > anchor:  # the running maximum grows: bring what is accumulated to the new anchor
            factor = torch.exp(anchor - top)
            passes.scale_gradients(float(factor))
            total, anchor = total * factor, top
        total = total + torch.exp(exponents - anchor).sum()
        weights = torch.exp(scale * losses.detach().double() - anchor).to(losses.dtype)
        passes.backward(passes.world_size * (weights * losses).sum())
        parts.append(detached(pairs))
    passes.scale_gradients(float(1.0 / total))
    pairs = concatenate(parts, passes)
    return WindowResult(pairs, robust(pairs), parts)  # value and metrics over the window (detached losses)


def _scored(window, references, robust: RobustLoss, passes: WindowPasses) -> WindowResult:
    if robust.needs_embeddings:
        raise ValueError(f"{type(robust).__name__} needs embeddings: its accumulation must be 'additive'")
    parts = []
    with torch.no_grad():
        for micro, reference in zip(window, references, strict=True):
            passes.seed(micro.index)
            parts.append(detached(passes.forward(micro.batch, reference)))
    scored = concatenate(parts, passes)
    vectors = scored.loss_vectors()  # the losses, and the reversed-order losses of a strategy that reads them
    for vector in vectors:
        vector.requires_grad_(True)
    with torch.enable_grad():
        output = robust(scored)
        grads = torch.autograd.grad(output.loss, vectors, allow_unused=True)
    coefficients = [torch.zeros_like(v) if g is None else g for v, g in zip(vectors, grads, strict=True)]
    for vector in vectors:
        vector.requires_grad_(False)
    offset, total, seen = 0, sum(micro.pairs for micro in window), []
    for micro, reference in zip(window, references, strict=True):
        passes.seed(micro.index)
        pairs = passes.forward(micro.batch, reference)
        size = pairs.losses.shape[0]
        surrogate = sum(
            (c[offset : offset + size].to(v.dtype) * v).sum()
            for c, v in zip(coefficients, pairs.loss_vectors(), strict=True)
        )
        passes.backward(surrogate + passes.router_term(pairs, micro.pairs / total, seen))
        offset += size
    output = RobustOutput(loss=output.loss.detach(), metrics={k: v.detach() for k, v in output.metrics.items()})
    return WindowResult(scored, output, parts, _share_sum(seen))


def detached(pairs: ScoredPairs) -> ScoredPairs:
    """The numbers of a micro-batch worth keeping past its backward: losses and scores, no graph, no embeddings."""
    scores = pairs.scores
    if scores is not None:
        scores = PairScores(
            PairLogps(scores.policy.chosen.detach(), scores.policy.rejected.detach()),
            PairLogps(scores.reference.chosen.detach(), scores.reference.rejected.detach()),
            scores.chosen_tokens,
            scores.rejected_tokens,
        )
    reversed_losses = pairs.reversed_losses.detach() if pairs.reversed_losses is not None else None
    return ScoredPairs(
        losses=pairs.losses.detach(), scores=scores, columns=dict(pairs.columns), reversed_losses=reversed_losses
    )


def concatenate(parts: list[ScoredPairs], passes: WindowPasses) -> ScoredPairs:
    """The window's micro-batches as one batch of this rank's pairs, gathered like a batch in one piece."""
    scores = None
    if all(p.scores is not None for p in parts):

        def cat(get: Callable[[PairScores], Tensor]) -> Tensor:
            return torch.cat([get(p.scores) for p in parts])

        scores = PairScores(
            PairLogps(cat(lambda s: s.policy.chosen), cat(lambda s: s.policy.rejected)),
            PairLogps(cat(lambda s: s.reference.chosen), cat(lambda s: s.reference.rejected)),
            cat(lambda s: s.chosen_tokens),
            cat(lambda s: s.rejected_tokens),
        )
    columns = {name: torch.cat([p.columns[name] for p in parts]) for name in parts[0].columns}
    reversed_losses = None
    if all(p.reversed_losses is not None for p in parts):
        reversed_losses = torch.cat([p.reversed_losses for p in parts])
    return ScoredPairs(
        losses=torch.cat([p.losses for p in parts]),
        scores=scores,
        columns=columns,
        gather=passes.gather,
        world_size=passes.world_size,
        reversed_losses=reversed_losses,
    )


def optimizer_steps(trainer: Any, window: int) -> int:
    """How many optimizer steps the fit takes when ``window`` loader batches make one (the last window of an epoch
    may be shorter): what the LR schedule spans. Lightning's estimate counts loader batches under manual
    optimisation."""
    estimate = int(trainer.estimated_stepping_batches) if trainer.estimated_stepping_batches != math.inf else -1
    if window == 1:
        return max(1, estimate)
    batches = trainer.num_training_batches
    total = math.inf if batches == math.inf else math.ceil(batches / window) * max(trainer.max_epochs or 1, 1)
    if trainer.max_steps != -1:
        total = min(total, trainer.max_steps)
    return max(1, int(total)) if total != math.inf else max(1, estimate)


def trainer_accumulation_refusal(trainer_value: int, robust: RobustLoss) -> str | None:
    """Lightning's accumulation averages objectives formed per micro-batch: refused, with the key to use."""
    if trainer_value == 1:
        return None
    return (
        f"trainer.accumulate_grad_batches={trainer_value} would form {type(robust).__name__}'s objective over each"
        f" micro-batch alone and average them: set model.accumulate_grad_batches: {trainer_value} instead (and"
        " trainer.accumulate_grad_batches: 1), which forms it over the optimizer's batch (add model.objective_scope:"
        " micro_batch for the per-micro-batch objective)"
    )


def micro_batch_size(trainer: Any) -> int | None:
    """Pairs per loader batch per rank: the DataModule's ``batch_size``, else the training loader's."""
    size = getattr(getattr(trainer, "datamodule", None), "batch_size", None)
    if size is None:
        loader = getattr(trainer, "train_dataloader", None)
        sampler = getattr(loader, "batch_sampler", None)
        size = getattr(loader, "batch_size", None) or getattr(sampler, "batch_size", None)
    return size if isinstance(size, int) else None


def warn_if_degenerate(trainer: Any, robust: RobustLoss, window: int, scope: str) -> str | None:
    """One warning at start-up when the objective is formed over so few pairs that the strategy degenerates."""
    size = micro_batch_size(trainer)
    if size is None:
        return None
    pairs = size * trainer.world_size * (window if scope == "optimizer_batch" else 1)
    problem = robust.degeneracy(pairs)
    if problem is None:
        return None
    over = "optimizer batch" if scope == "optimizer_batch" else "micro-batch (model.objective_scope: micro_batch)"
    message = (
        f"{problem}. The objective is formed over the {over}: {pairs} pairs = data.batch_size {size} × devices"
        f" {trainer.world_size}"
        + (f" × model.accumulate_grad_batches {window}" if scope == "optimizer_batch" else "")
        + "; raise model.accumulate_grad_batches (or data.batch_size) to form it over more pairs"
    )
    rank_zero_warn(message)
    return message


def hold_logging_step(trainer: Any) -> None:
    """Undo Lightning's advance of its logging step for a micro-batch that only joined the window.

    Under manual optimisation Lightning advances ``_batches_that_stepped`` (the x-axis of every logged scalar, and
    what ``log_every_n_steps`` counts) after every loader batch; called at the start of the batch after one that only
    joined the window, this keeps it counting optimizer steps, as it does under Lightning's own accumulation."""
    loop = trainer.fit_loop.epoch_loop
    loop._batches_that_stepped -= 1
