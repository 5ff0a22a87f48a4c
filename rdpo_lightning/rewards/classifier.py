"""A Hugging Face sequence classifier as the reward: the paper's GPT-2 emotion classifier, or any other.

The chosen labels' probabilities (softmax over *all* labels, as the paper reads its emotion classifier) or raw logits
are the attributes. A reward model trained on conversations sees each completion the way it was trained: rendered
with the prompt through its *own* tokenizer's chat template (``chat_template``), or after the prompt
(``include_prompt``); by default the completion alone is scored. The model loads lazily, on first use, so a YAML
config can name it without loading it at parse time, and it is moved next to the policy by the evaluation callback.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from rdpo_lightning.checks import resolve_dtype
from rdpo_lightning.errors import InputError
from rdpo_lightning.rewards.base import RewardFunction


class SequenceClassifierReward(RewardFunction):
    """Scores from ``AutoModelForSequenceClassification``.

    Args:
        model: name or local path of the classifier (its tokenizer must be saved with it).
        labels: which labels are the attributes, by name (``config.id2label``) or index, in the order of the
            mixtures' weights; default: all labels in index order.
        output: ``probabilities`` (softmax over all labels, then the chosen ones) or ``logits``.
        batch_size: texts per classifier forward.
        max_length: texts are truncated to this many tokens.
        torch_dtype: dtype to load the classifier in (e.g. ``bfloat16`` on GPU).
        include_prompt: :meth:`score_completions` scores ``prompt + " " + completion``, for a classifier that judges
            an answer against its question.
        chat_template: :meth:`score_completions` scores the user prompt and the assistant completion rendered by the
            classifier's own chat template (which places its special tokens itself: none are added when tokenising),
            for a reward model trained on conversations; implies the prompt is included. Prompts are the user's
            text, not one rendered by the policy's template.
    """

    def __init__(
        self,
        model: str,
        labels: list[str | int] | None = None,
        output: Literal["probabilities", "logits"] = "probabilities",
        batch_size: int = 32,
        max_length: int = 512,
        torch_dtype: str | None = None,
        include_prompt: bool = False,
        chat_template: bool = False,
    ) -> None:
        from transformers import AutoConfig

        if output not in ("probabilities", "logits"):
            raise ValueError(f"rewards output must be 'probabilities' or 'logits', got {output!r}")
        if batch_size < 1 or max_length < 1:
            raise ValueError(f"rewards batch_size and max_length must be >= 1, got {batch_size} and {max_length}")
        config = AutoConfig.from_pretrained(model)  # a wrong model path fails here, before anything is set
        self.model_name = model
        self.output = output
        self.batch_size = batch_size
        self.max_length = max_length
        self.torch_dtype = torch_dtype
        self.include_prompt = include_prompt
        self.chat_template = chat_template
        names = [str(config.id2label[i]) for i in range(config.num_labels)]
        self.label_indices = [self._label_index(label, names) for label in (labels if labels is not None else names)]
        self._attributes = tuple(names[i] for i in self.label_indices)
        self.device = torch.device("cpu")
        self.model = None
        self.tokenizer = None

    @staticmethod
    def _label_index(label: str | int, names: list[str]) -> int:
        if isinstance(label, int) and not isinstance(label, bool):
            if not 0 <= label < len(names):
                raise ValueError(f"rewards label index {label} is out of range; the classifier has {len(names)} labels")
            return label
        if label not in names:
            raise ValueError(f"rewards label {label!r} is not one of the classifier's labels {names}")
        return names.index(label)

    @property
    def attributes(self) -> tuple[str, ...]:
        return self._attributes

    def __repr__(self) -> str:
        return f"SequenceClassifierReward(model={self.model_name})"

    def texts_for(self, prompts: list[str], completions: list[str]) -> list[str]:
        """What the classifier reads for each completion: rendered by its chat template, after its prompt, or
        alone (see the class arguments)."""
        if self.chat_template:
            if self.tokenizer is None:
                self._load()
            if getattr(self.tokenizer, "chat_template", None) is None:
                raise InputError(
                    f"{self!r} has chat_template true but its tokenizer has no chat template: save one with the "
                    "classifier's tokenizer, or set chat_template false"
                )
            return [
                self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": p}, {"role": "assistant", "content": c}], tokenize=False
                )
                for p, c in zip(prompts, completions, strict=True)
            ]
        if self.include_prompt:
            return [f"{p} {c}" for p, c in zip(prompts, completions, strict=True)]
        return list(completions)

    def completion_scores(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        # a rendered conversation holds its special tokens already (a second BOS would be out of distribution)
        return self.classify(self.texts_for(prompts, completions), add_special_tokens=not self.chat_template)

    def to(self, device: torch.device) -> SequenceClassifierReward:
        self.device = torch.device(device)
        if self.model is not None:
            self.model.to(self.device)
        return self

    def _load(self) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.model_name)
        if tokenizer.pad_token_id is None:
            if tokenizer.eos_token is None:
                raise ValueError(f"reward tokenizer {self.model_name} has neither a pad nor an eos token to pad with")
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "right"
        kwargs = {"dtype": resolve_dtype(self.torch_dtype)} if self.torch_dtype else {}
        model = AutoModelForSequenceClassification.from_pretrained(self.model_name, **kwargs)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id  # GPT-2 style heads find the last non-pad token
        self.tokenizer, self.model = tokenizer, model.eval().to(self.device)

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        return self.classify(texts)

    @torch.no_grad()
    def classify(self, texts: Sequence[str], add_special_tokens: bool = True) -> torch.Tensor:
        """An empty text is scored as the tokenizer's EOS (or pad) token alone: a classifier needs one token."""
        if self.model is None:
            self._load()
        filler = self.tokenizer.eos_token or self.tokenizer.pad_token
        texts = [text if text.strip() else filler for text in texts]
        pieces = []
        for start in range(0, len(texts), self.batch_size):
            encoded = self.tokenizer(
                texts[start : start + self.batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                add_special_tokens=add_special_tokens,
                return_tensors="pt",
            ).to(self.device)
            logits = self.model(**encoded).logits.float()
            scores = logits.softmax(-1) if self.output == "probabilities" else logits
            pieces.append(scores[:, self.label_indices].cpu())
        if not pieces:
            return torch.zeros(0, len(self.label_indices))
        return torch.cat(pieces)
