"""From several scored completions per prompt to one preference pair per prompt, at a mixture α.

* ``best_vs_worst`` (the authors' code): the completion with the highest r(α) is chosen and the lowest rejected
  (the first one among equals); a prompt whose best and worst tie is skipped.
* ``bradley_terry``: one pair per prompt (the two completions when there are two, else two drawn once per prompt and
  shared by every mixture, so validation sets differ only in their labels), labelled by Bradley–Terry on r(α) with
  a temperature (None: the higher r(α) wins, ties skipped).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rdpo_lightning.checks import check_choice
from rdpo_lightning.data.mixture import Mixture, label_pairs
from rdpo_lightning.data.score_margins import SCORE_MARGINS, mixed_margin, score_margins
from rdpo_lightning.mixtures import tied

PAIRINGS = ("best_vs_worst", "bradley_terry")
TIED = "prompts whose compared completions tie at this mixture"


@dataclass
class PromptCompletions:
    """One prompt (text), its completions (text) and their (m, K) attribute scores or rewards."""

    prompt: str
    responses: list[str]
    scores: np.ndarray


def check_pairing(pairing: str) -> None:
    check_choice("data.pairing", pairing, PAIRINGS)


def compared_completions(groups: Sequence[PromptCompletions], rng: np.random.Generator) -> list[tuple[int, int]]:
    """The two completions Bradley–Terry pairing compares per prompt (no draw when a prompt has exactly two)."""
    return [
        (0, 1) if len(g.responses) == 2 else tuple(int(i) for i in rng.choice(len(g.responses), 2, replace=False))
        for g in groups
    ]


def _ties(mixture: Mixture, first: np.ndarray, second: np.ndarray) -> bool:
    """Whether two completions' attribute scores tie at ``mixture``: the rule MixtureDRO applies to the same margins
    (:data:`~rdpo_lightning.mixtures.TIE_TOLERANCE`)."""
    return bool(tied(*mixed_margin(score_margins(first, second, mixture.kind), mixture.weights)))


def pair_completions(
    groups: Sequence[PromptCompletions],
    mixtures: Sequence[Mixture],
    assignment: np.ndarray,
    pairing: str,
    temperature: float | None,
    compared: Sequence[tuple[int, int]] | None,
    rng: np.random.Generator,
) -> tuple[dict[str, list], int]:
    """Prompt i's pair at ``mixtures[assignment[i]]``: rows (prompt, chosen, rejected, group, score_margins) and the
    number of prompts skipped for a tie. ``compared`` (Bradley–Terry only) comes from :func:`compared_completions`;
    ``score_margins``: the chosen's attribute scores minus the rejected's (:mod:`rdpo_lightning.data.score_margins`)."""
    if pairing == "best_vs_worst":
        picks = []
        for group, g in zip(groups, assignment, strict=True):
            reward = mixtures[g].combine(group.scores)
            best, worst = int(np.argmax(reward)), int(np.argmin(reward))
            picks.append(None if _ties(mixtures[g], group.scores[best], group.scores[worst]) else (best, worst))
    else:
        if compared is None:
            raise ValueError("Bradley–Terry pairing needs the compared completions of each prompt")
        first = np.stack([g.scores[a] for g, (a, _) in zip(groups, compared, strict=True)])
        second = np.stack([g.scores[b] for g, (_, b) in zip(groups, compared, strict=True)])
        wins = label_pairs(first, second, mixtures, assignment, temperature, rng)
        picks = []
        for (a, b), win, g, s1, s2 in zip(compared, wins, assignment, first, second, strict=True):
            tie = temperature is None and _ties(mixtures[g], s1, s2)
            picks.append(None if tie else ((a, b) if win else (b, a)))
    rows: dict[str, list] = {"prompt": [], "chosen": [], "rejected": [], "group": [], SCORE_MARGINS: []}
    tied = 0
    for group, g, pick in zip(groups, assignment, picks, strict=True):
        if pick is None:
            tied += 1
            continue
        rows["prompt"].append(group.prompt)
        rows["chosen"].append(group.responses[pick[0]])
        rows["rejected"].append(group.responses[pick[1]])
        rows["group"].append(int(g))
        rows[SCORE_MARGINS].append(score_margins(group.scores[pick[0]], group.scores[pick[1]], mixtures[g].kind))
    return rows, tied
