"""MixtureDRO: the exact worst case over a set of preference mixtures, when the data knows every pair's attribute
scores.

The paper's shift model is a person with mixture α preferring the response with the higher r(α). With each pair's K
score margins Δ (chosen minus rejected, :mod:`rdpo_lightning.data.score_margins`) the pair's label under *any* α is
known: d_α = α·Δ. This optimises the worst α of an uncertainty set U around the training mixture α₀
(:mod:`rdpo_lightning.robust.mixture_set`) directly, rather than through KLDPO's or WDPO's surrogate balls, from the one
forward DPO needs.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from rdpo_lightning.checks import check_choice, check_int_at_least, check_non_negative, check_positive
from rdpo_lightning.errors import InputError
from rdpo_lightning.mixtures import SCORE_MARGINS, MixtureEntry, tied
from rdpo_lightning.robust.base import RobustLoss, RobustOutput, ScoredPairs
from rdpo_lightning.robust.mixture_set import FAMILIES, MixtureSet, resolve_set

AGGREGATES = ("max", "smooth", "mean")
#: attributes up to which the worst mixture's weights are logged one by one
LOGGED_ATTRIBUTES = 8


class MixtureDRO(RobustLoss):
    """max over α ∈ U of L(α), the mean pair loss with every pair labelled at α; for any pair loss.

    Per pair i with margin d_iα = α·Δ_i, the label is p_iα = 1[d_iα > 0] (``label_temperature`` null: hard; a tie
    carries no preference and gets weight w_iα = 0, else 1) or p_iα = σ(d_iα / T) (Bradley–Terry, w = 1). A tie is
    |d_iα| ≤ 10⁻¹²·Σ_k α_k·|Δ_ik|, the data's pairing's rule (:data:`~rdpo_lightning.mixtures.TIE_TOLERANCE`): a
    margin of rounding noise (10⁻¹⁷ where two completions score the same) is no preference.
    The pair's loss at α is p_iα·ℓ_i + (1 − p_iα)·ℓ'_i, ℓ_i the pair loss of the order (chosen, rejected) and ℓ'_i
    that of the reversed order, computed by the pair loss itself on the swapped scores (for DPO, IPO, hinge and cDPO
    ℓ' = ℓ(−h); RPO's NLL and SimPO's lengths then fall on the other response). L(α) = Σ_i w_iα·(loss at α) /
    Σ_i w_iα over the optimizer's whole batch (all ranks); a mixture at which every pair ties is left out.

    ``aggregate``: ``max`` (Danskin: the gradient is the worst α's; equal maxima share it equally), ``smooth``
    (τ·log mean_α exp(L(α)/τ), τ = ``temperature``: the mean over U as τ → ∞, the max as τ → 0) or ``mean`` (the
    mean over U: ordinary DPO on labels averaged over the same mixtures, the baseline that tells a robust gain from
    seeing more mixtures). With U = {α₀} and hard labels it is DPO on each pair relabelled by the sign of its margin
    at α₀: the data's own DPO only where the data's labels are hard at α₀ (not Bradley–Terry draws).

    U (:mod:`~rdpo_lightning.robust.mixture_set`): a ball of total-variation ``radius`` around the data's training
    mixture α₀ (its extreme points and a lattice of ``steps`` per radius: the set's convex hull is the ball), on the
    ``family`` ``pair`` (the data's attribute_a / attribute_b line, the default when α₀ lies on it) or ``simplex``;
    or an explicit list ``mixtures`` (number α on the pair line, K weights, or {attribute: weight}), which must hold
    α₀. The data must supply ``score_margins``
    (``AttributeWorldDataModule``, ``ScoredCompletionsDataModule``); the set is resolved from its description when the
    fit starts (:meth:`setup_data`).

    Metrics (``train/robust/*``): ``worst_alpha`` (family ``pair``: the worst mixture's α; otherwise
    ``worst_alpha/<attribute>``, its weights), ``worst_loss`` (its L), ``center_loss`` (L(α₀)), ``spread`` (max − min
    of L over U), ``flipped_fraction`` (pairs whose label at the worst α opposes α₀'s) and, with hard labels,
    ``tie_fraction`` (the share of (pair, α) left out as ties).
    """

    needs_reversed_losses = True

    def __init__(
        self,
        radius: float | None = None,
        steps: int = 4,
        family: str | None = None,
        mixtures: list[MixtureEntry] | None = None,
        label_temperature: float | None = None,
        aggregate: str = "max",
        temperature: float = 0.1,
    ) -> None:
        super().__init__()
        if radius is None and mixtures is None:
            raise ValueError("give radius (a ball around α₀) or mixtures (an explicit list of mixtures)")
        if radius is not None and mixtures is not None:
            raise ValueError(
                f"give one of radius ({radius!r}: a ball around α₀) and mixtures ({mixtures!r}: an explicit list), not"
                " both: a value an earlier -c file or flag set stays until null clears it:"
                " --model.robust.init_args.radius=null (or --model.robust.init_args.mixtures=null)"
            )
        if radius is not None:
            check_non_negative("radius", radius)
        if mixtures is not None and len(mixtures) == 0:
            raise ValueError("mixtures is empty: the set needs at least the training mixture α₀")
        check_int_at_least("steps", steps, 1)
        if family is not None:
            check_choice("family", family, FAMILIES)
        if label_temperature is not None:
            check_positive("label_temperature", label_temperature)
        check_choice("aggregate", aggregate, AGGREGATES)
        check_positive("temperature", temperature)
        self.radius = None if radius is None else float(radius)
        self.steps, self.family, self.mixtures = steps, family, mixtures
        self.label_temperature = None if label_temperature is None else float(label_temperature)
        self.aggregate, self.temperature = aggregate, float(temperature)
        self.mixture_set: MixtureSet | None = None

    def setup_data(self, datamodule: object | None) -> None:
        describe = getattr(datamodule, "mixture_space", None)
        if describe is None:
            name = type(datamodule).__name__ if datamodule is not None else "no DataModule"
            raise InputError(
                f"model.robust: MixtureDRO needs each pair's per-attribute score margins ({SCORE_MARGINS}) and the"
                f" training mixture; data ({name}) has neither: use AttributeWorldDataModule or"
                " ScoredCompletionsDataModule (completions with one score column per attribute)"
            )
        self.use_set(resolve_set(describe(), self.radius, self.steps, self.family, self.mixtures))
        train = getattr(datamodule, "train_dataset", None)
        if train is not None and SCORE_MARGINS in train.column_names:  # refuse bad scores before the first step
            try:
                margins = np.asarray(train[SCORE_MARGINS], dtype=np.float64)
            except ValueError as error:
                raise InputError(f"data: the training pairs' {SCORE_MARGINS} differ in length ({error})") from error
            self._checked(torch.from_numpy(margins))

    def use_set(self, mixture_set: MixtureSet) -> None:
        """Optimise over ``mixture_set`` (what :meth:`setup_data` resolves from the data)."""
        self.mixture_set = mixture_set

    def uncertainty_set(self, full: bool = False) -> str | None:
        if self.mixture_set is None:
            return None
        return self.mixture_set.table() if full else self.mixture_set.summary()

    def degeneracy(self, pairs: int) -> str | None:
        return None  # the worst mixture of even one pair is a worst case

    # --- the objective -----------------------------------------------------------------------------------------
    def labels(self, margins: Tensor) -> tuple[Tensor, Tensor]:
        """(p, w), each (B, A): the probability that the first response wins at each α, and each entry's weight."""
        weights = torch.as_tensor(self.mixture_set.weights, dtype=torch.float64, device=margins.device)
        weighed = weights.abs().sum(0) > 0  # attributes some mixture of the set weighs
        d = margins[:, weighed] @ weights[:, weighed].T
        if self.label_temperature is None:
            preference = ~tied(d, margins[:, weighed].abs() @ weights[:, weighed].T)  # the data's pairing's rule
            return (preference & (d > 0)).double(), preference.double()
        return torch.sigmoid(d / self.label_temperature), torch.ones_like(d)

    def _margins(self, batch: ScoredPairs) -> Tensor:
        margins = batch.columns.get(SCORE_MARGINS)
        if margins is None:
            raise InputError(
                f"model.robust: MixtureDRO needs the data's per-pair {SCORE_MARGINS} column; this batch has"
                f" {sorted(batch.columns) or 'no columns'}"
            )
        return self._checked(margins)

    def _checked(self, margins: Tensor) -> Tensor:
        """The margins (B, K) as float64, refused when their width is not the K attributes or a weighed one is not a
        number."""
        k = len(self.mixture_set.attributes)
        if margins.dim() != 2 or margins.shape[1] != k:
            raise InputError(
                f"model.robust: the batch's {SCORE_MARGINS} have shape {tuple(margins.shape)}, expected (pairs, {k}):"
                f" one per attribute ({', '.join(self.mixture_set.attributes)})"
            )
        margins = margins.double()
        weighed = torch.as_tensor(self.mixture_set.weights).abs().sum(0) > 0
        bad = ~torch.isfinite(margins[:, weighed.to(margins.device)])
        if bad.any():
            names = [a for a, w in zip(self.mixture_set.attributes, weighed.tolist(), strict=True) if w]
            column = names[int(torch.nonzero(bad)[0, 1])]
            raise InputError(
                f"data.score_columns: a pair's score margin for {column!r} is not a number (a NaN score, or a score"
                " <= 0 under a geometric data.mixture_kind); model.robust weighs that attribute, so every score in it"
                " must be finite (and > 0 for a geometric mixture)"
            )
        return margins

    def _aggregate(self, losses: Tensor, present: Tensor) -> tuple[Tensor, Tensor]:
        """(objective, its detached weights q over U) from the per-mixture losses L (A,) of the present mixtures."""
        values = losses[present]
        q = torch.zeros_like(losses)
        if self.aggregate == "max":
            top = values.max()
            q[present] = (values == top).double() / (values == top).sum()
            return top, q
        if self.aggregate == "mean":
            q[present] = 1.0 / values.numel()
            return values.mean(), q
        scaled = values / self.temperature
        q[present] = torch.softmax(scaled, dim=0)
        return self.temperature * (torch.logsumexp(scaled, dim=0) - math.log(values.numel())), q

    def forward(self, batch: ScoredPairs) -> RobustOutput:
        if self.mixture_set is None:
            raise RuntimeError("MixtureDRO has no mixtures: the fit calls setup_data(datamodule), or call use_set()")
        if batch.reversed_losses is None:
            raise RuntimeError("MixtureDRO needs ScoredPairs.reversed_losses (the module computes them when asked)")
        losses, swapped = batch.losses, batch.reversed_losses
        p, w = self.labels(self._margins(batch).to(losses.device))
        a = p.shape[1]
        first, second = losses.detach().double()[:, None], swapped.detach().double()[:, None]
        at_alpha = w * (p * first + (1 - p) * second)
        center = self.mixture_set.center
        flips = (w * w[:, center : center + 1] * ((p > 0.5) != (p[:, center : center + 1] > 0.5)).double()).sum(0)
        local = torch.cat([at_alpha.sum(0), w.sum(0), flips, losses.new_tensor([losses.shape[0]]).double()])
        totals = batch.gather(local).double().reshape(-1, 3 * a + 1).sum(0)
        sums, counts, flipped, pairs = totals[:a], totals[a : 2 * a], totals[2 * a : 3 * a], totals[-1]
        present = counts > 0
        per_mixture = torch.where(present, sums / counts.clamp(min=1), torch.full_like(sums, float("nan")))
        if not present.any():  # every pair ties at every mixture: no preference to learn from
            zero = (losses * 0).sum() + (swapped * 0).sum()
            return RobustOutput(loss=zero, metrics={"tie_fraction": torch.ones((), device=losses.device)})
        objective, q = self._aggregate(per_mixture, present)
        scale = (q / counts.clamp(min=1))[None, :] * w
        chosen_weight, swapped_weight = (scale * p).sum(1), (scale * (1 - p)).sum(1)
        surrogate = batch.world_size * (
            (chosen_weight.to(losses.dtype) * losses).sum() + (swapped_weight.to(swapped.dtype) * swapped).sum()
        )
        loss = surrogate + (objective.to(surrogate.dtype) - surrogate).detach()
        return RobustOutput(loss=loss, metrics=self._metrics(per_mixture, present, counts, flipped, pairs))

    def _metrics(self, per_mixture: Tensor, present: Tensor, counts: Tensor, flipped: Tensor, pairs: Tensor) -> dict:
        values = per_mixture.masked_fill(~present, float("-inf"))
        worst = int(torch.argmax(values))  # the first of equal maxima, in the set's order (ascending α on a line)
        found = per_mixture[present]
        center = self.mixture_set.center
        metrics = {
            "worst_loss": per_mixture[worst],
            "center_loss": per_mixture[center],
            "spread": found.max() - found.min(),
            "flipped_fraction": flipped[worst] / pairs.clamp(min=1),
        }
        if self.label_temperature is None:
            metrics["tie_fraction"] = 1 - counts.sum() / (pairs.clamp(min=1) * counts.numel())
        weights = self.mixture_set.weights[worst]
        if self.mixture_set.alpha_attribute is not None:
            metrics["worst_alpha"] = torch.tensor(weights[self.mixture_set.alpha_attribute])
        else:
            weighed = [k for k in range(len(weights)) if self.mixture_set.weights[:, k].any()]
            if len(weighed) <= LOGGED_ATTRIBUTES:
                metrics.update(
                    {f"worst_alpha/{self.mixture_set.attributes[k]}": torch.tensor(weights[k]) for k in weighed}
                )
        device = per_mixture.device
        return {name: value.float().to(device) for name, value in metrics.items()}
