"""The embedded attribute world: a miniature of the paper's emotion task that runs anywhere, deterministically.

Words come from K attribute lexicons ("emotions") and a neutral lexicon. A prompt is a few neutral words; a response
is a handful of words whose attribute composition varies. The attribute rewards play the paper's emotion classifier:
a softmax over the K attributes plus a neutral class of ``sharpness`` × (share of the response's words in that
lexicon), so the rewards are probabilities that trade off against each other, as the classifier's do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

LEXICONS: dict[str, tuple[str, ...]] = {
    "sadness": ("tears", "grief", "lonely", "gloomy", "sorrow", "weep", "mourn", "despair", "miserable",
                "heartbroken", "melancholy", "bleak"),
    "joy": ("delight", "cheerful", "laugh", "happy", "bright", "glee", "smile", "sunny", "merry", "bliss",
            "thrilled", "jolly"),
    "love": ("adore", "tender", "dear", "cherish", "embrace", "affection", "sweetheart", "devoted", "warm", "kiss",
             "beloved", "romance"),
    "anger": ("rage", "furious", "hate", "fury", "snarl", "outrage", "wrath", "bitter", "hostile", "seethe",
              "resent", "scorn"),
    "fear": ("terror", "dread", "panic", "afraid", "tremble", "scared", "horror", "anxious", "nervous", "fright",
             "shiver", "haunted"),
}  # fmt: skip

NEUTRAL: tuple[str, ...] = (
    "the", "a", "day", "walk", "city", "table", "window", "morning", "river", "road", "book", "friend", "letter",
    "house", "train", "garden", "night", "street", "door", "cup", "coffee", "rain", "sky", "room", "chair", "music",
    "voice", "paper", "story", "market", "evening", "bridge", "forest", "station", "field", "lamp", "clock", "car",
    "boat", "hill",
)  # fmt: skip


@dataclass
class AttributeWorld:
    """Deterministic generator of prompts, responses and attribute rewards.

    ``attributes`` picks lexicons by name (default: all five emotions, in the paper's order).
    ``response_words`` is the response length in words; ``neutral_share`` the (min, max) share of neutral words;
    ``concentration`` the Dirichlet concentration of a response's attribute composition (small = one dominant
    attribute); ``sharpness`` how peaked the reward "classifier" is.
    """

    attributes: Sequence[str] = ("sadness", "joy", "love", "anger", "fear")
    prompt_words: int = 4
    response_words: int = 8
    neutral_share: tuple[float, float] = (0.2, 0.6)
    concentration: float = 0.5
    sharpness: float = 6.0
    lexicons: dict[str, Sequence[str]] = field(default_factory=lambda: dict(LEXICONS))
    neutral_words: Sequence[str] = NEUTRAL

    def __post_init__(self) -> None:
        unknown = [a for a in self.attributes if a not in self.lexicons]
        if unknown:
            raise ValueError(f"unknown attribute(s) {unknown}; known: {sorted(self.lexicons)}")
        if len(set(self.attributes)) != len(self.attributes):
            raise ValueError(f"attributes repeat: {list(self.attributes)}")
        if self.prompt_words < 1 or self.response_words < 1:
            raise ValueError("prompt_words and response_words must be >= 1")
        low, high = self.neutral_share
        if not 0.0 <= low <= high < 1.0:
            raise ValueError(f"neutral_share must satisfy 0 <= min <= max < 1, got {self.neutral_share}")
        if not self.concentration > 0 or not self.sharpness > 0:
            raise ValueError("concentration and sharpness must be > 0")
        self._word_class = {w: len(self.attributes) for w in self.neutral_words}
        for k, name in enumerate(self.attributes):
            for word in self.lexicons[name]:
                self._word_class[word] = k

    @property
    def num_attributes(self) -> int:
        return len(self.attributes)

    def vocabulary(self) -> list[str]:
        """Every word the world can emit (neutral first, then each lexicon), for building its tokenizer."""
        words = list(self.neutral_words)
        for name in self.attributes:
            words.extend(self.lexicons[name])
        return list(dict.fromkeys(words))

    def attribute_index(self, name: str) -> int:
        if name not in self.attributes:
            raise ValueError(f"unknown attribute {name!r}; this world has {list(self.attributes)}")
        return list(self.attributes).index(name)

    def sample_prompts(self, n: int, rng: np.random.Generator) -> list[str]:
        words = np.asarray(self.neutral_words)
        return [" ".join(rng.choice(words, size=self.prompt_words)) for _ in range(n)]

    def sample_responses(self, n: int, rng: np.random.Generator) -> list[str]:
        """Responses whose attribute composition is drawn from a Dirichlet, diluted by neutral words."""
        k = self.num_attributes
        pools = [np.asarray(self.lexicons[a]) for a in self.attributes] + [np.asarray(self.neutral_words)]
        responses = []
        for _ in range(n):
            neutral = rng.uniform(*self.neutral_share)
            probs = np.append(rng.dirichlet([self.concentration] * k) * (1 - neutral), neutral)
            classes = rng.choice(k + 1, size=self.response_words, p=probs)
            responses.append(" ".join(rng.choice(pools[c]) for c in classes))
        return responses

    def attribute_rewards(self, texts: Sequence[str]) -> np.ndarray:
        """(n, K) rewards in (0, 1): the classifier's probability of each attribute. Unknown words count as neutral."""
        k = self.num_attributes
        counts = np.zeros((len(texts), k + 1))
        for i, text in enumerate(texts):
            words = text.split()
            for word in words:
                counts[i, self._word_class.get(word, k)] += 1
            counts[i] /= max(len(words), 1)
        logits = self.sharpness * counts
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        return probs[:, :k]
