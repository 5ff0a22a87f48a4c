"""The shipped YAML configs through the real ``rdpo`` CLI: the quickstart logs one validation result per mixture;
the paper configs load and train a couple of steps with the model and data paths pointed at tiny local stand-ins."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from rdpo_lightning.cli import main
from tests.cli.test_cli import run_args

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
EMOTIONS = ["sadness", "joy", "love", "anger", "fear"]
WORDS = ["happy", "sunny", "gloomy", "rain", "river", "road", "letter", "garden", "night", "rage", "terror", "tears"]


def test_every_config_the_docs_and_configs_name_exists():
    """A command in the README, the docs or a config's comments names only configs that ship (one named a missing
    configs/base.yaml). A quoted error line (``rdpo: error: -c configs/robust/kll.yaml: no such file``) may name a
    missing one: that is its point."""
    root = CONFIGS.parent
    texts = [root / "README.md", root / "CONTRIBUTING.md", *root.glob("docs/*.md"), *root.glob("benchmarks/*.md")]
    named = {
        match
        for path in [*texts, *CONFIGS.rglob("*.yaml")]
        for line in path.read_text().splitlines()
        if "rdpo: error:" not in line
        for match in re.findall(r"configs/[\w./-]+\.yaml", line)
    }
    assert "configs/distributed/multinode.yaml" in named
    assert sorted(name for name in named if not (root / name).is_file()) == []


def test_quickstart_logs_one_validation_result_per_mixture(tmp_path, tensorboard_scalars):
    args = [
        "--trainer.max_epochs=1",
        "--trainer.val_check_interval=1.0",
        "--data.init_args.num_train=32",
        "--data.init_args.num_val=16",
        "--data.init_args.batch_size=16",
        "--model.model_config.n_layer=1",
        "--model.model_config.n_embd=32",
    ]
    cli = main(["fit", "-c", str(CONFIGS / "quickstart.yaml"), *run_args(tmp_path), *args])
    names = cli.datamodule.val_names
    assert names == ["alpha=0.10", "alpha=0.00", "alpha=0.25", "alpha=0.50", "alpha=0.75", "alpha=1.00"]
    tags = set(tensorboard_scalars(tmp_path))
    for name in names:
        assert {f"val/{name}/loss", f"val/{name}/accuracy"} <= tags, name
    assert not {t for t in tags if t.startswith("val/") and t.endswith("/loss")} - {
        *(f"val/{n}/loss" for n in names),
        "val/loss",
        "val/worst_case/loss",
    }


def scored_rows(n_prompts: int, scores: list[str], rng: np.random.Generator, as_int: bool = False) -> list[dict]:
    rows = []
    for p in range(n_prompts):
        prompt = f"the day {WORDS[p % len(WORDS)]} {WORDS[(p // len(WORDS)) % len(WORDS)]}"
        for _ in range(2):
            values = rng.integers(0, 5, len(scores)) if as_int else rng.dirichlet(np.ones(len(scores)))
            response = " ".join(rng.choice(WORDS, size=4))
            rows.append({"prompt": prompt, "response": response, **dict(zip(scores, values.tolist(), strict=True))})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def small_paper_args(root: Path, model: Path) -> list[str]:
    return [
        *run_args(root),
        f"--model.model={model}",
        "--trainer.accelerator=cpu",
        "--trainer.max_steps=2",
        "--trainer.limit_val_batches=1",
        "--trainer.val_check_interval=2",
        "--trainer.num_sanity_val_steps=0",
        "--data.init_args.batch_size=4",
        "--data.init_args.val_batch_size=4",
    ]


def test_emotion_gpt2_config_runs_on_the_world_and_on_scored_completions(
    tmp_path, tiny_model_dir, world_tokenizer_dir, tensorboard_scalars
):
    config = ["-c", str(CONFIGS / "paper" / "emotion_gpt2.yaml")]
    overrides = [
        *small_paper_args(tmp_path / "world", tiny_model_dir),
        f"--data.init_args.tokenizer={world_tokenizer_dir}",
        "--data.init_args.num_train=16",
        "--data.init_args.num_val=8",
        "--trainer.precision=32-true",
    ]
    cli = main(["fit", *config, *overrides])
    assert cli.trainer.global_step == 2 and len(cli.datamodule.val_names) == 11
    assert (
        type(cli.datamodule).__name__ == "AttributeWorldDataModule"
        and cli.datamodule.train_mixture.name == "alpha=0.10"
    )

    completions = write_jsonl(tmp_path / "scored.jsonl", scored_rows(24, EMOTIONS, np.random.default_rng(0)))
    stacked = [*config, "-c", str(CONFIGS / "paper" / "emotion_scored_data.yaml")]
    overrides = [
        *small_paper_args(tmp_path / "scored", tiny_model_dir),
        f"--data.init_args.path={completions}",
        f"--data.init_args.tokenizer={world_tokenizer_dir}",
        "--trainer.precision=32-true",
    ]
    cli = main(["fit", *stacked, *overrides])
    assert type(cli.datamodule).__name__ == "ScoredCompletionsDataModule"
    assert cli.trainer.global_step == 2 and cli.datamodule.val_names[0] == "alpha=0.10"
    assert "val/alpha=1.00/loss" in tensorboard_scalars(tmp_path / "scored")


def test_helpsteer_llama_config_loads_a_local_helpsteer_layout(tmp_path, tiny_model_dir, chat_tokenizer_dir):
    scores = ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]
    data = tmp_path / "helpsteer2"
    data.mkdir()
    rng = np.random.default_rng(1)
    write_jsonl(data / "train.jsonl", scored_rows(30, scores, rng, as_int=True))
    write_jsonl(data / "validation.jsonl", scored_rows(8, scores, rng, as_int=True))
    overrides = [
        *small_paper_args(tmp_path / "run", tiny_model_dir),
        f"--data.init_args.path={data}",
        f"--data.init_args.tokenizer={chat_tokenizer_dir}",
        "--data.init_args.max_prompt_length=32",  # the config's 512 leaves the tiny GPT-2's 64 positions no room
        "--model.accumulate_grad_batches=1",
    ]
    cli = main(["fit", "-c", str(CONFIGS / "paper" / "helpsteer_llama.yaml"), *overrides])
    dm = cli.datamodule
    assert cli.trainer.global_step == 2 and cli.trainer.precision == "bf16-mixed"
    assert dm.templated and [m.name for m in dm.train_mixtures] == ["alpha=0.50"]
    assert dm.val_names == [
        "alpha=0.50",
        "alpha=0.00",
        "alpha=0.10",
        "alpha=0.30",
        "alpha=0.70",
        "alpha=0.90",
        "alpha=1.00",
    ]
    assert cli.model.beta == 0.01
    assert cli.trainer.optimizers[0].param_groups[0]["initial_lr"] == 5e-7


def test_robust_strategy_configs_stack_on_the_quickstart(tmp_path, tensorboard_scalars):
    args = [
        "--trainer.max_steps=2",
        "--trainer.limit_val_batches=1",
        "--trainer.num_sanity_val_steps=0",
        "--data.init_args.num_train=32",
        "--data.init_args.num_val=8",
        "--data.init_args.batch_size=16",
        "--data.init_args.val_alphas=[1.0]",
        "--model.model_config.n_layer=1",
    ]
    expected = {
        "dr_dpo": {"train/robust/weight_max", "train/robust/ess_fraction"},
        "cvar": {"train/robust/threshold", "train/robust/weight_max", "train/robust/ess_fraction"},
        "chi_square": {"train/robust/threshold", "train/robust/support_fraction", "train/robust/ess_fraction"},
        "group_dro": {"train/robust/worst_group_loss", "train/robust/group_weight/0", "train/robust/group_weight/1"},
        "mixture_dro": {"train/robust/worst_alpha", "train/robust/worst_loss", "train/robust/spread"},
    }
    for name, tags in expected.items():
        root = tmp_path / name
        config = ["-c", str(CONFIGS / "quickstart.yaml"), "-c", str(CONFIGS / "robust" / f"{name}.yaml")]
        cli = main(["fit", *config, *run_args(root), *args])
        assert cli.trainer.global_step == 2
        assert tags <= set(tensorboard_scalars(root)), name
        if name == "group_dro":
            assert set(cli.datamodule.train_dataset["group"]) == {0, 1}
            assert cli.model.robust.group_weights.tolist() != [0.5, 0.5]
    assert len(cli.model.robust.mixture_set) == 6  # [0, 0.6] around alpha_0 = 0.1: 0, 0.1, 0.225, 0.35, 0.475, 0.6
