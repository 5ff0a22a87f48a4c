"""Per-pair score margins: what a pair's label would be under *any* mixture, not only the one that labelled it.

A DataModule that knows each completion's K attribute scores (the attribute world, scored completions) hands every
training pair the K differences Δ_k = s_k(chosen) − s_k(rejected), in the space its mixtures combine: raw scores for a
convex mixture (r(α) = Σ α_k s_k, so r_α(chosen) − r_α(rejected) = α·Δ) and log scores for a geometric one
(r(α) = Π s_k^α_k, so log r_α(chosen) − log r_α(rejected) = α·Δ). The column is ``score_margins`` (a list of K floats
per pair, a (B, K) tensor in ``ScoredPairs.columns``); :class:`MixtureSpace` says what the K entries are and which
mixture labelled the training pairs, so a strategy (:class:`~rdpo_lightning.robust.MixtureDRO`) can build mixtures
around it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rdpo_lightning.mixtures import SCORE_MARGINS, MixtureSpace, equal_scores  # noqa: F401 (the leaf both read)


def score_margins(chosen: np.ndarray, rejected: np.ndarray, kind: str) -> list[float]:
    """Δ = s(chosen) − s(rejected) (convex) or log s(chosen) − log s(rejected) (geometric), as a list of K floats;
    exactly 0 where the two scores are equal up to rounding (:func:`~rdpo_lightning.mixtures.equal_scores`), so that
    a score two completions share carries no preference of rounding's sign into any mixture.

    A geometric margin of a score ≤ 0 is not a number (−inf, or NaN for two zeros): the strategy that weighs that
    attribute refuses it with a line naming the column, and one that does not weigh it never reads it."""
    chosen, rejected = np.asarray(chosen, dtype=np.float64), np.asarray(rejected, dtype=np.float64)
    if kind == "geometric":
        with np.errstate(divide="ignore", invalid="ignore"):
            margins = np.log(np.where(chosen > 0, chosen, np.nan)) - np.log(np.where(rejected > 0, rejected, np.nan))
    else:
        margins = chosen - rejected
    margins = np.where(np.isfinite(margins) & equal_scores(chosen, rejected), 0.0, margins)
    return [float(m) for m in margins]


def mixed_margin(margins: Sequence[float], weights: Sequence[float]) -> tuple[float, float]:
    """(α·Δ, Σ_k α_k·|Δ_k|) over the attributes α weighs (a margin α does not weigh may be NaN): what
    :func:`~rdpo_lightning.mixtures.tied` reads."""
    margins, weights = np.asarray(margins, dtype=np.float64), np.asarray(weights, dtype=np.float64)
    weighed = weights > 0
    return float(margins[weighed] @ weights[weighed]), float(np.abs(margins[weighed]) @ weights[weighed])


def attribute_pair(
    attributes: Sequence[str], attribute_a: str | None, attribute_b: str | None
) -> tuple[int, int] | None:
    """The indices of ``attribute_a`` and ``attribute_b`` (already checked by the mixture grid), or None."""
    if attribute_a is None or attribute_b is None:
        return None
    names = list(attributes)
    return names.index(attribute_a), names.index(attribute_b)
