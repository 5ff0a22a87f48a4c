"""Online fits, end to end on a tiny GPT-2: the policy's own completions, scored by the world, paired under α₀.

Each pair in a training batch is checked against an independent reading of it: the response tokens are decoded and
scored by the world's rewards again, so the batch's ``score_margins`` and its order are what the completions say. The
reference of an online fit is the initial policy, live: the first step's loss is exactly log 2. A fit stopped inside
a round and resumed trains the same weights as the uninterrupted fit, bit for bit (float64).
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from rdpo_lightning.batch_layout import IGNORE_INDEX
from rdpo_lightning.data import AttributeWorld
from rdpo_lightning.data.tokenizer import load_tokenizer
from rdpo_lightning.errors import InputError
from rdpo_lightning.robust import MixtureDRO
from tests.online.online_fits import RecordBatches, build, fit


def responses(batch: dict, tokenizer) -> tuple[list[str], list[str]]:
    """The chosen and rejected completions of a padded batch, decoded from their response tokens."""
    texts = []
    for ids, labels in zip(batch["input_ids"], batch["labels"], strict=True):
        texts.append(tokenizer.decode(ids[labels != IGNORE_INDEX].tolist(), skip_special_tokens=True).strip())
    half = len(texts) // 2
    return texts[:half], texts[half:]


def test_each_pair_is_two_of_the_policys_completions_ordered_by_the_world_at_alpha0(tiny_model_dir: Path, tmp_path):
    module, data = build(tiny_model_dir, tmp_path)
    record = RecordBatches()
    fit(module, data, max_steps=3, callbacks=[record])
    tokenizer = load_tokenizer(tiny_model_dir)
    world = AttributeWorld()
    alpha0 = np.asarray(data.train_mixture.weights)
    assert len(record.batches) == 3
    cut_short = 0
    for batch in record.batches:
        chosen, rejected = responses(batch, tokenizer)
        assert len(chosen) == 4 and all(chosen) and all(rejected)
        margins = world.attribute_rewards(chosen) - world.attribute_rewards(rejected)
        np.testing.assert_allclose(batch["columns"]["score_margins"].numpy(), margins, rtol=0, atol=1e-12)
        assert (margins @ alpha0 > 0).all()
        # the responses are the ids the policy wrote: ending in its EOS, or cut at max_new_tokens (6) without one
        for ids, labels in zip(batch["input_ids"], batch["labels"], strict=True):
            written = ids[labels != IGNORE_INDEX].tolist()
            ended = written[-1] == tokenizer.eos_token_id
            assert (ended or len(written) == 6) and tokenizer.eos_token_id not in written[:-1], written
            cut_short += not ended
    assert cut_short > 0  # some ran to max_new_tokens and train without an EOS the policy never wrote (as TRL)
    assert record.losses[0] == pytest.approx(math.log(2), abs=1e-12)  # the live reference is the initial policy
    assert module.reference is not None and not any(p.requires_grad for p in module.reference.parameters())


def test_rounds_serve_their_steps_and_draw_fresh_completions(tiny_model_dir: Path, tmp_path):
    module, data = build(tiny_model_dir, tmp_path, steps_per_round=2)
    record = RecordBatches()
    fit(module, data, max_steps=4, callbacks=[record])
    tokenizer = load_tokenizer(tiny_model_dir)
    prompts = [tokenizer.decode(b["input_ids"][0][b["labels"][0] == IGNORE_INDEX].tolist(), skip_special_tokens=True)
               for b in record.batches]  # fmt: skip
    assert len(set(prompts)) == 4  # a round's 8 prompts serve its 2 steps; the next round takes 8 others
    loader = data.train_dataloader()
    assert (loader.round, loader.given, len(loader)) == (1, 2, 4)  # 16 prompts: 2 rounds of 8 make the epoch


def test_a_fit_stopped_inside_a_round_resumes_to_the_uninterrupted_weights(tiny_model_dir: Path, tmp_path):
    robust = MixtureDRO(radius=0.5, steps=2, label_temperature=0.05)  # a strategy reading the online score margins
    module, data = build(tiny_model_dir, tmp_path / "a", robust=robust, steps_per_round=3)
    fit(module, data, max_steps=5)
    uninterrupted = {k: v.clone() for k, v in module.policy.state_dict().items()}

    module, data = build(tiny_model_dir, tmp_path / "b", robust=MixtureDRO(radius=0.5, steps=2, label_temperature=0.05),
                         steps_per_round=3)  # fmt: skip
    every_2 = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1, filename="{step}")
    stop = StopAfter(3)  # a fit planned for 5 steps (its schedule), stopped after 3 as a kill would stop it
    fit(module, data, max_steps=5, callbacks=[every_2, stop], enable_checkpointing=True)  # saved inside round 0
    assert module.trainer.global_step == 3
    module, data = build(tiny_model_dir, tmp_path / "c", robust=MixtureDRO(radius=0.5, steps=2, label_temperature=0.05),
                         steps_per_round=3)  # fmt: skip
    fit(module, data, max_steps=5, ckpt_path=tmp_path / "ckpt" / "step=2.ckpt")
    resumed = module.policy.state_dict()
    for name, value in uninterrupted.items():
        assert torch.equal(resumed[name], value), name


class StopAfter(L.Callback):
    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        trainer.should_stop = trainer.should_stop or trainer.global_step >= self.steps


def test_under_lora_the_base_with_adapters_off_is_the_live_reference(tiny_model_dir: Path, tmp_path):
    from peft import LoraConfig

    module, data = build(tiny_model_dir, tmp_path, peft=LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn"]))
    record = RecordBatches()
    fit(module, data, max_steps=2, callbacks=[record])
    assert module.reference is None  # no copy of the base: it scores the pairs with its adapters off
    assert record.losses[0] == pytest.approx(math.log(2), abs=1e-12)  # fresh adapters: the policy is its base
    assert record.losses[1] != pytest.approx(math.log(2), abs=1e-9)


def test_a_classifier_scores_each_completion_after_its_prompt_through_its_own_chat_template(
    tiny_model_dir: Path, tmp_path
):
    """The user's reward model case: a sequence classifier with one output per attribute, loaded with
    ``from_pretrained``, reading the prompt and completion rendered by its own tokenizer's chat template."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, GPT2ForSequenceClassification

    from rdpo_lightning.rewards import SequenceClassifierReward
    from tests.conftest import CHAT_TEMPLATE, world_gpt2_config

    tokenizer = load_tokenizer(tiny_model_dir)
    tokenizer.chat_template = CHAT_TEMPLATE
    names = list(AttributeWorld().attributes)
    torch.manual_seed(5)
    labels = dict(id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    config = world_gpt2_config(tokenizer, n_layer=1, n_head=2, n_embd=16, n_positions=64, num_labels=5, **labels)
    GPT2ForSequenceClassification(config).save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    scorer = SequenceClassifierReward(str(tmp_path / "rm"), output="logits", chat_template=True)
    module, data = build(tiny_model_dir, tmp_path / "run", scorer=scorer)
    record = RecordBatches()
    fit(module, data, max_steps=2, callbacks=[record])

    rm_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "rm")
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()

    def logits(prompt: str, completion: str) -> np.ndarray:
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
        text = rm_tokenizer.apply_chat_template(messages, tokenize=False)
        with torch.no_grad():
            return model(**rm_tokenizer(text, return_tensors="pt", add_special_tokens=False)).logits[0].double().numpy()

    for batch in record.batches:
        chosen, rejected = responses(batch, tokenizer)
        half = len(chosen)
        prompts = [tokenizer.decode(ids[labels == IGNORE_INDEX].tolist(), skip_special_tokens=True).strip()
                   for ids, labels in zip(batch["input_ids"][:half], batch["labels"][:half], strict=True)]  # fmt: skip
        expected = [logits(p, c) - logits(p, r) for p, c, r in zip(prompts, chosen, rejected, strict=True)]
        np.testing.assert_allclose(batch["columns"]["score_margins"].numpy(), expected, rtol=0, atol=1e-5)


def test_a_scorer_for_other_attributes_is_refused_in_one_line(tiny_model_dir: Path, tmp_path):
    from rdpo_lightning.rewards import AttributeWorldReward

    scorer = AttributeWorldReward(AttributeWorld(attributes=("anger", "fear", "joy")))
    module, data = build(tiny_model_dir, tmp_path, scorer=scorer)
    with pytest.raises(InputError, match=r"data.scorer \(AttributeWorldReward\) scores 3 attributes .* the world's 5"):
        fit(module, data, max_steps=1)


def test_a_generation_past_the_models_context_is_refused_before_any_step(tiny_model_dir: Path, tmp_path):
    from rdpo_lightning.online import OnlineSampling

    module, data = build(tiny_model_dir, tmp_path, generation=OnlineSampling(completions=2, max_new_tokens=63))
    with pytest.raises(InputError, match=r"data.generation.max_new_tokens=63 .* n_positions=64"):
        fit(module, data, max_steps=1)


class Flat:
    """A scorer that finds every completion alike: no pair survives."""

    attributes = AttributeWorld().attributes

    def to(self, device):
        return self

    def score_completions(self, prompts, completions):
        return np.ones((len(completions), len(self.attributes)))


def test_completions_that_all_tie_stop_the_fit_in_one_line(tiny_model_dir: Path, tmp_path):
    module, data = build(tiny_model_dir, tmp_path, scorer=Flat())
    with pytest.raises(InputError, match=r"online round 0: 3 passes .* gave no usable pair \(12 tied under alpha=0.10"):
        fit(module, data, max_steps=1)
