"""The embedded attribute world as a DataModule: trained at one mixture (or several, as groups), validated across a
grid of mixtures. No downloads; deterministic from ``seed``."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from rdpo_lightning.data.generate import SamplingConfig, sample_completions
from rdpo_lightning.data.mixture_pairs import (
    MixturePairsDataModule,
    PairRandomness,
    PromptSplits,
    training_only_dropped,
)
from rdpo_lightning.data.pairing import PromptCompletions, compared_completions
from rdpo_lightning.data.tokenizer import load_tokenizer, save_word_tokenizer
from rdpo_lightning.data.world import AttributeWorld


class AttributeWorldDataModule(MixturePairsDataModule):
    """Pairs from the embedded :class:`AttributeWorld`.

    The paper's setting: rewards of two attributes ``attribute_a`` and ``attribute_b``, training labels at
    r(α₀) = α₀·r_a + (1−α₀)·r_b (``train_alpha``, default 0.1), validation on the same held-out response pairs
    labelled at every α of ``val_alphas``. Labels follow Bradley–Terry with ``label_temperature`` (null: the higher
    reward wins).

    General mixtures: ``train_mixtures`` / ``val_mixtures`` take entries that are a number (α on the a/b family), a
    list of K weights, or a mapping ``{attribute: weight}``. Several training mixtures are *groups*: pair i is labelled
    at its component's mixture and carries ``group`` = the component's index (for ``GroupDRO``); ``train_shares``
    sets each component's share of the training pairs (default equal).

    Each prompt gets ``responses_per_prompt`` responses (the paper: two), from the world's own generator or, with
    ``response_policy`` (a path or Hub name of a causal LM), sampled from that policy as the paper samples from its
    SFT model (``sampling`` sets how). ``pairing`` turns them into one pair per prompt: ``bradley_terry`` (two
    responses compared, labels drawn at ``label_temperature``) or ``best_vs_worst`` (the authors' code for several
    completions per prompt); see :mod:`rdpo_lightning.data.pairing`. ``tokenizer``: a tokenizer name or path for the
    world's text (default: a word-level tokenizer built from the world's vocabulary).

    Input shift: ``input_shifts`` maps a name to changes of the world's generator (any of ``prompt_words``,
    ``response_words``, ``neutral_share``, ``concentration``). Each adds a validation set ``inputs=<name>`` of
    ``num_val`` fresh prompts and responses drawn from the changed generator, labelled by the *same* reward at the
    (first) training mixture: the same preferences over different inputs, the shift a Wasserstein ball around the
    inputs describes.
    """

    def __init__(
        self,
        world: AttributeWorld | None = None,
        attribute_a: str | None = "anger",
        attribute_b: str | None = "fear",
        label_temperature: float | None = 0.05,
        responses_per_prompt: int = 2,
        num_train: int = 2048,
        num_val: int = 256,
        seed: int = 0,
        tokenizer: str | None = None,
        tokenizer_dir: str | None = None,
        response_policy: str | None = None,
        sampling: SamplingConfig | None = None,
        input_shifts: dict[str, dict[str, Any]] | None = None,
        batch_size: int = 16,
        max_length: int = 64,
        **kwargs: Any,
    ) -> None:
        world = world or AttributeWorld()
        input_worlds = shifted_worlds(world, input_shifts or {})
        if num_train < 1 or num_val < 1:
            raise ValueError(f"data.num_train and data.num_val must be >= 1, got {num_train} and {num_val}")
        if responses_per_prompt < 2:
            raise ValueError(f"data.responses_per_prompt must be >= 2 to make pairs, got {responses_per_prompt}")
        if tokenizer is not None and tokenizer_dir is not None:
            raise ValueError("give one of data.tokenizer (an existing tokenizer) and data.tokenizer_dir, not both")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"data.seed must be >= 0, got {seed}")
        super().__init__(
            world.attributes, attribute_a=attribute_a, attribute_b=attribute_b, label_temperature=label_temperature,
            batch_size=batch_size, max_length=max_length, **kwargs,
        )  # fmt: skip
        self.world, self.input_worlds = world, input_worlds
        self.num_train, self.num_val, self.seed = num_train, num_val, seed
        self.tokenizer_name, self.tokenizer_dir = tokenizer, tokenizer_dir
        self.responses_per_prompt = responses_per_prompt
        self.response_policy, self.sampling = response_policy, sampling or SamplingConfig()

    @property
    def train_mixture(self):
        """The (first) training mixture α₀."""
        return self.train_mixtures[0]

    def build_tokenizer(self):
        if self.tokenizer_name is not None:
            return load_tokenizer(self.tokenizer_name)
        vocab = self.world.vocabulary()
        digest = hashlib.sha1(" ".join(vocab).encode()).hexdigest()[:12]
        directory = Path(self.tokenizer_dir) if self.tokenizer_dir else self.cache_dir / f"world-tokenizer-{digest}"
        if not (directory / "tokenizer.json").exists():
            save_word_tokenizer(vocab, directory)
        return load_tokenizer(directory)

    def _responses(self, prompts: list[str], rng: np.random.Generator) -> list[list[str]]:
        """``responses_per_prompt`` responses for each prompt."""
        if self.response_policy is None:
            columns = [self.world.sample_responses(len(prompts), rng) for _ in range(self.responses_per_prompt)]
            return [list(row) for row in zip(*columns, strict=True)]
        return sample_completions(
            self.response_policy, self.tokenizer, prompts, self.responses_per_prompt, self.sampling, self.seed,
            self.cache_dir,
        )  # fmt: skip

    def prompt_splits(self) -> PromptSplits:
        rng = np.random.default_rng(self.seed)
        n, cut = self.num_train + self.num_val, self.num_train
        prompts = self.world.sample_prompts(n, rng)
        responses = self._responses(prompts, rng)
        k = self.world.num_attributes
        rewards = self.world.attribute_rewards([r for row in responses for r in row]).reshape(n, -1, k)
        groups = [PromptCompletions(p, r, s) for p, r, s in zip(prompts, responses, rewards, strict=True)]
        randomness = PairRandomness(
            compared=np.random.default_rng([self.seed, 0, 1]),
            assignment=np.random.default_rng([self.seed, 0]),
            train_labels=rng,  # the generator that drew the prompts and responses, continued
            val_labels=lambda i: np.random.default_rng([self.seed, i + 1]),
        )
        return PromptSplits(groups[:cut], groups[cut:], randomness)

    def build_splits(self) -> tuple[datasets.Dataset, dict[str, datasets.Dataset]]:
        train, vals = super().build_splits()
        for i, (name, world) in enumerate(self.input_worlds.items()):
            rng = np.random.default_rng([self.seed, 7, i])  # its own stream: the other sets stay what they were
            prompts = world.sample_prompts(self.num_val, rng)
            responses = [
                list(r) for r in zip(*(world.sample_responses(self.num_val, rng) for _ in range(2)), strict=True)
            ]
            scores = self.world.attribute_rewards([r for row in responses for r in row]).reshape(self.num_val, 2, -1)
            groups = [PromptCompletions(p, r, s) for p, r, s in zip(prompts, responses, scores, strict=True)]
            held_out = np.zeros(len(groups), dtype=int)
            rows = self._pairs(name, groups, [self.train_mixture], held_out, compared_completions(groups, rng), rng)
            vals[name] = datasets.Dataset.from_dict(training_only_dropped(rows))
        return train, vals


#: what an input shift may change: the generator of prompts and responses, never the reward
SHIFTABLE = ("prompt_words", "response_words", "neutral_share", "concentration")


def shifted_worlds(world: AttributeWorld, shifts: dict[str, dict[str, Any]]) -> dict[str, AttributeWorld]:
    """``inputs=<name>`` → the world with that shift's changes (checked, errors naming the YAML key)."""
    out = {}
    for name, changes in shifts.items():
        key = f"data.input_shifts.{name}"
        if not isinstance(changes, dict) or not changes:
            raise ValueError(f"{key} must be a non-empty mapping of {SHIFTABLE} to new values, got {changes!r}")
        unknown = [k for k in changes if k not in SHIFTABLE]
        if unknown:
            raise ValueError(f"{key}: cannot shift {unknown}; an input shift changes only {SHIFTABLE}")
        if "neutral_share" in changes:
            changes = {**changes, "neutral_share": tuple(changes["neutral_share"])}
        try:
            out[f"inputs={name}"] = dataclasses.replace(world, **changes)
        except (ValueError, TypeError) as error:
            raise ValueError(f"{key}: {error}") from error
    return out
