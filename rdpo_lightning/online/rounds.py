"""One online round: prompts → the policy's completions → per-attribute scores → pairs → tokenised batches.

A round serves exactly ``steps_per_round`` optimizer steps (``steps_per_round × accumulation`` loader batches of
``batch_size`` pairs), so every data-parallel rank takes the same number of steps. It takes its prompts from this
rank's shard of the epoch's order; where ties or empty completions leave too few pairs, it completes more prompts, all
ranks together (a sharded policy needs every rank in every ``generate``), and pairs beyond what the round needs are
counted as unused. The round's seed is (data seed, round, rank): a resumed fit that reaches round r draws what an
uninterrupted one drew.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rdpo_lightning.data.pairing import PromptCompletions
from rdpo_lightning.data.rows import EMPTY_RESPONSE, IDENTICAL
from rdpo_lightning.data.score_margins import SCORE_MARGINS
from rdpo_lightning.data.tokenize import fit_responses
from rdpo_lightning.errors import InputError
from rdpo_lightning.mixtures import Mixture
from rdpo_lightning.online.generation import OnlineSampling, generate_completions
from rdpo_lightning.online.pairing import online_pairs, pairs_per_prompt
from rdpo_lightning.rewards.base import RewardFunction

#: passes over fresh prompts that may end without a single usable pair (on any rank) before a round gives up
FRUITLESS_PASSES = 3


@dataclass
class RoundReport:
    """What one round did, for the logs: counts, seconds, the completions' mean scores and a few samples."""

    round: int
    prompts: int = 0
    generated_tokens: int = 0
    pairs: int = 0
    ties: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    unused: int = 0
    #: kept pairs' responses cut to fit max_length with their prompt
    truncated: int = 0
    generation_seconds: float = 0.0
    scoring_seconds: float = 0.0
    #: (completions, K) scores of every completion of the round, for the mean per attribute and per mixture
    scores: list[np.ndarray] = field(default_factory=list)
    samples: list[tuple[str, str, str]] = field(default_factory=list)


@dataclass
class RoundPlan:
    """What a round needs to know about the run (fixed for the whole fit)."""

    prompt_ids: Sequence[Sequence[int]]
    prompts: Sequence[str]
    alpha0: Mixture
    pairing: str
    sampling: OnlineSampling
    scorer: RewardFunction
    pairs_needed: int
    seed: int
    rank: int
    replicas: int
    max_length: int
    samples_logged: int = 4
    #: data.drop_truncated: a pair whose response would be cut is dropped (and counted), as offline
    drop_truncated: bool = False

    @property
    def prompts_per_pass(self) -> int:
        """Prompts one pass completes: enough for the round's pairs if none tie."""
        return max(1, math.ceil(self.pairs_needed / pairs_per_prompt(self.pairing, self.sampling.completions)))

    def shard(self, epoch: int) -> list[int]:
        """This rank's prompts (indices) in the epoch's order: a permutation from (seed, epoch), strided by rank."""
        order = np.random.default_rng([self.seed, 17, epoch]).permutation(len(self.prompt_ids))
        mine = order[self.rank :: self.replicas]
        return [int(i) for i in (mine if len(mine) else order)]

    def rounds_per_epoch(self) -> int:
        """Rounds in one epoch: one pass over this rank's shard (at least one)."""
        return max(1, math.ceil(len(self.prompt_ids) / self.replicas) // self.prompts_per_pass)


def pair_row(
    prompt_ids: Sequence[int],
    chosen: Sequence[int],
    rejected: Sequence[int],
    chosen_text: str,
    rejected_text: str,
    max_length: int,
    drop_truncated: bool = False,
) -> tuple[dict[str, list[int]] | None, str, int]:
    """The tokenised row of a pair from the ids the policy wrote, or None and why it is dropped; and how many of its
    responses were cut. As offline (:func:`~rdpo_lightning.data.tokenize.fit_responses`): responses keep their start
    within ``max_length`` with the prompt; a pair with an empty response (no text to score) or two identical responses
    is dropped."""
    if not chosen_text.strip() or not rejected_text.strip():
        return None, EMPTY_RESPONSE, 0
    if list(chosen) == list(rejected):
        return None, IDENTICAL, 0
    kept_chosen, kept_rejected, reason, _ = fit_responses(
        list(prompt_ids), chosen, rejected, max_length, drop_truncated
    )
    if reason:
        return None, reason, 0
    cut = int(len(kept_chosen) < len(chosen)) + int(len(kept_rejected) < len(rejected))
    return {"prompt_ids": list(prompt_ids), "chosen_ids": kept_chosen, "rejected_ids": kept_rejected}, "", cut


def run_round(
    plan: RoundPlan,
    policy: Any,
    tokenizer: Any,
    device: Any,
    round_index: int,
    epoch: int,
    any_rank: Callable[[bool], bool],
    progress: Callable[[int, int], Any] | None = None,
) -> tuple[list[dict[str, Any]], RoundReport]:
    """The round's tokenised pair rows (exactly ``plan.pairs_needed``) and its report."""
    report = RoundReport(round_index)
    rng = np.random.default_rng([plan.seed, 29, round_index, plan.rank])
    shard = plan.shard(epoch)
    per_pass = plan.prompts_per_pass
    cursor = (round_index - epoch * plan.rounds_per_epoch()) * per_pass  # the round's place in the epoch
    kept: list[dict[str, Any]] = []
    fruitless = 0
    passes = 0
    while any_rank(len(kept) < plan.pairs_needed):
        chosen = [shard[(cursor + i) % len(shard)] for i in range(per_pass)]
        cursor += per_pass
        bar = progress(round_index, per_pass) if progress is not None else None
        started = time.perf_counter()
        seed = int(np.random.default_rng([plan.seed, 31, round_index, plan.rank, passes]).integers(2**31))
        completions = generate_completions(
            policy, tokenizer, [plan.prompt_ids[i] for i in chosen], plan.sampling, seed, device,
            synced=plan.replicas > 1, progress=bar,
        )  # fmt: skip
        if bar is not None:
            bar.close()
        report.generation_seconds += time.perf_counter() - started
        started = time.perf_counter()
        prompts = [plan.prompts[i] for i in chosen]
        flat_prompts = [p for p in prompts for _ in range(plan.sampling.completions)]
        flat = [c for row in completions.texts for c in row]
        scores = plan.scorer.score_completions(flat_prompts, flat).reshape(len(chosen), plan.sampling.completions, -1)
        report.scoring_seconds += time.perf_counter() - started
        report.prompts += len(chosen)
        report.generated_tokens += completions.tokens
        report.scores.append(scores.reshape(len(flat), -1))
        groups = [PromptCompletions(p, c, s) for p, c, s in zip(prompts, completions.texts, scores, strict=True)]
        pairs = online_pairs(groups, plan.alpha0, plan.pairing, rng)
        report.ties += pairs.tied
        usable = 0
        for i, (group, best, worst) in enumerate(pairs.picks):
            written, texts = completions.ids[group], (pairs.rows["chosen"][i], pairs.rows["rejected"][i])
            row, reason, cut = pair_row(
                plan.prompt_ids[chosen[group]],
                written[best],
                written[worst],
                *texts,
                plan.max_length,
                plan.drop_truncated,
            )
            if row is None:
                report.dropped[reason] = report.dropped.get(reason, 0) + 1
                continue
            usable += 1
            report.truncated += cut
            if len(report.samples) < plan.samples_logged:
                report.samples.append((pairs.rows["prompt"][i], pairs.rows["chosen"][i], pairs.rows["rejected"][i]))
            kept.append({**row, "group": 0, SCORE_MARGINS: pairs.rows[SCORE_MARGINS][i]})
        passes += 1
        fruitless = 0 if any_rank(usable > 0) else fruitless + 1
        if fruitless >= FRUITLESS_PASSES:
            raise InputError(
                f"online round {round_index}: {FRUITLESS_PASSES} passes of {per_pass} prompts x"
                f" {plan.sampling.completions} completions gave no usable pair ({report.ties} tied under"
                f" {plan.alpha0.name}, dropped: {report.dropped or 'none'}): the policy's completions are all empty"
                " or all score alike; raise data.init_args.generation.temperature or max_new_tokens, or"
                " generation.completions"
            )
    report.pairs = min(len(kept), plan.pairs_needed)
    report.unused = max(0, len(kept) - plan.pairs_needed)
    return kept[: plan.pairs_needed], report
