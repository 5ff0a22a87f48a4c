"""LoRA plus a trained output layer (PEFT ``modules_to_save: [lm_head]``, the way a resized or retrained head is
trained beside adapters) on the tiny GPT-2, whose output layer is tied to its input embeddings: the adapter-only
checkpoint keeps the trained copy, a resume restores it (and its AdamW moments) so the next step is the uninterrupted
run's bitwise, and ``rdpo export`` writes it, merged and ``--adapter-only``, from adapter-only and full checkpoints.

Two in-process fits: 3 AdamW steps writing a checkpoint per step, and a resume from step 2 to step 3 that writes full
checkpoints (``model.adapter_only_checkpoints: false``).
"""

from __future__ import annotations

import functools

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from peft import LoraConfig, PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from rdpo_lightning.checkpoints.export import export_checkpoint
from tests.lora_fits import fit

LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["c_attn"], "modules_to_save": ["lm_head"]}
COPY = "base_model.model.lm_head.modules_to_save.default.weight"  # the trained output layer, in the PEFT policy
ADAMW = functools.partial(torch.optim.AdamW, lr=1e-2)


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("modules_to_save")
    every_step = ModelCheckpoint(dirpath=root / "steps", filename="{step}", every_n_train_steps=1, save_top_k=-1)
    trainer_args = {"callbacks": [every_step], "enable_checkpointing": True}
    common = {"peft": LoraConfig(**LORA), "optimizer": ADAMW, "data": {"batch_size": 4}}
    whole = fit(tiny_model_dir, root / "cache", steps=3, trainer_args=trainer_args, **common)
    resumed = fit(
        tiny_model_dir, root / "cache", steps=3, fit_args={"ckpt_path": str(root / "steps" / "step=2.ckpt")},
        adapter_only_checkpoints=False, **common,
    )  # fmt: skip
    resumed.trainer.save_checkpoint(root / "resumed_full.ckpt")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64)
    return {"root": root, "whole": whole, "resumed": resumed, "base": base, "base_dir": tiny_model_dir}


def checkpoint(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def test_the_adapter_only_checkpoint_holds_the_trained_output_layer(runs):
    base, trained = runs["base"], dict(runs["whole"].policy.named_parameters())
    assert base.config.tie_word_embeddings and COPY in trained and trained[COPY].requires_grad
    step2, step3 = (checkpoint(runs["root"] / "steps" / f"step={s}.ckpt") for s in (2, 3))
    assert step2["rdpo"]["base"]["adapter_only"] and step3["rdpo"]["base"]["adapter_only"]
    held = {k.removeprefix("policy."): v for k, v in step3["state_dict"].items() if k.startswith("policy.")}
    assert held.keys() == {n for n, p in trained.items() if p.requires_grad}  # LoRA A/B and the head copy only
    assert all(torch.equal(held[n], trained[n].detach()) for n in held)
    moved = (held[COPY] - base.lm_head.weight.detach()).abs().max()
    assert moved > 1e-3, moved  # the head trained away from the base's (tied) one


def test_a_resume_restores_it_and_takes_the_uninterrupted_runs_next_step(runs):
    whole, resumed = runs["whole"].policy.state_dict(), runs["resumed"].policy.state_dict()
    step2 = checkpoint(runs["root"] / "steps" / "step=2.ckpt")["state_dict"]
    assert (step2[f"policy.{COPY}"] - whole[COPY]).abs().max() > 1e-4  # step 3 moved the head: it took part
    assert whole.keys() == resumed.keys()
    assert [k for k in whole if not torch.equal(whole[k], resumed[k])] == []


@pytest.mark.parametrize(
    ("source", "run"), [("steps/step=3.ckpt", "whole"), ("resumed_full.ckpt", "resumed")], ids=["adapter_only", "full"]
)
def test_export_writes_the_trained_output_layer(runs, source, run, tmp_path):
    path, base = runs["root"] / source, runs["base"]
    trained = {n: p.detach() for n, p in runs[run].policy.named_parameters()}
    merged_dir = export_checkpoint(path, tmp_path / "merged")
    merged = load_file(merged_dir / "model.safetensors")
    assert torch.equal(merged["lm_head.weight"], trained[COPY])
    assert torch.equal(merged["transformer.wte.weight"], base.transformer.wte.weight.detach())  # the base's, frozen
    loaded = AutoModelForCausalLM.from_pretrained(merged_dir)  # not tied back to the input embeddings on loading
    assert torch.equal(loaded.lm_head.weight, trained[COPY]) and not loaded.config.tie_word_embeddings

    adapter_dir = export_checkpoint(path, tmp_path / "adapter", adapter_only=True)
    adapter = load_file(adapter_dir / "adapter_model.safetensors")
    assert torch.equal(adapter["base_model.model.lm_head.weight"], trained[COPY])
    lora = {n.replace(".default", ""): t for n, t in trained.items() if "lora_" in n}
    assert lora and all(torch.equal(adapter[n], t) for n, t in lora.items())
    on_base = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(runs["base_dir"], dtype=torch.float64), adapter_dir
    )
    assert torch.equal(on_base.get_output_embeddings().weight, trained[COPY])


def test_a_full_checkpoint_may_leave_out_the_tied_base_head_but_not_the_trained_copy(runs):
    """A state dict may omit the output layer's base weight (it is the input embeddings, tied); the trained copy is no
    tied weight, and a state dict without it is refused rather than exported with an empty head."""
    from rdpo_lightning.checkpoints.export import policy_state, read_checkpoint, rebuild_policy, record_of
    from rdpo_lightning.errors import InputError

    path = runs["root"] / "resumed_full.ckpt"
    state, meta = read_checkpoint(path)
    state, record = policy_state(state), record_of(meta, path)
    tied_head = "base_model.model.lm_head.original_module.weight"
    without_tied = rebuild_policy(record, {k: v for k, v in state.items() if k != tied_head})
    head = without_tied.base_model.model.lm_head
    assert head.original_module.weight is without_tied.base_model.model.transformer.wte.weight
    assert torch.equal(head.modules_to_save["default"].weight, state[COPY])
    with pytest.raises(InputError, match="do not match its recorded model: missing .*modules_to_save"):
        rebuild_policy(record, {k: v for k, v in state.items() if k != COPY})
