"""What users wrote against the flat 0.1 layout keeps working after the modules moved into subpackages.

``tests/fixtures/legacy_flat_layout`` was written by the code *before* the move (commit 3b3d22d, its ``make.sh``): a
KLDPO checkpoint of a tiny GPT-2, a LoRA adapter-only checkpoint over a saved base, the ``config.yaml`` LightningCLI
saved beside each, and ``names.json``: every class and function each module of that layout defined. Its paths are
relative (``relocate.py`` took the writing machine's absolute ones out), so it works from any clone. Here those
checkpoints validate, resume and export through today's ``rdpo``, and every old name still imports.
"""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from rdpo_lightning.cli import main
from rdpo_lightning.cli.export import main as export_main
from rdpo_lightning.legacy_paths import MOVED

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "legacy_flat_layout"
NAMES = json.loads((FIXTURE / "names.json").read_text())["modules"]
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


#: internal helpers that were removed, not moved (no configuration, checkpoint or documented script names them)
RETIRED = {
    # the DataModules' repeated argument blocks gave way to **kwargs passed on to the base classes
    "rdpo_lightning.data.datamodule.batching_arguments",
    "rdpo_lightning.data.mixture_pairs.mixture_arguments",
}


def test_every_class_and_function_of_the_flat_layout_still_imports_from_its_old_path():
    missing = []
    for module_name, defined in NAMES.items():
        module = importlib.import_module(module_name)
        for name in defined["classes"] + defined["functions"]:
            value = getattr(module, name, None)
            if value is None:
                missing.append(f"{module_name}.{name}")
                continue
            home = importlib.import_module(value.__module__)  # the object is the one at its new home
            assert getattr(home, value.__qualname__.split(".")[0]) is value
    assert set(missing) == RETIRED, sorted(set(missing) ^ RETIRED)
    flat_root = {name.removeprefix("rdpo_lightning.") for name in NAMES if name.count(".") == 1}
    assert set(MOVED) <= flat_root  # the table names only modules that existed
    assert not (set(MOVED) & {p.stem for p in Path(importlib.import_module("rdpo_lightning").__path__[0]).iterdir()})


def test_a_moved_module_is_the_same_objects_not_a_copy():
    from rdpo_lightning.module import RobustDPO as old

    from rdpo_lightning.training import RobustDPO

    assert old is RobustDPO
    with pytest.raises(AttributeError, match="moved to rdpo_lightning.training.module"):
        importlib.import_module("rdpo_lightning.module").NoSuchThing  # noqa: B018


def test_a_yaml_naming_old_class_paths_still_parses(tmp_path: Path, capsys):
    config = tmp_path / "old.yaml"
    config.write_text("trainer:\n  strategy:\n    class_path: rdpo_lightning.distributed.FSDP2Strategy\n")
    quickstart = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "-c", str(quickstart), "-c", str(config), "--print_config"])
    assert exit_.value.code == 0
    printed = capsys.readouterr().out
    assert "class_path: rdpo_lightning.distributed.FSDP2Strategy" in printed
    assert "data_parallel_size: auto" in printed  # its arguments were read from the class the old path resolves to


def _copy(name: str, tmp_path: Path) -> Path:
    run = tmp_path / name
    shutil.copytree(FIXTURE / name, run)
    return run


def _policy_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    return {k.removeprefix("policy."): v for k, v in state.items() if k.startswith("policy.")}


def test_a_flat_layout_checkpoint_validates_resumes_and_exports(tmp_path: Path, monkeypatch):
    run = _copy("kl", tmp_path)
    monkeypatch.chdir(tmp_path)  # the saved config writes its runs under runs/kl
    checkpoint = run / "last.ckpt"
    validated = main(["validate", f"--ckpt_path={checkpoint}", *QUIET])  # the YAML recorded in the checkpoint
    assert "val/worst_case/loss" in validated.trainer.callback_metrics

    resumed = main(
        ["fit", "-c", str(run / "config.yaml"), f"--ckpt_path={checkpoint}", "--trainer.max_steps=3", *QUIET]
    )
    assert resumed.trainer.global_step == 3
    assert type(resumed.model.robust).__name__ == "KLReweighter"

    export_main([str(checkpoint), str(tmp_path / "exported")])
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "exported").state_dict()
    for name, tensor in _policy_weights(checkpoint).items():
        torch.testing.assert_close(exported[name], tensor, rtol=0, atol=0, msg=name)


def test_a_flat_layout_adapter_only_checkpoint_resumes_and_exports_on_its_moved_base(tmp_path: Path, monkeypatch):
    run = _copy("lora", tmp_path)
    monkeypatch.chdir(tmp_path)
    checkpoint, base = run / "last.ckpt", tmp_path / "elsewhere" / "base"
    shutil.move(run / "base", base)  # the recorded base (lora/base) is gone: only the typed one exists
    assert "model: lora/base" in (run / "config.yaml").read_text()
    assert not any(".base_layer." in k for k in _policy_weights(checkpoint))  # written adapter-only
    moved = [f"--model.model={base}", f"--data.init_args.tokenizer={base}"]  # the base lies elsewhere now
    resumed = main(
        ["fit", "-c", str(run / "config.yaml"), f"--ckpt_path={checkpoint}", "--trainer.max_steps=3", *moved]
    )
    assert resumed.trainer.global_step == 3

    export_main([str(checkpoint), str(tmp_path / "adapter"), "--adapter-only", f"--base={base}"])
    adapter = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 2
    export_main([str(checkpoint), str(tmp_path / "merged"), f"--base={base}"])
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    original = AutoModelForCausalLM.from_pretrained(base)
    changed = [n for n, p in merged.state_dict().items() if not torch.equal(p, original.state_dict()[n])]
    assert changed  # the trained adapters are folded into the base's weights
