"""``rdpo export``: a checkpoint of any strategy → a Hugging Face ``save_pretrained`` directory.

A checkpoint is a single file (single device, DDP, FSDP1 ``state_dict_type: full``) or a distributed-checkpoint
directory (FSDP1 ``sharded``, FSDP2) whose ``meta.pt`` holds everything but the tensors. Only the policy's weights
are read (not the optimizer state), the policy is rebuilt from the model and adapter configs the checkpoint records
(:mod:`rdpo_lightning.checkpoints.run_record`: the original model files are not needed), and written

* merged (default): adapters folded into the base weights, loadable with ``AutoModelForCausalLM.from_pretrained``;
* adapter only (``--adapter-only``): PEFT's ``adapter_config.json`` + weights, loadable with
  ``PeftModel.from_pretrained`` on the base model the run started from;

with the tokenizer (and its chat template), the generation config and a model card (``README.md``). The directory is
written under a temporary name beside the target and renamed at the end, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rdpo_lightning.checkpoints import run_record
from rdpo_lightning.checkpoints.adapter_only import describe, is_adapter_only, recorded_base
from rdpo_lightning.checkpoints.model_card import model_card
from rdpo_lightning.errors import InputError
from rdpo_lightning.models.adapters import REFERENCE_ADAPTER, TRAINED_ADAPTER, as_peft_config, is_adapter_key
from rdpo_lightning.models.digest import digest_matches, weights_digest
from rdpo_lightning.models.loading import load_causal_lm

#: the prefixes under which Lightning's distributed checkpoints store the module's state dict (FSDP2, FSDP1)
DCP_STATE_PREFIXES = ("state_dict.", "model.")
METADATA_FILE = "meta.pt"
WRAPPER_SEGMENTS = ("_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod")


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(the LightningModule's state dict, the rest of the checkpoint) from a file or a distributed-checkpoint
    directory; only model tensors are loaded from the latter."""
    path = Path(path).expanduser()
    if path.is_dir():
        return _read_distributed(path)
    if not path.is_file():
        raise InputError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as error:
        raise InputError(f"checkpoint {path} is not a PyTorch checkpoint file ({type(error).__name__})") from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise InputError(f"checkpoint {path} is not a Lightning checkpoint (no 'state_dict')")
    return checkpoint.pop("state_dict"), checkpoint


def _read_distributed(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from torch.distributed.checkpoint import FileSystemReader, load
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    if not (path / METADATA_FILE).is_file() or not (path / ".metadata").is_file():
        raise InputError(f"checkpoint {path} is a directory but not a Lightning distributed checkpoint (no meta.pt)")
    meta = torch.load(path / METADATA_FILE, map_location="cpu", weights_only=False)
    reader = FileSystemReader(str(path))
    stored = reader.read_metadata().state_dict_metadata
    prefix = next((p for p in DCP_STATE_PREFIXES if any(k.startswith(p + "policy.") for k in stored)), None)
    if prefix is None:
        raise InputError(f"checkpoint {path} holds no policy weights (not written by rdpo-lightning's RobustDPO)")
    state = {
        key[len(prefix) :]: torch.empty(item.size, dtype=item.properties.dtype)
        for key, item in stored.items()
        if key.startswith(prefix + "policy.") and isinstance(item, TensorStorageMetadata)
    }
    load({prefix.rstrip("."): state}, storage_reader=reader, no_dist=True)  # this process alone, even inside a run
    return state, meta


def policy_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The policy's weights, named as in the (possibly PEFT-wrapped) policy module: wrapper segments removed, the
    frozen ``reference`` adapter of a continued run left out."""
    out = {}
    for key, tensor in state.items():
        if not key.startswith("policy."):
            continue
        parts = [p for p in key[len("policy.") :].split(".") if p not in WRAPPER_SEGMENTS]
        if REFERENCE_ADAPTER in parts:
            continue
        out[".".join(parts)] = tensor
    return out


def record_of(meta: dict[str, Any], path: str | Path) -> dict[str, Any]:
    record = meta.get(run_record.KEY)
    if not isinstance(record, dict) or record.get("model_config") is None:
        raise InputError(
            f"checkpoint {path} was not written by rdpo-lightning's RobustDPO (it has no '{run_record.KEY}' record)"
        )
    return record


def rebuild_policy(
    record: dict[str, Any],
    state: dict[str, torch.Tensor],
    hparams: dict[str, Any] | None = None,
    base: str | None = None,
) -> nn.Module:
    """The trained policy from the checkpoint alone: the architecture from its recorded config (parameters
    allocated empty), the adapters from its recorded adapter config, then every weight from ``state``.

    Two checkpoints hold no usable base, and their trained adapters go onto the run's original base
    (``model.model``, or ``base`` where it lies now) instead: an adapter-only checkpoint
    (:mod:`rdpo_lightning.checkpoints.adapter_only`; the base must have the recorded weights digest), and a quantized
    base (QLoRA), stored quantized, which is read in its compute dtype so that the merged model is full-precision.
    """
    hparams = hparams or {}
    adapter_only = is_adapter_only(record)
    if record.get("adapter_config") is not None and (adapter_only or hparams.get("quantization")):
        return _adapters_on_original_base(record, state, hparams, base)
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config_dict = dict(record["model_config"])
    config = AutoConfig.for_model(config_dict.pop("model_type"), **config_dict)
    dtype = next((t.dtype for t in state.values() if t.is_floating_point()), torch.float32)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    if record.get("adapter_config") is not None:
        from peft import get_peft_model

        model = get_peft_model(model, as_peft_config(record["adapter_config"]))
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    tied = _tied_names(model)
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise InputError(
            f"the checkpoint's policy weights do not match its recorded model: missing {missing[:3]}, unexpected"
            f" {unexpected[:3]}"
        )
    _tie(model)
    return model.eval()


def _adapters_on_original_base(
    record: dict[str, Any], state: dict[str, torch.Tensor], hparams: dict[str, Any], base: str | None
) -> nn.Module:
    from peft import get_peft_model

    recorded = recorded_base(record)
    name = base or recorded.get("model") or hparams.get("model")
    if name is None:
        raise InputError(
            "this checkpoint holds the adapters only, and its base was built from model.model_config (random weights"
            " in no file): pass --base DIR, that base written by save_pretrained"
        )
    quantization = hparams.get("quantization")
    if quantization:
        dtype = str(quantization.get("bnb_4bit_compute_dtype", "bfloat16")).replace("torch.", "")
    else:
        dtype = hparams.get("torch_dtype")
    key = "--base" if base else "the checkpoint's base model.model"
    try:
        original = load_causal_lm(name, torch_dtype=dtype, key=key)
    except InputError as error:
        hint = "" if base else " (pass --base DIR where that base lies now)"
        raise InputError(f"{error}{hint}") from error
    digest = weights_digest(original) if not quantization and recorded.get("digest") else None
    # a quantized base was digested quantized: no check; an older tied base's digest hashed the tie twice
    if digest is not None and not digest_matches(recorded["digest"], digest, lambda: original):
        raise InputError(
            f"{key}={name} is not the base these adapters were trained on: its weights digest is {digest[:12]}, the"
            f" checkpoint's base is {describe(recorded)}"
        )
    model = get_peft_model(original, as_peft_config(record["adapter_config"]))
    trained = {k: v for k, v in state.items() if is_adapter_key(k, {TRAINED_ADAPTER})}
    _, unexpected = model.load_state_dict(trained, strict=False)
    wanted = {k for k in model.state_dict() if is_adapter_key(k, {TRAINED_ADAPTER})}
    if unexpected or wanted - set(trained):
        missing = sorted(wanted - set(trained))
        raise InputError(f"the checkpoint's adapter weights do not fit the base {name}: {(unexpected or missing)[:3]}")
    return model.eval()


def _base(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _tied_names(model: nn.Module) -> set[str]:
    """Parameter names a state dict may omit because they are tied to another (the output layer to the input
    embeddings)."""
    base = _base(model)
    if not getattr(base.config, "tie_word_embeddings", False):
        return set()
    prefix = "base_model.model." if base is not model else ""
    output = _unwrapped(base.get_output_embeddings())
    return {f"{prefix}{name}" for name, p in base.named_parameters(remove_duplicate=False) if p is output.weight}


def _unwrapped(layer: nn.Module) -> nn.Module:
    """The base layer inside a PEFT wrapper (``modules_to_save``'s ``original_module``, a LoRA layer's
    ``base_layer``): what the tie joins; a trained copy of the output layer stays its own weight."""
    for name in ("original_module", "base_layer"):
        inner = getattr(layer, name, None)
        if isinstance(inner, nn.Module):
            return _unwrapped(inner)
    return layer


def _tie(model: nn.Module) -> None:
    base = _base(model)
    if getattr(base.config, "tie_word_embeddings", False):
        output, embeddings = _unwrapped(base.get_output_embeddings()), _unwrapped(base.get_input_embeddings())
        output.weight = embeddings.weight


def export_checkpoint(
    checkpoint: str | Path,
    output: str | Path,
    adapter_only: bool = False,
    overwrite: bool = False,
    base: str | None = None,
) -> Path:
    """Write ``checkpoint`` as a Hugging Face model directory ``output`` (see the module docstring); returns it.
    ``base``: where an adapter-only checkpoint's base model lies now (default: the ``model.model`` it records)."""

    output = Path(output).expanduser()
    if output.exists() and not overwrite:
        raise InputError(f"export output {output} exists; choose another directory or pass --overwrite")
    state, meta = read_checkpoint(checkpoint)
    record = record_of(meta, checkpoint)
    if adapter_only and record.get("adapter_config") is None:
        raise InputError("--adapter-only: this checkpoint's policy has no adapters (model.peft / model.adapter unset)")
    model = rebuild_policy(record, policy_state(state), meta.get("hyper_parameters"), base)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.parent / f".{output.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        _write(model, record, meta, partial, adapter_only, base)
        (partial / "README.md").write_text(model_card(record, meta, Path(checkpoint), adapter_only))
        _replace(partial, output)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return output


def _write(
    model: nn.Module,
    record: dict[str, Any],
    meta: dict[str, Any],
    directory: Path,
    adapter_only: bool,
    base: str | None = None,
) -> None:
    from transformers import GenerationConfig

    directory.mkdir(parents=True)
    for name, content in record.get("tokenizer_files", {}).items():
        (directory / name).write_bytes(content)
    generation = record.get("generation_config")
    if adapter_only:
        base_name = base or (meta.get("hyper_parameters") or {}).get("model")
        model.peft_config["default"].base_model_name_or_path = base_name
        model.save_pretrained(directory)
        if generation:
            GenerationConfig.from_dict(generation).save_pretrained(directory)
        return
    merged = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    if generation:
        merged.generation_config = GenerationConfig.from_dict(generation)
    merged.save_pretrained(directory)


def _replace(partial: Path, output: Path) -> None:
    """Move the finished ``partial`` directory to ``output`` (replacing an old one only once the new one is whole)."""
    if not output.exists():
        partial.rename(output)
        return
    old = output.parent / f".{output.name}.old-{os.getpid()}"
    output.rename(old)
    try:
        partial.rename(output)
    except BaseException:
        old.rename(output)  # the previous export stays where it was
        raise
    shutil.rmtree(old, ignore_errors=True)
