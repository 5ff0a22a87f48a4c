"""The embedded world, online: the policy's own completions of the world's prompts, scored per attribute.

Validation is the offline world's (the same held-out pairs labelled at every validation mixture), so the worst-case
evaluation, early stopping and checkpoint selection read an online fit exactly as an offline one. Training pairs come
from :class:`~rdpo_lightning.online.loader.OnlineLoader`, one round every ``steps_per_round`` optimizer steps.
"""

from __future__ import annotations

import logging
from typing import Any

import datasets
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from rdpo_lightning.data.context_length import model_contexts
from rdpo_lightning.data.mixture_pairs import PromptSplits
from rdpo_lightning.data.sampler import data_parallel_replicas
from rdpo_lightning.data.tokenize import tokenize_prompt
from rdpo_lightning.data.world_data import AttributeWorldDataModule
from rdpo_lightning.errors import InputError
from rdpo_lightning.online.generation import OnlineSampling
from rdpo_lightning.online.loader import OnlineLoader
from rdpo_lightning.online.pairing import check_online_pairing
from rdpo_lightning.online.report import RoundLog
from rdpo_lightning.online.rounds import RoundPlan
from rdpo_lightning.rewards import AttributeWorldReward, RewardFunction

log = logging.getLogger(__name__)


class OnlineWorldDataModule(AttributeWorldDataModule):
    """Online preference optimisation on the attribute world (every argument of
    :class:`~rdpo_lightning.data.AttributeWorldDataModule`, plus the round's).

    Each round, ``num_train`` prompts are the pool it draws from (a new order each epoch, sharded by rank); the
    policy writes ``generation.completions`` completions per prompt, ``scorer`` scores each on K attributes (default:
    the world's own rewards), and ``online_pairing`` forms pairs under the training mixture α₀ (``best_vs_worst``,
    ``all_pairs``, ``random``: :mod:`rdpo_lightning.online.pairing`). Every pair carries its attribute margins, so
    the mixture strategies (Mean, MixtureDRO) train on it unchanged.

    Args:
        steps_per_round: optimizer steps each round serves (1: fully online).
        generation: how the policy samples (:class:`~rdpo_lightning.online.generation.OnlineSampling`).
        scorer: the per-attribute reward (:class:`~rdpo_lightning.rewards.RewardFunction`; its attributes must be
            the world's, in order).
        online_pairing: how a prompt's completions become pairs.
        samples_logged: pairs per round written to TensorBoard's text tab.
    """

    #: training pairs are drawn during the fit: no reference log-probs can be cached for them
    live_training_pairs = True

    def __init__(
        self,
        *,
        steps_per_round: int = 1,
        generation: OnlineSampling | None = None,
        scorer: RewardFunction | None = None,
        online_pairing: str = "best_vs_worst",
        samples_logged: int = 4,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(steps_per_round, bool) or not isinstance(steps_per_round, int) or steps_per_round < 1:
            raise ValueError(f"data.steps_per_round must be an integer >= 1, got {steps_per_round!r}")
        check_online_pairing(online_pairing, "data.online_pairing")
        if len(self.train_mixtures) != 1:
            raise ValueError(
                f"an online fit pairs completions under one training mixture alpha_0; data.train_mixtures gives"
                f" {len(self.train_mixtures)}: give one"
            )
        self.steps_per_round = steps_per_round
        self.generation = generation or OnlineSampling()
        self.scorer = scorer
        self.online_pairing = online_pairing
        self.samples_logged = samples_logged
        self.train_prompts: list[str] = []
        self._loader: OnlineLoader | None = None
        self._loader_trainer: Any = None

    # --- the prompts ---------------------------------------------------------------------------------------------
    def prompt_splits(self) -> PromptSplits:
        splits = super().prompt_splits()
        self.train_prompts = [group.prompt for group in splits.train]
        if not self.train_prompts:
            raise InputError("data.num_train: an online fit needs prompts to complete, and there are none")
        return splits

    def splits(self) -> dict[str, datasets.Dataset]:
        """The validation sets only: the training pairs do not exist before the fit draws them."""
        return dict(self.val_datasets)

    def resolve_scorer(self) -> RewardFunction:
        """``scorer``, or the world's rewards; refused when its attributes are not the world's."""
        scorer = self.scorer if self.scorer is not None else AttributeWorldReward(self.world)
        if tuple(scorer.attributes) != tuple(self.world.attributes):
            raise InputError(
                f"data.scorer ({type(scorer).__name__}) scores {len(scorer.attributes)} attributes"
                f" {list(scorer.attributes)}, but the mixtures weigh the world's {len(self.world.attributes)}"
                f" {list(self.world.attributes)}: give a scorer with one column per attribute, in that order"
            )
        return scorer

    def prompt_ids(self, prompt: str) -> list[int]:
        """The prompt as the pairs tokenise it (:func:`~rdpo_lightning.data.tokenize.tokenize_prompt`)."""
        return tokenize_prompt(prompt, self.tokenizer, self.max_prompt_length, self.truncation_mode, self.templated)[0]

    # --- the loader ----------------------------------------------------------------------------------------------
    def train_dataloader(self) -> OnlineLoader:
        """One loader per fit (Lightning asks more than once: the schedule's step count, then the loop), so the state a
        checkpoint restores is the state the loop iterates."""
        if self._loader is None or self._loader_trainer is not self.trainer:
            self._loader, self._loader_trainer = self._build_loader(), self.trainer
        return self._loader

    def _build_loader(self) -> OnlineLoader:
        trainer = self.trainer
        module = trainer.lightning_module
        accumulation = int(getattr(module, "accumulate_grad_batches", 1))
        batches_per_round = self.steps_per_round * accumulation
        replicas, rank = data_parallel_replicas(trainer)
        prompt_ids = [self.prompt_ids(p) for p in self.train_prompts]
        self._check_context(module, max(len(ids) for ids in prompt_ids))
        scorer = self.resolve_scorer()
        plan = RoundPlan(
            prompt_ids=prompt_ids, prompts=self.train_prompts, alpha0=self.train_mixture,
            pairing=self.online_pairing, sampling=self.generation, scorer=scorer,
            pairs_needed=batches_per_round * self.batch_size, seed=self.seed, rank=rank, replicas=replicas,
            max_length=self.max_length, samples_logged=self.samples_logged, drop_truncated=self.drop_truncated,
        )  # fmt: skip
        logger = RoundLog(trainer, self.val_mixtures, scorer.attributes)
        rank_zero_only(log.info)(
            "online: %d prompts; a round every %d optimizer steps: %d pairs (%d per rank), %d completions per prompt,"
            " %d new tokens at most, scored by %s; pairs by %s under %s",
            len(self.train_prompts), self.steps_per_round, plan.pairs_needed * replicas, plan.pairs_needed,
            self.generation.completions, self.generation.max_new_tokens, type(scorer).__name__,
            self.online_pairing, self.train_mixture.name,
        )  # fmt: skip

        def context() -> dict[str, Any]:
            scorer.to(module.device)
            return {
                "policy": module.policy,
                "tokenizer": self.tokenizer,
                "device": module.device,
                "epoch": trainer.current_epoch,
                "any_rank": lambda flag: bool(trainer.strategy.reduce_boolean_decision(bool(flag), all=False)),
                "progress": logger.progress,
            }

        return OnlineLoader(plan, self.batch_size, batches_per_round, context, self.collator(), logger.round)

    def _check_context(self, module: Any, longest_prompt: int) -> None:
        """A prompt and its completion must fit the model's positions (past them GPT-2 fails deep in torch)."""
        for key, attribute, positions in model_contexts(module):
            if longest_prompt + self.generation.max_new_tokens > positions:
                raise InputError(
                    f"data.generation.max_new_tokens={self.generation.max_new_tokens} after the longest prompt"
                    f" ({longest_prompt} tokens) runs past the model's context ({key}'s {attribute}={positions}):"
                    f" set it to {max(1, positions - longest_prompt)} or less, or shorten the prompts"
                    " (data.max_prompt_length)"
                )
