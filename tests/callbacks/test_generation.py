"""Generation-based evaluation on a policy whose reward distribution is known in closed form.

The policy's final layer norm is zeroed, so its hidden state is the same constant at every position, and its
(untied) output layer gives "rage" (anger) and "terror" (fear) logits 32 + log 3 and 32, every other token 0: each
generated word is "rage" with probability 3/4, else "terror", independently. A completion of L words with k "rage"
then scores anger = e^{s k/L} / Z, fear = e^{s (L−k)/L} / Z, Z = 4 + e^{s k/L} + e^{s (L−k)/L} under the world's
reward, and the expected r(α) is a binomial sum.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.trainer.states import TrainerFn
from transformers import GPT2Config, GPT2LMHeadModel

from rdpo_lightning.callbacks import GenerationEvaluation, WorstCaseEvaluation
from rdpo_lightning.data import AttributeWorld, AttributeWorldDataModule
from rdpo_lightning.data.tokenizer import load_tokenizer
from rdpo_lightning.training.module import RobustDPO
from rdpo_lightning.training.quiet import quiet_trainer

LENGTH = 4
P_RAGE = 0.75
SHARPNESS = AttributeWorld().sharpness


@pytest.fixture(scope="module")
def two_word_policy_dir(tmp_path_factory: pytest.TempPathFactory, world_tokenizer_dir: Path) -> Path:
    tokenizer = load_tokenizer(world_tokenizer_dir)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_layer=1,
        n_head=2,
        n_embd=32,
        n_positions=64,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.fill_(1.0)
        model.lm_head.weight.zero_()
        rage, terror = tokenizer.convert_tokens_to_ids(["rage", "terror"])
        model.lm_head.weight[rage] = 1.0 + math.log(P_RAGE / (1 - P_RAGE)) / config.n_embd
        model.lm_head.weight[terror] = 1.0
    directory = tmp_path_factory.mktemp("two_word_policy")
    model.save_pretrained(directory)
    return directory


def _expected(alpha: float) -> tuple[float, float]:
    """Mean and standard deviation of r(α) for one completion."""
    values, probs = [], []
    for k in range(LENGTH + 1):
        a, f = math.exp(SHARPNESS * k / LENGTH), math.exp(SHARPNESS * (LENGTH - k) / LENGTH)
        values.append((alpha * a + (1 - alpha) * f) / (4 + a + f))
        probs.append(math.comb(LENGTH, k) * P_RAGE**k * (1 - P_RAGE) ** (LENGTH - k))
    mean = sum(p * v for p, v in zip(probs, values, strict=True))
    var = sum(p * (v - mean) ** 2 for p, v in zip(probs, values, strict=True))
    return mean, math.sqrt(var)


class PromptedWorld(AttributeWorldDataModule):
    """The attribute world with the ``eval_prompts`` hook, recording how it is asked."""

    requests: list[int] = []

    def eval_prompts(self, n: int) -> list[str]:
        self.requests.append(n)
        return ["the day walk city", "river road"] * n


def test_generated_reward_matches_the_closed_form_mean_and_worst_case(
    two_word_policy_dir: Path, world_tokenizer_dir: Path
) -> None:
    num_prompts = 200
    datamodule = PromptedWorld(
        val_alphas=[0.0, 0.5, 1.0], num_train=8, num_val=8, batch_size=8, tokenizer_dir=str(world_tokenizer_dir)
    )
    generation = GenerationEvaluation(num_prompts=num_prompts, batch_size=64, max_new_tokens=LENGTH, seed=3)
    callback = WorstCaseEvaluation(generation=generation, plot_name=None, print_table=False)
    trainer = quiet_trainer(
        accelerator="cpu",
        devices=1,
        callbacks=[callback],
        limit_val_batches=1,
    )
    trainer.validate(RobustDPO(model=str(two_word_policy_dir)), datamodule=datamodule, verbose=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}

    assert datamodule.requests == [num_prompts]
    completions = [c for _, c in callback.generation_result.samples]
    assert all(len(c.split()) == LENGTH and set(c.split()) <= {"rage", "terror"} for c in completions)
    alphas = {"alpha=0.00": 0.0, "alpha=0.10": 0.1, "alpha=0.50": 0.5, "alpha=1.00": 1.0}
    for name, alpha in alphas.items():
        mean, std = _expected(alpha)
        assert abs(metrics[f"val/reward/{name}"] - mean) < 4 * std / math.sqrt(num_prompts), name
    # anger is the likelier word, so r(α) grows with α: the worst case is α = 0, at the smallest measured value
    logged = {name: metrics[f"val/reward/{name}"] for name in alphas}
    assert metrics["val/reward/worst_case"] == min(logged.values())
    assert metrics["val/reward/worst_case_at"] == 0.0
    assert _expected(0.0)[0] < _expected(1.0)[0] - 10 * _expected(0.0)[1] / math.sqrt(num_prompts)
    assert metrics["val/reward/attributes/anger"] == pytest.approx(metrics["val/reward/alpha=1.00"], rel=1e-6)


def test_generation_runs_every_n_validation_passes_of_fit_and_always_in_validate() -> None:
    generation = GenerationEvaluation(every_n_validations=3)
    fitting = SimpleNamespace(state=SimpleNamespace(fn=TrainerFn.FITTING))
    validating = SimpleNamespace(state=SimpleNamespace(fn=TrainerFn.VALIDATING))
    assert [generation.due(fitting) for _ in range(7)] == [False, False, True, False, False, True, False]
    assert generation.due(validating)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"num_prompts": 0}, "num_prompts"), ({"temperature": 0.0}, "temperature"), ({"top_p": 0.0}, "top_p")],
)
def test_generation_rejects_bad_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GenerationEvaluation(**kwargs)


def test_a_left_padded_batch_generates_what_each_prompt_generates_alone(
    tiny_model_dir: Path, world_tokenizer_dir: Path
) -> None:
    """Greedy completions of prompts of different lengths, batched (so padded), equal each prompt's own unpadded
    greedy completion, and batching leaves the shared tokenizer's padding side as it was."""
    tokenizer = load_tokenizer(world_tokenizer_dir)
    side = tokenizer.padding_side
    policy = GPT2LMHeadModel.from_pretrained(tiny_model_dir, dtype=torch.float64).eval()
    texts = ["river", "the day walk city river road", "anger fear the day"]
    rows = [tokenizer(t)["input_ids"] for t in texts]
    assert len({len(r) for r in rows}) == 3
    generation = GenerationEvaluation(max_new_tokens=6, do_sample=False, include_prompt=True)
    config = generation._generation_config(tokenizer)
    scored, completions = generation._generate(policy, rows, tokenizer, config, torch.device("cpu"), synced=False)
    assert tokenizer.padding_side == side
    for row, text, completion in zip(rows, scored, completions, strict=True):
        ids = torch.tensor([row])
        alone = policy.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)[0]
        assert completion == tokenizer.decode(alone[len(row) :], skip_special_tokens=True)
        assert text == tokenizer.decode(alone, skip_special_tokens=True)
    assert len(set(completions)) > 1
