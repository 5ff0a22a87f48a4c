"""Models: loading a policy (:mod:`~rdpo_lightning.models.loading`), the one forward that scores responses
(:mod:`~rdpo_lightning.models.scoring`, fused output-layer log-probs, packed batches), dropout, adapters, the
Mixture-of-Experts router term, input-embedding capture and sharding for FSDP.

The names below were the flat layout's ``rdpo_lightning.models`` module; they stay importable from here.
"""

from rdpo_lightning.checks import DTYPES, looks_local, resolve_dtype  # noqa: F401 (the old models module's)
from rdpo_lightning.models.loading import build_policy, frozen_copy, load_causal_lm, quantization_config
from rdpo_lightning.models.scoring import (
    TokenScores,
    batch_logits,
    check_packing_support,
    model_inputs,
    score_tokens,
    token_logps,
)

__all__ = [
    "DTYPES",
    "TokenScores",
    "batch_logits",
    "build_policy",
    "check_packing_support",
    "frozen_copy",
    "load_causal_lm",
    "looks_local",
    "model_inputs",
    "quantization_config",
    "resolve_dtype",
    "score_tokens",
    "token_logps",
]
