"""Responses sampled from a policy, as the paper does (two completions per prompt from the SFT model).

Sampling is the slow part of building such a data set, so the completions are cached on disk under a key made of
the policy's files, the tokenizer, the prompts, the sampling settings and the seed: ``prepare_data`` samples once
and ``setup`` (on every rank) reads the cache.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets.fingerprint import Hasher

from rdpo_lightning.checks import resolve_dtype

log = logging.getLogger(__name__)


@dataclass
class SamplingConfig:
    """How completions are drawn from the policy (``transformers`` ``generate`` with sampling).

    ``device``: where the policy runs (default: CUDA when available, else CPU); ``dtype``: float32, bfloat16, ...
    """

    max_new_tokens: int = 16
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    batch_size: int = 32
    device: str | None = None
    dtype: str | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("data.sampling.max_new_tokens and data.sampling.batch_size must be >= 1")
        if not self.temperature > 0:
            raise ValueError(f"data.sampling.temperature must be > 0, got {self.temperature}")


def policy_fingerprint(policy: str) -> str:
    """A local directory by its files' names, sizes and modification times; a Hub name by itself."""
    path = Path(policy)
    if not path.is_dir():
        return policy
    stats = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in path.iterdir() if p.is_file())
    return Hasher.hash([str(path.resolve()), stats])


def sample_completions(
    policy: str,
    tokenizer: Any,
    prompts: Sequence[str],
    num_per_prompt: int,
    config: SamplingConfig,
    seed: int,
    cache_dir: str | os.PathLike | None = None,
) -> list[list[str]]:
    """``num_per_prompt`` sampled completions (decoded text) for each prompt, cached under ``cache_dir``."""
    key = Hasher.hash(
        [policy_fingerprint(policy), Hasher.hash(tokenizer), list(prompts), num_per_prompt, _settings(config), seed]
    )
    cache = Path(cache_dir) / "generations" / f"{key}.json" if cache_dir is not None else None
    if cache is not None and cache.exists():
        return json.loads(cache.read_text())
    completions = _generate(policy, tokenizer, prompts, num_per_prompt, config, seed)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(completions))
        tmp.replace(cache)
    return completions


def _settings(config: SamplingConfig) -> dict[str, Any]:
    settings = dataclasses.asdict(config)
    settings.pop("device")  # where it runs does not change what is asked for
    return settings


def _generate(
    policy: str, tokenizer: Any, prompts: Sequence[str], num_per_prompt: int, config: SamplingConfig, seed: int
) -> list[list[str]]:
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM

    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = resolve_dtype(config.dtype)
    model = AutoModelForCausalLM.from_pretrained(policy, **({"dtype": dtype} if dtype is not None else {}))
    vocab = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > vocab:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but the policy {policy} embeds only {vocab}: "
            "sample with the tokenizer the policy was trained with"
        )
    model.to(device).eval()
    sampling = {"do_sample": True, "temperature": config.temperature, "top_k": config.top_k, "top_p": config.top_p}
    completions: list[list[str]] = []
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues from the last real token
    try:
        cuda_devices = [torch.device(device).index or 0] if device.startswith("cuda") else []
        with torch.random.fork_rng(devices=cuda_devices):
            torch.manual_seed(seed)
            batches = range(0, len(prompts), config.batch_size)
            for start in tqdm(batches, desc=f"sampling completions from {policy}", unit="batch"):
                chunk = list(prompts[start : start + config.batch_size])
                inputs = tokenizer(chunk, return_tensors="pt", padding=True).to(device)
                with torch.no_grad():
                    output = model.generate(
                        **inputs,
                        max_new_tokens=config.max_new_tokens,
                        num_return_sequences=num_per_prompt,
                        pad_token_id=tokenizer.pad_token_id,
                        eos_token_id=tokenizer.eos_token_id,
                        **sampling,
                    )
                texts = tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
                texts = [t.strip() for t in texts]
                n = num_per_prompt
                completions.extend(texts[i * n : (i + 1) * n] for i in range(len(chunk)))
    finally:
        tokenizer.padding_side = side
    log.info("sampled %d completions for %d prompts from %s", len(prompts) * num_per_prompt, len(prompts), policy)
    return completions
