"""``rdpo export``: a checkpoint → a Hugging Face directory that reproduces the trained module's log-probs (merged and
adapter-only), written atomically, refusing foreign checkpoints; and the CLI round trip fit → export → generate."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from rdpo_lightning.checkpoints.export import export_checkpoint
from rdpo_lightning.errors import InputError
from tests.lora_fits import brute_logps, fit

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
LORA = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", modules_to_save=["ln_f"])


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """A LoRA policy after 3 SGD steps (float32), its checkpoint, and a batch."""
    root = tmp_path_factory.mktemp("export_fit")
    module = fit(
        tiny_model_dir, root, steps=3, data={"num_train": 24}, peft=LORA, torch_dtype=None, gradient_clip_val=1.0,
        optimizer=functools.partial(torch.optim.SGD, lr=2.0),
    )  # fmt: skip
    trainer, data = module.trainer, module.trainer.datamodule
    trainer.save_checkpoint(root / "trained.ckpt")
    loaders = data.val_dataloader()
    batch = next(iter(loaders[0] if isinstance(loaders, list) else loaders))
    module.eval()
    with torch.no_grad():
        logps = module._pair_logps(module.policy, batch)[0]
    return root / "trained.ckpt", batch, torch.cat([logps.chosen, logps.rejected]).double()


def test_merged_export_reproduces_the_trained_log_probs(trained, tiny_model_dir, tmp_path):
    checkpoint, batch, want = trained
    with torch.no_grad():
        base = brute_logps(AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), batch)
    assert (want - base).abs().max() > 1e-2  # the adapters moved the policy: the export has something to carry
    out = export_checkpoint(checkpoint, tmp_path / "merged")
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not any("lora" in name for name, _ in model.named_parameters())  # merged: a plain transformers model
    with torch.no_grad():
        got = brute_logps(model, batch)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0)


def test_adapter_only_export_reproduces_them_on_the_base_and_equals_the_merged(trained, tiny_model_dir, tmp_path):
    checkpoint, batch, want = trained
    out = export_checkpoint(checkpoint, tmp_path / "adapter", adapter_only=True)
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_model_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out).eval()
    assert {n for n, _ in model.named_parameters() if "lora_" in n}  # unmerged: the adapters are separate weights
    merged = AutoModelForCausalLM.from_pretrained(export_checkpoint(checkpoint, tmp_path / "merged")).eval()
    with torch.no_grad():
        got = brute_logps(model, batch)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=0)
        torch.testing.assert_close(got, brute_logps(merged, batch), rtol=1e-5, atol=0)  # merged equals unmerged
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert len(tokenizer) == model.get_input_embeddings().num_embeddings


def test_a_failed_export_leaves_nothing_behind(trained, tmp_path, monkeypatch):
    checkpoint, _, _ = trained

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("rdpo_lightning.checkpoints.export.model_card", broken)
    with pytest.raises(OSError, match="disk full"):
        export_checkpoint(checkpoint, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temporary directory


def test_an_existing_output_is_kept_unless_overwrite(trained, tmp_path):
    checkpoint, _, _ = trained
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep")
    with pytest.raises(InputError, match="exists; choose another directory or pass --overwrite"):
        export_checkpoint(checkpoint, tmp_path / "out")
    assert (tmp_path / "out" / "mine.txt").read_text() == "keep"
    export_checkpoint(checkpoint, tmp_path / "out", overwrite=True)
    assert (tmp_path / "out" / "config.json").is_file() and not (tmp_path / "out" / "mine.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_checkpoints_that_are_not_this_projects_are_refused_in_one_line(tmp_path, capsys):
    from rdpo_lightning.cli.export import main

    torch.save({"state_dict": {"layer.weight": torch.zeros(2)}, "epoch": 0}, tmp_path / "other.ckpt")
    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    cases = {
        tmp_path / "other.ckpt": "was not written by rdpo-lightning",
        tmp_path / "notes.ckpt": "is not a PyTorch checkpoint file",
        tmp_path / "missing.ckpt": "does not exist",
        tmp_path: "not a Lightning distributed checkpoint",
    }
    for checkpoint, message in cases.items():
        with pytest.raises(SystemExit) as exit_status:
            main([str(checkpoint), str(tmp_path / "out")])
        assert exit_status.value.code == 2
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and lines[0].startswith("rdpo export: error:"), err
        assert not (tmp_path / "out").exists()


def test_rdpo_fit_with_lora_then_export_then_generate(tmp_path, tiny_model_dir, world_tokenizer_dir, monkeypatch):
    """The user's path: ``rdpo fit`` (quickstart + LoRA, validation across mixtures, a callback exporting the best
    worst-case checkpoint), ``rdpo export`` of the last checkpoint, then transformers loads and generates."""
    from rdpo_lightning.cli import main, run

    monkeypatch.chdir(tmp_path)
    best = tmp_path / "best_model"
    callback = {"class_path": "rdpo_lightning.callbacks.ExportBestCheckpoint", "init_args": {"dirpath": str(best)}}
    main(
        [
            "fit",
            *("-c", str(CONFIGS / "quickstart.yaml"), "-c", str(CONFIGS / "peft" / "lora.yaml")),
            "--model.model_config=null",
            f"--model.model={tiny_model_dir}",
            f"--data.init_args.tokenizer_dir={world_tokenizer_dir}",
            "--data.init_args.num_train=32",
            "--data.init_args.num_val=8",
            "--data.init_args.batch_size=16",
            "--data.init_args.val_alphas=[0.0,1.0]",
            "--trainer.max_epochs=1",
            "--trainer.val_check_interval=1.0",
            "--trainer.enable_progress_bar=false",
            f"--trainer.callbacks+={json.dumps(callback)}",
        ]
    )
    checkpoint = next(tmp_path.rglob("last.ckpt"))
    assert torch.load(checkpoint, weights_only=False)["rdpo"]["base"]["adapter_only"]  # the default for LoRA runs
    monkeypatch.setattr(sys, "argv", ["rdpo", "export", str(checkpoint), "exported"])
    run()
    for directory in (tmp_path / "exported", best):
        model = AutoModelForCausalLM.from_pretrained(directory).eval()
        tokenizer = AutoTokenizer.from_pretrained(directory)
        prompt = tokenizer("the morning train", return_tensors="pt")
        generated = model.generate(**prompt, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        assert generated.shape[1] > prompt["input_ids"].shape[1]
        card = (directory / "README.md").read_text()
        for expected in ("NoRobust", "SigmoidLoss", "beta: 0.1", "SingleDeviceStrategy", "r=16", "alpha=1.00"):
            assert expected in card, expected
        assert "worst-case loss" in card and "| alpha=0.00 |" in card


@pytest.mark.parametrize("adapter_only_checkpoint", [True, False])
def test_a_continued_adapter_checkpoint_exports_the_trained_adapter(tiny_model_dir, tmp_path, adapter_only_checkpoint):
    """``model.adapter=<dir>``: the checkpoint holds the trained adapter and the frozen starting one (the reference);
    the export (merged, and adapter-only on the base) reproduces the trained policy's log-probs, not the start's."""
    from rdpo_lightning.models.adapters import attach_adapters

    torch.manual_seed(0)
    start = attach_adapters(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LORA)
    with torch.no_grad():
        for name, param in start.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.3)  # a starting adapter that moves the model
    start.save_pretrained(tmp_path / "start")
    module = fit(
        tiny_model_dir, tmp_path / "cache", steps=2, adapter=str(tmp_path / "start"),
        adapter_only_checkpoints=adapter_only_checkpoint,
    )  # fmt: skip
    module.trainer.save_checkpoint(tmp_path / "continued.ckpt")
    batch = next(iter(module.trainer.datamodule.train_dataloader()))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64).eval()
    with torch.no_grad():
        want = brute_logps(module.policy.eval(), batch)
        starting = brute_logps(PeftModel.from_pretrained(base, tmp_path / "start").eval(), batch)
        assert (want - starting).abs().max() > 1e-3  # training moved the adapter away from its start
        merged = AutoModelForCausalLM.from_pretrained(export_checkpoint(tmp_path / "continued.ckpt", tmp_path / "m"))
        torch.testing.assert_close(brute_logps(merged.eval(), batch), want, rtol=1e-12, atol=1e-10)
        adapter = export_checkpoint(tmp_path / "continued.ckpt", tmp_path / "a", adapter_only=True)
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64)
        on_base = PeftModel.from_pretrained(base, adapter).eval()
        torch.testing.assert_close(brute_logps(on_base, batch), want, rtol=1e-12, atol=1e-10)


def tree(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("fails_at", ["writing", "swapping"])
def test_a_failed_overwrite_leaves_the_previous_export_intact(trained, tmp_path, monkeypatch, fails_at):
    checkpoint, _, _ = trained
    previous = tree(export_checkpoint(checkpoint, tmp_path / "out", adapter_only=True))
    if fails_at == "writing":

        def broken(*args, **kwargs):
            raise OSError("disk full")

        monkeypatch.setattr("rdpo_lightning.checkpoints.export.model_card", broken)
    else:  # the new directory is complete, its move into place fails
        rename = Path.rename

        def failing(self, target):
            if ".partial-" in self.name:
                raise OSError("disk full")
            return rename(self, target)

        monkeypatch.setattr(Path, "rename", failing)
    with pytest.raises(OSError, match="disk full"):
        export_checkpoint(checkpoint, tmp_path / "out", overwrite=True)  # merged, over the adapter-only export
    assert tree(tmp_path / "out") == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_metric_of_exactly_zero_is_shown_in_the_model_card():
    from rdpo_lightning.checkpoints.model_card import model_card

    mixtures = [
        {"name": "alpha=0.10", "loss": 0.0, "accuracy": 0.0, "margin": -0.25},
        {"name": "alpha=1.00", "loss": 0.75, "accuracy": 1.0, "margin": 0.0},
    ]
    worst = {"accuracy": {"value": 0.0, "mixture": "alpha=0.10"}, "loss": {"value": 0.75, "mixture": "alpha=1.00"}}
    record = {"adapter_config": None, "validation": {"step": 3, "mixtures": mixtures, "worst_case": worst}}
    card = model_card(record, {}, Path("x.ckpt"), adapter_only=False)
    lines = card.splitlines()
    header = next(line for line in lines if line.startswith("| mixture |"))
    columns = [c.strip() for c in header.strip("|").split("|")][1:]
    assert columns == ["loss", "accuracy", "margin"]
    for row in mixtures:
        cells = next(line for line in lines if line.startswith(f"| {row['name']} |")).strip("|").split("|")[1:]
        assert [float(c) for c in cells] == [row[m] for m in columns], row["name"]
    for metric, found in worst.items():
        shown = next(line for line in lines if line.startswith(f"- worst-case {metric}:"))
        assert float(shown.split(": ")[1].split(" ")[0]) == found["value"] and found["mixture"] in shown
