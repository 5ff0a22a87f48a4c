"""Bad input found once files are read ends ``rdpo`` with one line naming the YAML key, and no traceback: a model,
adapter, tokenizer or data path that does not exist, a missing data column, an unknown LoRA target module, and
quantization on a machine without a GPU. Runs the real CLI on a tiny saved model and a local pairs file."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from rdpo_lightning.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def write_pairs(path: Path, count: int = 24, seed: int = 0) -> Path:
    """Pairs in the prompt / chosen / rejected schema, in words the tiny models' tokenizer knows."""
    rng = random.Random(seed)
    nouns = ["morning", "train", "city", "road", "river", "garden", "letter", "window"]
    good, bad = ["happy", "laugh", "delight", "smile", "bright"], ["grief", "tears", "rage", "dread", "bitter"]
    rows = [
        {
            "prompt": f"the {rng.choice(nouns)} {rng.choice(nouns)}",
            "chosen": " ".join(rng.choices(good, k=3)),
            "rejected": " ".join(rng.choices(bad, k=3)),
            "user": f"user{i % 3}",  # three groups
        }
        for i in range(count)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def own_model_args(model_dir: Path, pairs: Path, root: Path) -> list[str]:
    return [
        *("-c", str(CONFIGS / "own_model.yaml"), "-c", str(CONFIGS / "peft" / "lora.yaml")),
        f"--model.model={model_dir}",
        f"--data.init_args.tokenizer={model_dir}",
        f"--data.init_args.path={pairs}",
        f"--trainer.default_root_dir={root}",
        f"--trainer.logger.init_args.save_dir={root}",
        "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false",
        "--data.init_args.val_fraction=0.25",
    ]


CASES = {
    "model": (["--model.model={missing}"], "model.model={missing}: no such directory"),
    "adapter": (["--model.peft=null", "--model.adapter={missing}"], "model.adapter={missing}: does not exist"),
    "tokenizer": (["--data.init_args.tokenizer={missing}"], "data.tokenizer={missing}: no such directory"),
    "data": (["--data.init_args.path={missing}.jsonl"], "data.path={missing}.jsonl: not a local file or directory"),
    "column": (["--data.init_args.chosen_column=answer"], "missing column(s) ['answer'] (set by data.prompt"),
    "target": (["--model.peft.init_args.target_modules=[q_proj]"], "model.peft.target_modules: Target modules"),
    "quantization": (["--model.quantization={{load_in_4bit: true}}"], "model.quantization (bitsandbytes"),
    # Lightning's accumulation would form the robust objective per micro-batch
    "accumulation": (["--trainer.accumulate_grad_batches=8"], "set model.accumulate_grad_batches: 8 instead"),
    # more groups in the data than GroupDRO's num_groups: found at the first step, named by its key
    "num_groups": (
        [
            "--model.robust=rdpo_lightning.robust.GroupDRO",
            "--model.robust.init_args.num_groups=2",
            "--data.init_args.group_column=user",
        ],
        "for model.robust.init_args.num_groups=2; the batch has ids",
    ),
    # pairs without per-attribute scores: MixtureDRO names what is missing when the fit starts
    "mixture_dro": (
        ["--model.robust=MixtureDRO", "--model.robust.init_args.radius=0.2"],
        "model.robust: MixtureDRO needs each pair's per-attribute score margins (score_margins) and the training"
        " mixture; data (PairwisePreferenceDataModule) has neither",
    ),
    # a plain dict is a PEFT config's to_dict() (what a checkpoint keeps): one without its peft_type is not one
    "peft_dict": (
        ["--model.peft=null", '--model.peft={{"r": 8}}'],
        "model.peft: not a PEFT config (KeyError: 'peft_type')",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_naming_the_key(case, tmp_path, tiny_model_dir, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    missing = str(tmp_path / "no" / "such")
    overrides, expected = CASES[case]
    args = own_model_args(tiny_model_dir, write_pairs(tmp_path / "pairs.jsonl"), tmp_path)
    with pytest.raises(SystemExit) as exit_status:
        main(["fit", *args, *(o.format(missing=missing) for o in overrides)])
    assert exit_status.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("rdpo: error:")]
    assert len(errors) == 1 and expected.format(missing=missing) in errors[0], err[-3000:]
    assert "Traceback" not in err
