"""``data.max_length`` against the model's context, with the real DataModule attached to a real Trainer and module:
a Llama of 64 positions (which would silently train past its context) and a GPT-2 of 64 (whose position table would
end in an IndexError) get sequences of at most 64 tokens, and every pair that lost tokens is counted; prompt and
padding settings that cannot fit are refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rdpo_lightning.data import PairwisePreferenceDataModule
from rdpo_lightning.data.tokenizer import load_tokenizer
from rdpo_lightning.errors import InputError
from rdpo_lightning.training.module import RobustDPO
from rdpo_lightning.training.quiet import quiet_trainer

LLAMA = {
    "model_type": "llama",
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
}
GPT2 = {"model_type": "gpt2", "n_layer": 1, "n_head": 2, "n_embd": 16, "n_positions": 64}


def attached(dm: PairwisePreferenceDataModule, model_config: dict) -> PairwisePreferenceDataModule:
    """The DataModule as ``Trainer.fit`` sees it: attached to a Trainer whose module is connected."""
    trainer = quiet_trainer(accelerator="cpu", max_steps=1)
    trainer.strategy.connect(RobustDPO(model_config=model_config))
    dm.trainer = trainer
    return dm


def long_rows(n: int) -> list[dict]:
    """Prompts of 4..40 words and responses of 10..50: some pairs fit 64 tokens, some do not."""
    return [
        {
            "prompt": " ".join(["the", "city"] * (2 + (7 * i) % 19)),
            "chosen": " ".join(["happy"] * (10 + (11 * i) % 41)),
            "rejected": " ".join(["gloomy"] * (10 + (5 * i) % 37)),
        }
        for i in range(n)
    ]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.mark.parametrize("config", [LLAMA, GPT2], ids=["llama", "gpt2"])
def test_max_length_is_lowered_to_the_context_and_cuts_are_counted(config, tmp_path, world_tokenizer_dir, caplog):
    exact = {"prompt": " ".join(["the", "city"] * 12), "rejected": "gloomy"}  # a 24-token prompt leaves room for 40
    rows = long_rows(28) + [{**exact, "chosen": " ".join(["happy"] * n)} for n in (39, 40)]  # 39 + EOS fit exactly
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    dm = PairwisePreferenceDataModule(
        path=path,
        tokenizer=str(world_tokenizer_dir),
        val_path=path,
        val_fraction=0,
        max_length=512,
        max_prompt_length=24,
    )
    attached(dm, config).setup("fit")
    attribute = "max_position_embeddings" if config is LLAMA else "n_positions"
    assert dm.max_length == 64
    assert f"data.max_length=512 is more than the model's context (model.model_config's {attribute}=64)" in caplog.text
    lengths = [len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"])) for r in dm.train_dataset]
    assert max(lengths) == 64 and len(lengths) == 30
    # the counts, from the rows themselves: a prompt over 24 tokens, a response past the room the prompt leaves
    tokenizer = load_tokenizer(world_tokenizer_dir)
    prompt_cuts = response_cuts = 0
    for row in rows:
        prompt = len(tokenizer(row["prompt"])["input_ids"])
        response = 1 + max(len(row[k].split()) for k in ("chosen", "rejected"))  # words and the EOS
        prompt_cuts += prompt > 24
        response_cuts += response > 64 - min(prompt, 24)
    assert dm.truncated["train"] == {"prompt": prompt_cuts, "response": response_cuts}
    assert 0 < prompt_cuts < 30 and 0 < response_cuts < 30
    assert f"train: {response_cuts} of 30 pairs had a response cut to fit max_length=64; {prompt_cuts} of 30 a " in (
        caplog.text
    )


def test_settings_that_cannot_fit_the_context_are_refused(tmp_path, world_tokenizer_dir):
    path = write_jsonl(tmp_path / "pairs.jsonl", long_rows(4))
    kwargs = {
        "path": path,
        "tokenizer": str(world_tokenizer_dir),
        "val_path": path,
        "val_fraction": 0,
        "max_length": 512,
    }
    dm = attached(PairwisePreferenceDataModule(**kwargs, max_prompt_length=100), LLAMA)
    with pytest.raises(InputError) as error:
        dm.setup("fit")
    assert str(error.value) == (
        "data.max_prompt_length=100 leaves no room for a response within the model's context (model.model_config's "
        "max_position_embeddings=64); set it below 64"
    )
    dm = attached(PairwisePreferenceDataModule(**kwargs, pad_to_multiple_of=48), LLAMA)
    with pytest.raises(InputError, match=r"data.pad_to_multiple_of=48 pads sequences of up to data.max_length=64"):
        dm.setup("fit")
