"""``generate`` on a batch of prompts of uneven length: left-padded, so every row continues from its last real token.

Shared by the generation evaluation and the online rounds, which sample from the policy as it trains.
"""

from __future__ import annotations

from typing import Any

import torch

from rdpo_lightning.known_warnings import dropped_log_message

NO_MASK_NOTICE = "We strongly recommend passing in an `attention_mask`"


def generate_left_padded(
    policy: torch.nn.Module, rows: list[list[int]], tokenizer: Any, config: Any, device: torch.device, synced: bool
) -> tuple[torch.Tensor, int]:
    """``policy.generate`` on the prompt token ids ``rows``, left-padded with the tokenizer's own padding (its
    ``padding_side`` setting is left alone: the DataModule shares it); returns the output ids and the prompts' padded
    width (the new tokens start there). ``synced``: every data-parallel rank generates in lockstep."""
    batch = tokenizer.pad({"input_ids": rows}, padding=True, padding_side="left", return_tensors="pt")
    # the mask is passed; transformers' padding check misfires on the decoding steps that feed finished rows their pad
    # token (GPT-2 checks the step's input_ids without the mask generate keeps in its cache)
    with dropped_log_message("transformers.modeling_utils", NO_MASK_NOTICE):
        output = policy.generate(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            generation_config=config,
            synced_gpus=synced,
        )
    return output, batch["input_ids"].shape[1]


def cuda_devices(device: torch.device) -> list[int]:
    """The CUDA device whose random state sampling forks (``torch.random.fork_rng``): none off CUDA."""
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]
