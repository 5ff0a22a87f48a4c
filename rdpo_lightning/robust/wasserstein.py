"""WDPO: the worst case over a Wasserstein ball ≈ mean ℓ + ρ·E‖∇_z ℓ‖², z the input embeddings.

Two ways to get the penalty's parameter gradient:

* ``exact``: ``autograd.grad(..., create_graph=True)`` then one backward through the graph of the gradient (double
  backward). Exact on one device and under DDP; breaks under FSDP, and needs the math attention path.
* ``finite_difference``: no double backward. With g = ∇_z ℓ detached, ∇_θ ρ‖g‖² = 2ρ·(∂²ℓ/∂θ∂z)·g
  ≈ (2ρ/ε)·(∇_θ ℓ(z+εg) − ∇_θ ℓ(z)), so the objective's gradient is (1−c)·∇_θ ℓ(z) + c·∇_θ ℓ(z+εg), c = 2ρ/ε.
  The default ε = 2ρ gives c = 1: the adversarial form ∇_θ ℓ(z + 2ρg), one gradient w.r.t. z alone plus one
  ordinary forward/backward. A small ε is closer to the exact gradient but cancels badly in float32: use it in
  float64 checks, and the default in training. This is the mode that works under FSDP.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from rdpo_lightning.checks import check_choice, check_non_negative, check_positive
from rdpo_lightning.robust.base import (
    BackwardFn,
    ForwardFn,
    RobustLoss,
    RobustOutput,
    ScoredPairs,
    math_attention,
)

MODES = ("exact", "finite_difference")
FORMS = ("squared", "norm")


def pair_gradient_sq_norms(grad_z: Tensor) -> Tensor:
    """‖∇_z ℓ_i‖² per pair, summed over its chosen row i and rejected row B+i: (2B, ...) → (B,), in float64.

    A float32 sum of squares overflows once ‖g‖ passes ~1.8e19; here each row is divided by its largest |entry|
    first and the scale is put back in float64, so any finite g gives a finite norm (differentiably: the scale is a
    detached constant, and ‖g‖² = s²·‖g/s‖² for any s > 0).
    """
    rows = grad_z.flatten(1)
    if rows.dtype == torch.float64:
        per_row = rows.pow(2).sum(1)
    else:
        scale = rows.detach().abs().amax(1, keepdim=True).clamp(min=torch.finfo(rows.dtype).tiny)
        per_row = (rows / scale).pow(2).sum(1).double() * scale.squeeze(1).double().pow(2)
    half = per_row.shape[0] // 2
    return per_row[:half] + per_row[half:]


class WassersteinPenalty(RobustLoss):
    """Wasserstein-ball DRO (WDPO) as a gradient penalty on the input embeddings.

    ``form="squared"`` (default; the authors' public code): ρ·mean_i ‖∇_z ℓ_i‖². ``form="norm"`` (the paper's text):
    ρ·mean_i ‖∇_z ℓ_i‖. ``epsilon`` is the finite-difference step (default 2ρ for ``squared``, ρ for ``norm``, i.e.
    the one-extra-pass adversarial form). ``max_grad_norm`` M (``squared`` form; ``None``: no clamp) bounds each
    pair's pull so one exploding pair cannot blow up the step: with s_i = min(1, M/‖g_i‖) held constant, the
    objective's penalty term is ρ·mean_i s_i·‖g_i‖² (= ρ·M·‖g_i‖ for a clamped pair). ``finite_difference`` mode
    follows it by clamping the perturbation direction to s_i·g_i; ``exact`` mode differentiates it directly. The
    norm form needs no clamp (its direction g/‖g‖ has unit norm). Norms are taken in float64, so a float32 gradient
    cannot overflow them; a penalty that still overflows float32 makes the loss non-finite, which the module's
    ``on_nonfinite`` guard turns into a stop or a skipped step.
    """

    needs_embeddings = True
    accumulation = "additive"  # mean loss + ρ·mean penalty: both means over pairs

    def __init__(
        self,
        rho: float = 0.01,
        mode: str = "finite_difference",
        form: str = "squared",
        epsilon: float | None = None,
        max_grad_norm: float | None = None,
    ) -> None:
        super().__init__()
        check_non_negative("rho", rho)
        check_choice("mode", mode, MODES)
        check_choice("form", form, FORMS)
        if epsilon is not None:
            check_positive("epsilon", epsilon)
        if max_grad_norm is not None:
            check_positive("max_grad_norm", max_grad_norm)
            if form != "squared":
                raise ValueError("max_grad_norm applies to form='squared' only (the norm form's direction has norm 1)")
        self.rho = float(rho)
        self.mode = mode
        self.form = form
        self.epsilon = epsilon
        self.max_grad_norm = max_grad_norm
        self.automatic_optimization = mode == "exact" or self.rho == 0

    def forward_context(self) -> contextlib.AbstractContextManager:
        return math_attention() if self.mode == "exact" else contextlib.nullcontext()

    def sharding_refusal(self) -> str | None:
        if self.mode != "exact" or self.rho == 0:
            return None
        return (
            "model.robust.mode='exact' cannot run under FSDP (FSDPStrategy / ModelParallelStrategy): the exact penalty"
            " differentiates through autograd.grad(create_graph=True) (double backward), which sharded parameters do"
            " not support: it crashes ('setStorage ... out of bounds') or silently drops the gradients of nested units."
            " Use mode: finite_difference (same objective, two ordinary backward passes, no double backward), or keep"
            " mode: exact with strategy: ddp."
        )

    def _clamp_factor(self, sq_norms: Tensor) -> Tensor | None:
        """s_i = min(1, M/‖g_i‖), detached; None when there is no clamp (or the form needs none)."""
        if self.max_grad_norm is None or self.form != "squared":
            return None
        return (self.max_grad_norm / sq_norms.detach().sqrt().clamp(min=1e-300)).clamp(max=1.0)

    def _penalty(self, sq_norms: Tensor, dtype: torch.dtype) -> Tensor:
        """ρ·mean of the per-pair penalty, computed in float64 and returned in the loss dtype."""
        if self.form == "norm":
            per_pair = (sq_norms + 1e-30).sqrt()
        else:
            factor = self._clamp_factor(sq_norms)
            if factor is None:
                per_pair = sq_norms
            else:  # (s·‖g‖)·‖g‖, not s·‖g‖²: the first factor is at most M, so a clamped pair stays finite; the
                # clamp keeps sqrt's derivative finite for a pair whose gradient is exactly zero
                norms = sq_norms.clamp(min=1e-300).sqrt()
                per_pair = (factor * norms) * norms
        return (self.rho * per_pair.mean()).to(dtype)

    def forward(self, batch: ScoredPairs) -> RobustOutput:
        """Exact mode: penalty with create_graph, optimised by one ordinary backward of the returned loss."""
        mean_loss = batch.losses.mean()
        if self.rho == 0:
            return RobustOutput(loss=mean_loss, metrics={"penalty": mean_loss.new_zeros(())})
        if batch.embeddings is None:
            raise RuntimeError("WassersteinPenalty needs the input embeddings; the module did not capture them")
        (grad_z,) = torch.autograd.grad(batch.losses.sum(), batch.embeddings, create_graph=True)
        penalty = self._penalty(pair_gradient_sq_norms(grad_z), mean_loss.dtype)
        return RobustOutput(loss=mean_loss + penalty, metrics={"penalty": penalty.detach()})

    def _step_size(self) -> float:
        if self.epsilon is not None:
            return self.epsilon
        return 2 * self.rho if self.form == "squared" else self.rho

    def manual_step(self, forward: ForwardFn, backward: BackwardFn) -> tuple[ScoredPairs, RobustOutput]:
        """Finite-difference mode: gradient w.r.t. z alone, then one or two ordinary backward passes."""
        epsilon = self._step_size()
        weight = (2 * self.rho if self.form == "squared" else self.rho) / epsilon  # c in the module docstring
        first = forward(None)
        if first.embeddings is None:
            raise RuntimeError("WassersteinPenalty needs the input embeddings; the module did not capture them")
        mean_loss = first.losses.mean()
        (grad_z,) = torch.autograd.grad(first.losses.sum(), first.embeddings, retain_graph=weight != 1)
        grad_z = grad_z.detach()
        sq_norms = pair_gradient_sq_norms(grad_z)
        direction = self._direction(grad_z, sq_norms)
        if weight != 1:
            backward((1 - weight) * mean_loss)
        del first.embeddings
        second = forward(epsilon * direction)
        backward(weight * second.losses.mean())
        penalty = self._penalty(sq_norms, mean_loss.dtype)
        metrics = {"penalty": penalty, "perturbed_loss": second.losses.detach().mean()}
        return first, RobustOutput(loss=mean_loss.detach() + penalty, metrics=metrics)

    def _direction(self, grad_z: Tensor, sq_norms: Tensor) -> Tensor:
        """Per-row perturbation direction: g itself (squared form) or g/‖g_i‖ (norm form), optionally clamped."""
        shape = (-1,) + (1,) * (grad_z.dim() - 1)
        if self.form == "norm":
            scale = 1 / sq_norms.sqrt().clamp(min=1e-30)
        else:
            scale = self._clamp_factor(sq_norms)
            if scale is None:
                return grad_z
        return grad_z * torch.cat([scale, scale]).view(shape).to(grad_z.dtype)
