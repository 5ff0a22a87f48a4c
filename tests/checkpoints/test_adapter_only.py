"""Adapter-only checkpoints of LoRA runs: what they hold (the trainable weights, counted from the model itself), what
they record (the base's digest, computed here from the base loaded by transformers alone), that they restore every
weight bitwise, that export works from them, and the one-line refusals: another base on resume and export, a base
that is gone, a run without adapters, the switch where it cannot work. The bitwise SIGKILL resume of an adapter-only
run is in tests/test_reproducibility.py, FSDP2 (every rank's shards) in tests/distributed/test_adapter_checkpoints.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from peft import LoraConfig
from transformers import AutoModelForCausalLM

from rdpo_lightning.checkpoints.adapter_only import resolve
from rdpo_lightning.checkpoints.export import export_checkpoint
from rdpo_lightning.cli.export import main
from rdpo_lightning.errors import InputError
from rdpo_lightning.models.digest import weights_digest
from tests.lora_fits import brute_logps, fit

LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["c_attn", "c_fc"], "modules_to_save": ["ln_f"]}


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    """The same 2-step LoRA fit on a copy of the tiny model (a base that a test may move away), with adapter-only
    checkpoints (the default) and with full ones; both checkpoints and the trained modules."""
    root = tmp_path_factory.mktemp("adapter_checkpoints")
    base = root / "base"
    shutil.copytree(tiny_model_dir, base)
    out = {"base": base, "root": root}
    for name, setting in (("adapter_only", None), ("full", False)):
        module = fit(base, root / "cache", steps=2, peft=LoraConfig(**LORA), adapter_only_checkpoints=setting)
        module.trainer.save_checkpoint(root / f"{name}.ckpt")
        out[name] = (root / f"{name}.ckpt", module)
    return out


def policy_tensors(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("policy.")}


def test_the_checkpoint_holds_exactly_the_trainable_weights_and_records_the_base(runs, capsys):
    path, module = runs["adapter_only"]
    held = policy_tensors(path)
    trainable = {f"policy.{n}": p for n, p in module.policy.named_parameters() if p.requires_grad}
    assert held.keys() == trainable.keys()  # LoRA A/B and the modules_to_save copy; no base weight
    assert all(torch.equal(held[k], trainable[k].detach()) for k in held)
    record = torch.load(path, map_location="cpu", weights_only=False)["rdpo"]["base"]
    base = AutoModelForCausalLM.from_pretrained(runs["base"], dtype=torch.float64)  # the base alone, no PEFT
    assert record == {"model": str(runs["base"]), "digest": weights_digest(base), "adapter_only": True}

    full = policy_tensors(runs["full"][0])
    assert set(held) < set(full) and len(full) > 3 * len(held)
    nbytes = {name: sum(t.numel() * t.element_size() for t in tensors.values()) for name, tensors in
              (("adapter_only", held), ("full", full))}  # fmt: skip
    assert nbytes["adapter_only"] == sum(p.numel() * p.element_size() for p in trainable.values())
    sizes = {name: runs[name][0].stat().st_size for name in ("adapter_only", "full")}
    with capsys.disabled():
        print(f"\ntiny GPT-2 + LoRA r=4 checkpoint: {sizes} bytes; policy tensors {nbytes} bytes")
    assert sizes["adapter_only"] < 0.5 * sizes["full"]


def restore(base: Path, checkpoint: Path, cache: Path, steps: int = 2, **module_args):
    """A new module whose fit restores ``checkpoint`` and stops there (``max_steps`` already reached)."""
    return fit(
        base, cache, steps=steps, peft=LoraConfig(**LORA), fit_args={"ckpt_path": str(checkpoint)}, **module_args
    )


def test_restoring_gives_back_every_weight_bitwise(runs):
    path, trained = runs["adapter_only"]
    restored = restore(runs["base"], path, runs["root"] / "cache")
    want, got = trained.policy.state_dict(), restored.policy.state_dict()
    assert got.keys() == want.keys()
    assert [k for k in want if not torch.equal(got[k], want[k])] == []


def test_export_from_it_reproduces_the_trained_log_probs(runs, tmp_path):
    path, module = runs["adapter_only"]
    batch = next(iter(module.trainer.datamodule.train_dataloader()))
    with torch.no_grad():
        want = brute_logps(module.policy.eval(), batch)
        exported = AutoModelForCausalLM.from_pretrained(export_checkpoint(path, tmp_path / "merged")).eval()
        got = brute_logps(exported, batch)
    base = AutoModelForCausalLM.from_pretrained(runs["base"], dtype=torch.float64).eval()
    assert (want - brute_logps(base, batch)).abs().max() > 1e-3  # the adapters moved the policy
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-10)


def one_line_error(argv: list[str], capsys) -> str:
    capsys.readouterr()  # what earlier fits printed
    with pytest.raises(SystemExit) as exit_status:
        main(argv)
    assert exit_status.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("rdpo export:")]  # not transformers' loading bar
    assert len(lines) == 1 and lines[0].startswith("rdpo export: error:") and "Traceback" not in err, err
    return lines[0]


def test_another_base_is_refused_in_one_line_on_resume_and_export(runs, tiny_reference_dir, tmp_path, capsys):
    path, _ = runs["adapter_only"]
    with pytest.raises(InputError, match=r"^the checkpoint holds LoRA adapters only, trained on the base .* has other"):
        restore(tiny_reference_dir, path, tmp_path / "cache")
    line = one_line_error([str(path), str(tmp_path / "out"), "--base", str(tiny_reference_dir)], capsys)
    assert "is not the base these adapters were trained on" in line and not (tmp_path / "out").exists()
    with pytest.raises(InputError, match="this run has no adapters"):
        fit(runs["base"], tmp_path / "cache", steps=2, fit_args={"ckpt_path": str(path)})


def test_a_base_that_is_gone_is_one_line_and_base_finds_it_where_it_lies_now(runs, tmp_path, capsys):
    path, module = runs["adapter_only"]
    moved = tmp_path / "moved_base"
    shutil.copytree(runs["base"], moved)
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    checkpoint["rdpo"]["base"]["model"] = checkpoint["hyper_parameters"]["model"] = str(tmp_path / "gone")
    torch.save(checkpoint, tmp_path / "elsewhere.ckpt")
    line = one_line_error([str(tmp_path / "elsewhere.ckpt"), str(tmp_path / "out")], capsys)
    assert "gone: no such directory" in line and "--base" in line
    out = export_checkpoint(tmp_path / "elsewhere.ckpt", tmp_path / "out", adapter_only=True, base=str(moved))
    assert (out / "adapter_config.json").is_file()
    assert f'"base_model_name_or_path": "{moved}"' in (out / "adapter_config.json").read_text()


def test_the_switch(runs, tmp_path):
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, ModelParallelStrategy, SingleDeviceStrategy

    from rdpo_lightning.training.strategies import FSDP2Strategy

    single = SingleDeviceStrategy(device="cpu")
    assert resolve(None, True, "base", single) and resolve(None, True, "base", DDPStrategy())
    assert resolve(None, True, "base", FSDP2Strategy())
    assert not resolve(None, True, None, single)  # a model_config base exists in no file: full checkpoints
    assert not resolve(None, False, "base", single) and not resolve(False, True, "base", single)
    assert resolve(True, True, None, single)
    for strategy in (FSDPStrategy(), ModelParallelStrategy(), FSDP2Strategy(save_distributed_checkpoint=False)):
        assert not resolve(None, True, "base", strategy)
        with pytest.raises(InputError, match="^model.adapter_only_checkpoints: true cannot run here"):
            resolve(True, True, "base", strategy)
    with pytest.raises(InputError, match="needs adapters"):
        fit(runs["base"], tmp_path / "cache", steps=1, adapter_only_checkpoints=True)
