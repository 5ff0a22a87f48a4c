"""From the policy's k scored completions per prompt to preference pairs, under the training mixture α₀.

The pair's order (chosen, rejected) is decided by r(α₀) = α₀ · s; every pair also carries its K attribute margins
(``score_margins``), so a mixture strategy relabels it at any other mixture, exactly as it does offline data.

* ``best_vs_worst``: the completion with the highest r(α₀) against the lowest (TRL's online DPO rule; the first of
  equals), one pair per prompt;
* ``all_pairs``: every two completions of a prompt, k(k − 1)/2 pairs;
* ``random``: two completions drawn at random per prompt (from the round's generator), ordered by r(α₀).

A pair whose r(α₀) ties (the rule MixtureDRO applies, :func:`~rdpo_lightning.mixtures.tied`) is dropped and counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rdpo_lightning.checks import check_choice
from rdpo_lightning.data.pairing import PromptCompletions
from rdpo_lightning.data.score_margins import SCORE_MARGINS, mixed_margin, score_margins
from rdpo_lightning.mixtures import Mixture, equal_scores, tied

ONLINE_PAIRINGS = ("best_vs_worst", "all_pairs", "random")


def check_online_pairing(pairing: str, key: str = "data.online.pairing") -> None:
    check_choice(key, pairing, ONLINE_PAIRINGS)


def pairs_per_prompt(pairing: str, completions: int) -> int:
    """The most pairs one prompt gives (fewer where completions tie)."""
    return completions * (completions - 1) // 2 if pairing == "all_pairs" else 1


@dataclass
class OnlinePairs:
    """Rows in the offline schema (prompt, chosen, rejected, group, score_margins), which completions each row pairs
    ((prompt index, chosen index, rejected index) into ``groups``), and the ties dropped."""

    rows: dict[str, list]
    tied: int
    picks: list[tuple[int, int, int]]

    def __len__(self) -> int:
        return len(self.rows["prompt"])


def _candidates(pairing: str, k: int, rng: np.random.Generator) -> list[tuple[int, int]] | None:
    """The completion pairs a prompt's pairing compares (None: best against worst)."""
    if pairing == "all_pairs":
        return [(a, b) for a in range(k) for b in range(a + 1, k)]
    if pairing == "random":
        a, b = rng.choice(k, 2, replace=False)
        return [(int(a), int(b))]
    return None


def online_pairs(
    groups: Sequence[PromptCompletions], alpha0: Mixture, pairing: str, rng: np.random.Generator
) -> OnlinePairs:
    """The pairs of ``groups`` under ``alpha0`` by the rule ``pairing``; ties dropped and counted."""
    check_online_pairing(pairing)
    rows: dict[str, list] = {"prompt": [], "chosen": [], "rejected": [], "group": [], SCORE_MARGINS: []}
    ties = 0
    picks: list[tuple[int, int, int]] = []
    for index, group in enumerate(groups):
        reward = alpha0.combine(group.scores)
        candidates = _candidates(pairing, len(group.responses), rng)
        if candidates is None:  # the first of the best and of the worst (equal up to rounding: the same score)
            best = int(np.flatnonzero(equal_scores(reward, reward.max()))[0])
            worst = int(np.flatnonzero(equal_scores(reward, reward.min()))[0])
            candidates = [(best, worst)]
        for a, b in candidates:
            chosen, rejected = (a, b) if reward[a] >= reward[b] else (b, a)
            margins = score_margins(group.scores[chosen], group.scores[rejected], alpha0.kind)
            if chosen == rejected or tied(*mixed_margin(margins, alpha0.weights)):
                ties += 1
                continue
            rows["prompt"].append(group.prompt)
            rows["chosen"].append(group.responses[chosen])
            rows["rejected"].append(group.responses[rejected])
            rows["group"].append(0)
            rows[SCORE_MARGINS].append(margins)
            picks.append((index, chosen, rejected))
    return OnlinePairs(rows, ties, picks)
