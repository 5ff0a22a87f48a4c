"""Generation-based evaluation, the paper's measure: sample completions from the policy and score them at every α.

For held-out prompts the policy generates completions (Hugging Face ``generate``, batch-wise, left-padded); a
:class:`~rdpo_lightning.rewards.RewardFunction` scores them on K attributes, and each mixture α turns the scores
into r(α). The mean r(α) over prompts is logged for every α, with the worst case. Sampling is expensive, so it runs
every ``every_n_validations`` validation passes of ``fit`` (and always under ``validate``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.trainer.states import TrainerFn

from rdpo_lightning.callbacks.metrics import GroupedMean
from rdpo_lightning.data.mixture import Mixture
from rdpo_lightning.data.sampler import data_parallel_replicas
from rdpo_lightning.models.sampling import cuda_devices, generate_left_padded
from rdpo_lightning.rewards import AttributeWorldReward, RewardFunction


@dataclass
class GenerationResult:
    """Mean mixed reward per mixture name, mean score per attribute, and a few sample completions."""

    rewards: dict[str, float]
    attributes: dict[str, float]
    samples: list[tuple[str, str]] = field(default_factory=list)


class GenerationEvaluation:
    """Samples and scores completions for held-out prompts; configured inside :class:`WorstCaseEvaluation`.

    Prompts come from the DataModule's ``eval_prompts(n)`` hook when it has one (a list of prompt strings), else
    from the ``prompt_ids`` of the first ``num_prompts`` pairs of the first (in-distribution) validation set.

    Args:
        reward: scores texts on the mixtures' attributes (default: the DataModule's ``world`` rewards).
        mixtures: the α grid to report (default: the DataModule's ``val_mixtures``).
        num_prompts: how many held-out prompts to complete (split across data-parallel ranks).
        batch_size: prompts per ``generate`` call.
        max_new_tokens: completion length limit (prompt + completion must fit the model's positions).
        do_sample, temperature, top_k, top_p: sampling; ``do_sample=False`` is greedy. ``top_k=0`` and
            ``top_p=1.0`` sample from the policy's full distribution.
        every_n_validations: run on validation passes N, 2N, ... of ``fit``.
        include_prompt: score prompt + completion instead of the completion alone.
        num_samples_logged: completions written to TensorBoard as text.
        seed: sampling seed (per data-parallel rank: seed + rank); the training RNG state is left untouched.
    """

    def __init__(
        self,
        reward: RewardFunction | None = None,
        mixtures: list[Mixture] | None = None,
        num_prompts: int = 64,
        batch_size: int = 32,
        max_new_tokens: int = 32,
        do_sample: bool = True,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        every_n_validations: int = 1,
        include_prompt: bool = False,
        num_samples_logged: int = 4,
        seed: int = 0,
    ) -> None:
        for key, value in (
            ("num_prompts", num_prompts),
            ("batch_size", batch_size),
            ("max_new_tokens", max_new_tokens),
            ("every_n_validations", every_n_validations),
        ):
            if value < 1:
                raise ValueError(f"generation.{key} must be >= 1, got {value}")
        if not temperature > 0:
            raise ValueError(f"generation.temperature must be > 0, got {temperature}")
        if top_k < 0 or not 0 < top_p <= 1:
            raise ValueError(f"generation.top_k must be >= 0 and top_p in (0, 1], got {top_k} and {top_p}")
        self.reward = reward
        self.mixtures = mixtures
        self.num_prompts = num_prompts
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.do_sample = do_sample
        self.sampling = {"temperature": temperature, "top_k": top_k, "top_p": top_p} if do_sample else {}
        self.every_n_validations = every_n_validations
        self.include_prompt = include_prompt
        self.num_samples_logged = num_samples_logged
        self.seed = seed
        self._passes = 0

    # --- when ------------------------------------------------------------------------------------------------------
    def due(self, trainer: L.Trainer) -> bool:
        """Count this validation pass; True under ``validate`` or on every N-th pass of ``fit``."""
        if trainer.state.fn != TrainerFn.FITTING:
            return True
        self._passes += 1
        return self._passes % self.every_n_validations == 0

    # --- what ------------------------------------------------------------------------------------------------------
    def resolve_mixtures(self, trainer: L.Trainer) -> list[Mixture]:
        mixtures = self.mixtures or getattr(trainer.datamodule, "val_mixtures", None)
        if not mixtures:
            raise ValueError(
                "generation.mixtures is empty and the DataModule has no val_mixtures: give the mixtures to score"
            )
        return list(mixtures)

    def resolve_reward(self, trainer: L.Trainer) -> RewardFunction:
        if self.reward is None:
            world = getattr(trainer.datamodule, "world", None)
            if world is None:
                raise ValueError("generation.reward is not set and the DataModule has no attribute world to score with")
            self.reward = AttributeWorldReward(world)
        return self.reward

    def prompt_ids(self, trainer: L.Trainer) -> list[list[int]]:
        datamodule = trainer.datamodule
        hook = getattr(datamodule, "eval_prompts", None)
        if callable(hook):
            texts = list(hook(self.num_prompts))[: self.num_prompts]
            return [list(datamodule.tokenizer(t, add_special_tokens=True)["input_ids"]) for t in texts]
        loaders = trainer.val_dataloaders
        first = loaders[0] if isinstance(loaders, Sequence) else loaders
        dataset = first.dataset
        count = min(self.num_prompts, len(dataset))
        try:
            return [list(dataset[i]["prompt_ids"]) for i in range(count)]
        except (KeyError, TypeError) as error:
            raise ValueError(
                "generation needs prompts: the DataModule has no eval_prompts(n) hook and its first validation "
                "dataset has no 'prompt_ids' column"
            ) from error

    # --- how -------------------------------------------------------------------------------------------------------
    def _generation_config(self, tokenizer: Any):
        from transformers import GenerationConfig

        return GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            do_sample=self.do_sample,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id,
            **self.sampling,
        )

    @torch.no_grad()
    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> GenerationResult:
        """Generate, score and average across ranks. Every rank must call this (it is a collective)."""
        tokenizer = getattr(trainer.datamodule, "tokenizer", None)
        if tokenizer is None:
            raise ValueError(
                "generation needs the DataModule's tokenizer (trainer.datamodule.tokenizer) to decode with"
            )
        mixtures = self.resolve_mixtures(trainer)
        reward = self.resolve_reward(trainer).to(pl_module.device)
        attributes = list(reward.attributes)
        world = getattr(trainer.datamodule, "world", None)
        if self.mixtures is None and world is not None and tuple(world.attributes) != tuple(attributes):
            raise ValueError(
                f"the DataModule's mixtures weigh the attributes {list(world.attributes)} but the reward function "
                f"scores {attributes}: choose generation.reward labels in that order, or give generation.mixtures"
            )
        for mixture in mixtures:
            if len(mixture.weights) != len(attributes):
                raise ValueError(
                    f"mixture {mixture.name!r} has {len(mixture.weights)} weights but the reward function scores "
                    f"{len(attributes)} attributes {attributes}"
                )
        prompts = self.prompt_ids(trainer)
        replicas, rank = data_parallel_replicas(trainer)
        # equal work on every rank (sharded models need every rank in every forward): pad with weight-0 prompts
        per_rank = math.ceil(len(prompts) / replicas)
        mine = list(range(rank, len(prompts), replicas))
        weights = [1.0] * len(mine) + [0.0] * (per_rank - len(mine))
        mine += [0] * (per_rank - len(mine))

        metric = GroupedMean(1, len(mixtures) + len(attributes)).to(pl_module.device)
        config = self._generation_config(tokenizer)
        policy = pl_module.policy
        device = pl_module.device
        samples: list[tuple[str, str]] = []
        with torch.random.fork_rng(devices=cuda_devices(device)):
            torch.manual_seed(self.seed + rank)
            for start in range(0, per_rank, self.batch_size):
                rows = [prompts[i] for i in mine[start : start + self.batch_size]]
                texts, completions = self._generate(policy, rows, tokenizer, config, device, trainer.world_size > 1)
                scores = reward.scores(texts)
                values = np.concatenate([np.stack([m.combine(scores) for m in mixtures], 1), scores], 1)
                batch_weights = torch.tensor(weights[start : start + self.batch_size], dtype=torch.float64)
                metric.update(0, torch.from_numpy(values), batch_weights)
                for row, completion in zip(rows, completions, strict=True):
                    if len(samples) < self.num_samples_logged:
                        samples.append((tokenizer.decode(row, skip_special_tokens=True), completion))
        means = metric.compute()[0].tolist()
        names = [m.name for m in mixtures]
        return GenerationResult(
            rewards=dict(zip(names, means[: len(names)], strict=True)),
            attributes=dict(zip(attributes, means[len(names) :], strict=True)),
            samples=samples,
        )

    def _generate(
        self, policy: torch.nn.Module, rows: list[list[int]], tokenizer: Any, config: Any, device, synced: bool
    ) -> tuple[list[str], list[str]]:
        """Generate from the prompt ids ``rows`` (:func:`~rdpo_lightning.models.sampling.generate_left_padded`) and
        return the texts to score and the completions."""
        output, width = generate_left_padded(policy, rows, tokenizer, config, device, synced)
        completions = tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)
        if not self.include_prompt:
            return completions, completions
        return tokenizer.batch_decode(output, skip_special_tokens=True), completions
