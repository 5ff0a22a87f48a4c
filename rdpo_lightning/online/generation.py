"""k completions per prompt from the policy as it is now: eval mode, no gradients, adapters on, then back to training.

The sampling draws from its own seed (the round's), inside ``torch.random.fork_rng``: the training's random state is
left as it was, and a round is drawn again exactly when a resumed fit reaches it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from rdpo_lightning.checks import check_int_at_least
from rdpo_lightning.models.sampling import cuda_devices, generate_left_padded


@dataclass
class OnlineSampling:
    """How the policy writes its completions (``generate`` with sampling; YAML ``data.init_args.sampling``).

    ``completions``: k per prompt (>= 2, to make pairs); ``batch_size``: prompts per ``generate`` call; ``top_k=0``
    and ``top_p=1`` sample from the policy's full distribution.
    """

    completions: int = 2
    max_new_tokens: int = 16
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    batch_size: int = 32

    def __post_init__(self) -> None:
        check_int_at_least("data.generation.completions", self.completions, 2)
        check_int_at_least("data.generation.max_new_tokens", self.max_new_tokens, 1)
        check_int_at_least("data.generation.batch_size", self.batch_size, 1)
        check_int_at_least("data.generation.top_k", self.top_k, 0)
        if not self.temperature > 0:
            raise ValueError(f"data.generation.temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"data.generation.top_p must lie in (0, 1], got {self.top_p}")


@contextmanager
def generating(policy: torch.nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) and no gradients for the duration; the policy's mode as it was afterwards."""
    was_training = policy.training
    policy.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        policy.train(was_training)


@dataclass
class Completions:
    """Per prompt, its k completions: the token ids the policy wrote (up to and including its EOS, which a completion
    cut at ``max_new_tokens`` does not have: the pair trains on exactly what was sampled, as TRL does) and their text
    (what the scorers read); and the tokens generated in all."""

    ids: list[list[list[int]]]
    texts: list[list[str]]
    tokens: int


def written_ids(row: torch.Tensor, eos: int | None) -> list[int]:
    """The ids a completion's row holds up to its first EOS (kept; ``generate`` pads a finished row after it), or all
    of them when it ran to ``max_new_tokens`` (no padding then: a pad id inside is a token the policy sampled)."""
    ids = row.tolist()
    if eos is not None and eos in ids:
        return ids[: ids.index(eos) + 1]
    return ids


def generate_completions(
    policy: torch.nn.Module,
    tokenizer: Any,
    prompt_ids: Sequence[Sequence[int]],
    sampling: OnlineSampling,
    seed: int,
    device: torch.device,
    synced: bool = False,
    progress: Any = None,
) -> Completions:
    """``sampling.completions`` completions for each prompt (token ids).

    ``synced``: every data-parallel rank generates in lockstep (a sharded model needs every rank in every forward).
    ``progress``: a tqdm bar advanced by the prompts done."""
    from transformers import GenerationConfig

    config = GenerationConfig(
        max_new_tokens=sampling.max_new_tokens,
        do_sample=True,
        temperature=sampling.temperature,
        top_k=sampling.top_k,
        top_p=sampling.top_p,
        num_return_sequences=sampling.completions,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    k = sampling.completions
    ids: list[list[list[int]]] = []
    texts: list[list[str]] = []
    tokens = 0
    with generating(policy), torch.random.fork_rng(devices=cuda_devices(device)):
        torch.manual_seed(seed)
        for start in range(0, len(prompt_ids), sampling.batch_size):
            rows = [list(ids) for ids in prompt_ids[start : start + sampling.batch_size]]
            output, width = generate_left_padded(policy, rows, tokenizer, config, device, synced)
            written = [written_ids(row, tokenizer.eos_token_id) for row in output[:, width:]]
            tokens += sum(len(w) for w in written)
            decoded = [t.strip() for t in tokenizer.batch_decode(written, skip_special_tokens=True)]
            ids.extend(written[i * k : (i + 1) * k] for i in range(len(rows)))
            texts.extend(decoded[i * k : (i + 1) * k] for i in range(len(rows)))
            if progress is not None:
                progress.update(len(rows))
    return Completions(ids, texts, tokens)
