"""The sequence-classifier reward against an unpadded, one-text-at-a-time forward of the same saved model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, GPT2ForSequenceClassification

from rdpo_lightning.data.tokenizer import load_tokenizer
from rdpo_lightning.rewards import SequenceClassifierReward
from tests.conftest import world_gpt2_config

LABELS = ["sadness", "joy", "love", "anger", "fear", "surprise"]


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory: pytest.TempPathFactory, world_tokenizer_dir: Path) -> Path:
    """A tiny randomly initialised GPT-2 emotion classifier saved like the paper's (6 labels)."""
    tokenizer = load_tokenizer(world_tokenizer_dir)
    torch.manual_seed(0)
    config = world_gpt2_config(
        tokenizer, n_layer=1, n_head=2, n_embd=16, n_positions=64, num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)), label2id={name: i for i, name in enumerate(LABELS)},
    )  # fmt: skip
    directory = tmp_path_factory.mktemp("tiny_emotion_classifier")
    GPT2ForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


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
