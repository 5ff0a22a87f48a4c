"""The sequence-classifier reward against an unpadded, one-text-at-a-time forward of the same saved model; what it
reads of a prompt (nothing, the prompt before the completion, or its own chat template) against texts written out by
hand."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from tokenizers import processors
from transformers import AutoModelForSequenceClassification, AutoTokenizer, GPT2ForSequenceClassification

from rdpo_lightning.data.tokenizer import load_tokenizer
from rdpo_lightning.errors import InputError
from rdpo_lightning.rewards import SequenceClassifierReward
from tests.conftest import CHAT_TEMPLATE, world_gpt2_config

LABELS = ["sadness", "joy", "love", "anger", "fear", "surprise"]


def _save_classifier(tokenizer, labels: list[str], seed: int, directory: Path) -> Path:
    """A tiny randomly initialised GPT-2 classifier over ``labels`` and ``tokenizer``, saved like a user's."""
    torch.manual_seed(seed)
    config = world_gpt2_config(
        tokenizer, n_layer=1, n_head=2, n_embd=16, n_positions=64, num_labels=len(labels),
        id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)},
    )  # fmt: skip
    GPT2ForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory: pytest.TempPathFactory, world_tokenizer_dir: Path) -> Path:
    """A tiny emotion classifier saved like the paper's (6 labels)."""
    tokenizer = load_tokenizer(world_tokenizer_dir)
    return _save_classifier(tokenizer, LABELS, 0, tmp_path_factory.mktemp("tiny_emotion_classifier"))


def _unpadded(directory: Path, texts: list[str]) -> torch.Tensor:
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForSequenceClassification.from_pretrained(directory).eval()
    with torch.no_grad():
        return torch.cat([model(**tokenizer(t, return_tensors="pt")).logits for t in texts])


TEXTS = ["rage fury hate the day", "terror", "delight happy bright sunny merry glee laugh smile", "tears"]


@pytest.mark.parametrize("output", ["probabilities", "logits"])
def test_classifier_scores_match_an_unpadded_forward(classifier_dir: Path, output: str) -> None:
    reward = SequenceClassifierReward(str(classifier_dir), labels=["anger", "fear"], output=output, batch_size=3)
    assert reward.attributes == ("anger", "fear")
    logits = _unpadded(classifier_dir, TEXTS)
    expected = logits.softmax(-1) if output == "probabilities" else logits
    torch.testing.assert_close(reward.scores(TEXTS), expected[:, [3, 4]].double().numpy(), check_dtype=False)


def test_classifier_labels_by_index_default_to_all_and_reject_unknown(classifier_dir: Path) -> None:
    assert SequenceClassifierReward(str(classifier_dir)).attributes == tuple(LABELS)
    assert SequenceClassifierReward(str(classifier_dir), labels=[4, 0]).attributes == ("fear", "sadness")
    with pytest.raises(ValueError, match="'disgust' is not one of the classifier's labels"):
        SequenceClassifierReward(str(classifier_dir), labels=["disgust"])
    with pytest.raises(ValueError, match="index 9 is out of range"):
        SequenceClassifierReward(str(classifier_dir), labels=[9])


def test_classifier_scores_an_empty_completion_as_eos(classifier_dir: Path) -> None:
    reward = SequenceClassifierReward(str(classifier_dir), output="logits")
    scores = reward.scores(["", "terror"])
    torch.testing.assert_close(scores[0], _unpadded(classifier_dir, ["<eos>"])[0].double().numpy(), check_dtype=False)


JUDGED = ["helpful", "harmless", "honest"]


@pytest.fixture(scope="module")
def chat_classifier_dir(tmp_path_factory: pytest.TempPathFactory, world_tokenizer_dir: Path) -> Path:
    """A tiny 3-label reward model whose tokenizer has a chat template and, like Llama's, adds a BOS to every text it
    tokenises (so a rendered conversation tokenised with special tokens would start with two)."""
    tokenizer = load_tokenizer(world_tokenizer_dir)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", tokenizer.bos_token_id)]
    )
    return _save_classifier(tokenizer, JUDGED, 1, tmp_path_factory.mktemp("tiny_chat_reward_model"))


PROMPTS = ["rage fury", "the day", "tears"]
COMPLETIONS = ["delight happy bright", "terror", "smile"]


def _logits_of_ids(directory: Path, ids: list[list[int]]) -> torch.Tensor:
    model = AutoModelForSequenceClassification.from_pretrained(directory).eval()
    with torch.no_grad():
        return torch.cat([model(input_ids=torch.tensor([row])).logits for row in ids])


def test_chat_template_scores_the_conversation_rendered_by_the_classifiers_own_template(chat_classifier_dir) -> None:
    # three texts of different lengths at batch_size 2: a padded batch and a single
    reward = SequenceClassifierReward(str(chat_classifier_dir), ["honest", "helpful"], batch_size=2, chat_template=True)
    scores = reward.score_completions(PROMPTS, COMPLETIONS)
    tokenizer = AutoTokenizer.from_pretrained(chat_classifier_dir)
    rendered = [f"<bos> user {p} <eos> <bos> assistant {c} <eos> " for p, c in zip(PROMPTS, COMPLETIONS, strict=True)]
    assert reward.texts_for(PROMPTS, COMPLETIONS) == rendered
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in rendered]
    assert tokenizer(rendered[0])["input_ids"][:2] == [tokenizer.bos_token_id] * 2  # what adding them would do
    expected = _logits_of_ids(chat_classifier_dir, ids).softmax(-1)[:, [2, 0]]
    torch.testing.assert_close(scores, expected.double().numpy(), check_dtype=False)


def test_include_prompt_scores_the_prompt_then_the_completion_and_the_default_the_completion(
    chat_classifier_dir: Path,
) -> None:
    joined = [f"{p} {c}" for p, c in zip(PROMPTS, COMPLETIONS, strict=True)]
    with_prompt = SequenceClassifierReward(str(chat_classifier_dir), output="logits", include_prompt=True)
    torch.testing.assert_close(
        with_prompt.score_completions(PROMPTS, COMPLETIONS),
        _unpadded(chat_classifier_dir, joined).double().numpy(),
        check_dtype=False,
    )
    alone = SequenceClassifierReward(str(chat_classifier_dir), output="logits")
    torch.testing.assert_close(
        alone.score_completions(PROMPTS, COMPLETIONS),
        _unpadded(chat_classifier_dir, COMPLETIONS).double().numpy(),
        check_dtype=False,
    )


def test_chat_template_without_a_template_is_one_line_naming_the_model(classifier_dir: Path) -> None:
    reward = SequenceClassifierReward(str(classifier_dir), chat_template=True)
    named = re.escape(f"SequenceClassifierReward(model={classifier_dir}) has chat_template true")
    with pytest.raises(InputError, match=f"^{named}") as caught:
        reward.score_completions(["the day"], ["tears"])
    assert "\n" not in str(caught.value)
