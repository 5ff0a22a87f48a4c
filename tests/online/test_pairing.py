"""Online pairing against a brute-force enumeration: which completions pair, in which order, what ties drop."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from rdpo_lightning.data.pairing import PromptCompletions
from rdpo_lightning.mixtures import Mixture
from rdpo_lightning.online.pairing import online_pairs, pairs_per_prompt

ALPHA0 = Mixture((0.7, 0.3), name="a=0.70,b=0.30")


def groups(k: int, prompts: int, seed: int, tie: bool = False) -> list[PromptCompletions]:
    rng = np.random.default_rng(seed)
    out = []
    for p in range(prompts):
        scores = rng.random((k, 2))
        if tie:  # completions 0 and 1 score alike under alpha0 by different attribute scores
            scores[1] = scores[0] + np.array([0.3, -0.7]) * 0.1
        out.append(PromptCompletions(f"prompt {p}", [f"c{p}.{i}" for i in range(k)], scores))
    return out


def brute_force(gs: list[PromptCompletions], pairing: str) -> tuple[list[tuple[str, str, str]], int]:
    expected, ties = [], 0
    for g in gs:
        reward = [0.7 * s[0] + 0.3 * s[1] for s in g.scores]
        if pairing == "all_pairs":
            candidates = list(itertools.combinations(range(len(reward)), 2))
        else:  # best against worst: the first of the highest and of the lowest (equal within rounding)
            best = next(i for i, r in enumerate(reward) if r >= max(reward) - 1e-9)
            worst = next(i for i, r in enumerate(reward) if r <= min(reward) + 1e-9)
            candidates = [(best, worst)]
        for a, b in candidates:
            if abs(reward[a] - reward[b]) <= 1e-9:
                ties += 1
                continue
            hi, lo = (a, b) if reward[a] > reward[b] else (b, a)
            expected.append((g.prompt, g.responses[hi], g.responses[lo]))
    return expected, ties


@pytest.mark.parametrize("pairing", ["best_vs_worst", "all_pairs"])
@pytest.mark.parametrize("tie", [False, True])
def test_pairs_match_a_brute_force_enumeration(pairing: str, tie: bool):
    gs = groups(4, 6, seed=3, tie=tie)
    pairs = online_pairs(gs, ALPHA0, pairing, np.random.default_rng(0))
    expected, ties = brute_force(gs, pairing)
    got = list(zip(pairs.rows["prompt"], pairs.rows["chosen"], pairs.rows["rejected"], strict=True))
    assert got == expected
    assert pairs.tied == ties
    if tie and pairing == "all_pairs":
        assert ties == 6  # completions 0 and 1 of every prompt
    assert len(pairs) <= len(gs) * pairs_per_prompt(pairing, 4)


def test_margins_are_the_chosen_scores_minus_the_rejected():
    gs = groups(3, 5, seed=1)
    pairs = online_pairs(gs, ALPHA0, "all_pairs", np.random.default_rng(0))
    by_text = {r: s for g in gs for r, s in zip(g.responses, g.scores, strict=True)}
    for chosen, rejected, margins in zip(pairs.rows["chosen"], pairs.rows["rejected"], pairs.rows["score_margins"],
                                         strict=True):  # fmt: skip
        np.testing.assert_allclose(margins, by_text[chosen] - by_text[rejected], rtol=0, atol=1e-15)
        assert np.dot(ALPHA0.weights, margins) > 0


def test_random_pairing_draws_two_distinct_completions_per_prompt_from_the_generator():
    gs = groups(5, 40, seed=2)
    first = online_pairs(gs, ALPHA0, "random", np.random.default_rng(7))
    again = online_pairs(gs, ALPHA0, "random", np.random.default_rng(7))
    other = online_pairs(gs, ALPHA0, "random", np.random.default_rng(8))
    assert first.rows == again.rows and first.rows != other.rows
    assert len(first) == 40 and first.tied == 0
    drawn = {(c, r) for c, r in zip(first.rows["chosen"], first.rows["rejected"], strict=True)}
    best_worst = online_pairs(gs, ALPHA0, "best_vs_worst", np.random.default_rng(0))
    assert drawn != set(zip(best_worst.rows["chosen"], best_worst.rows["rejected"], strict=True))


def test_an_unknown_pairing_is_refused_naming_the_key():
    with pytest.raises(ValueError, match="data.online.pairing must be one of"):
        online_pairs(groups(2, 1, 0), ALPHA0, "best", np.random.default_rng(0))
