"""Reference log-probs computed once, cached on disk, reused by later runs, recomputed when data or reference change."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from rdpo_lightning.data import AttributeWorldDataModule
from rdpo_lightning.losses import IPOLoss
from rdpo_lightning.training.module import RobustDPO
from rdpo_lightning.training.quiet import quiet_trainer
from rdpo_lightning.training.reference_cache import (
    DIGEST_FIELD,
    WEIGHTS_FIELD,
    ReferenceCache,
    shard_indices,
    unshard,
)
from tests.conftest import save_reinitialised


@pytest.fixture(scope="module")
def other_reference_dir(tmp_path_factory, tiny_model_dir: Path) -> Path:
    return save_reinitialised(tiny_model_dir, 2, tmp_path_factory.mktemp("other_reference"))


def fit(model_dir, cache_dir, seed=0, reference=None, precompute=True, max_steps=1, pair_loss=None):
    L.seed_everything(0, verbose=False)  # the same shuffling in every run
    module = RobustDPO(
        model=str(model_dir),
        reference=None if reference is None else str(reference),
        pair_loss=pair_loss,
        torch_dtype="float64",
        precompute_reference=precompute,
        reference_cache_dir=str(cache_dir),
    )
    data = AttributeWorldDataModule(
        num_train=12, num_val=4, val_alphas=[1.0], seed=seed, batch_size=4, max_length=24, tokenizer_dir=str(model_dir)
    )
    trainer = quiet_trainer(
        accelerator="cpu",
        max_steps=max_steps,
        limit_val_batches=1,
    )
    trainer.fit(module, datamodule=data)
    return module, data


def outcome(messages: list[str]) -> dict[str, str]:
    """split name → 'computed' / 'loaded' from the cache's log lines."""
    found = {}
    for message in messages:
        if message.startswith("reference log-probs of split"):
            split = message.split("'")[1]
            found[split] = "computed" if "computed and saved" in message else "loaded"
    return found


def cache_files(messages: list[str]) -> set[str]:
    return {m.rsplit(" ", 1)[-1] for m in messages if m.startswith("reference log-probs of split")}


def brute_force_logps(model, prompt_ids, response_ids) -> float:
    """Σ log p(response token | prefix), one unpadded row, full log-softmax: independent of the batched path."""
    ids = torch.tensor([list(prompt_ids) + list(response_ids)])
    with torch.no_grad():
        logprobs = model(input_ids=ids).logits[0].double().log_softmax(-1)
    start = len(prompt_ids)
    return sum(logprobs[t - 1, ids[0, t]].item() for t in range(start, ids.shape[1]))


def test_cached_logps_equal_fresh_computation_and_no_reference_stays(tmp_path, tiny_model_dir, lightning_messages):
    from transformers import AutoModelForCausalLM

    module, data = fit(tiny_model_dir, tmp_path)
    assert outcome(lightning_messages) == {
        "train": "computed",
        "alpha=0.10": "computed",
        "alpha=1.00": "computed",
    }
    assert module.reference is None  # no reference model resident during training
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64).eval()
    train = data.train_dataset
    assert len(train) == 12
    for row in train:
        assert row["reference_chosen_logps"] == pytest.approx(
            brute_force_logps(reference, row["prompt_ids"], row["chosen_ids"]), abs=1e-9
        )
        assert row["reference_rejected_logps"] == pytest.approx(
            brute_force_logps(reference, row["prompt_ids"], row["rejected_ids"]), abs=1e-9
        )
    files = sorted(tmp_path.glob("*.pt"))
    assert len(files) == 3
    stored = torch.load(files[0], weights_only=True)
    numbers = {"chosen_sum", "rejected_sum", "chosen_tokens", "rejected_tokens"}
    assert set(stored) == numbers | {DIGEST_FIELD, WEIGHTS_FIELD}


def test_second_run_reuses_cache_and_changes_invalidate_it(
    tmp_path, tiny_model_dir, other_reference_dir, lightning_messages
):
    _, first = fit(tiny_model_dir, tmp_path)
    assert set(outcome(lightning_messages).values()) == {"computed"}
    first_files = cache_files(lightning_messages)

    lightning_messages.clear()
    _, second = fit(tiny_model_dir, tmp_path)
    assert set(outcome(lightning_messages).values()) == {"loaded"}
    assert cache_files(lightning_messages) == first_files
    assert second.train_dataset["reference_chosen_logps"] == first.train_dataset["reference_chosen_logps"]

    lightning_messages.clear()
    fit(tiny_model_dir, tmp_path, seed=1)  # other pairs
    assert set(outcome(lightning_messages).values()) == {"computed"}
    assert not cache_files(lightning_messages) & first_files

    lightning_messages.clear()
    _, other = fit(tiny_model_dir, tmp_path, reference=other_reference_dir)  # other reference weights
    assert set(outcome(lightning_messages).values()) == {"computed"}
    assert not cache_files(lightning_messages) & first_files
    assert other.train_dataset["reference_chosen_logps"] != first.train_dataset["reference_chosen_logps"]


def test_precompute_off_keeps_a_resident_reference(tmp_path, tiny_model_dir, lightning_messages):
    module, data = fit(tiny_model_dir, tmp_path, precompute=False)
    assert module.reference is not None
    assert not any(p.requires_grad for p in module.reference.parameters())
    assert "reference_chosen_logps" not in data.train_dataset.column_names
    assert outcome(lightning_messages) == {}
    assert not list(tmp_path.glob("*.pt"))


def test_training_on_cached_logps_equals_training_with_a_resident_reference(tmp_path, tiny_model_dir):
    cached, _ = fit(tiny_model_dir, tmp_path / "a", max_steps=2)
    resident, _ = fit(tiny_model_dir, tmp_path / "b", precompute=False, max_steps=2)
    for (name, a), (_, b) in zip(cached.policy.named_parameters(), resident.policy.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10, msg=name)


def test_cached_ipo_reference_columns_are_per_token_means(tmp_path, tiny_model_dir):
    """IPO is defined on length-normalised log-probs: every cached reference value of every split is the per-token
    loop's sum divided by the number of response tokens (not the sum the DPO cache holds)."""
    from transformers import AutoModelForCausalLM

    _, data = fit(tiny_model_dir, tmp_path, pair_loss=IPOLoss())
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64).eval()
    splits = {"train": data.train_dataset, **data.val_datasets}
    for name, split in splits.items():
        for row in split:
            for side in ("chosen", "rejected"):
                response = row[f"{side}_ids"]
                mean = brute_force_logps(reference, row["prompt_ids"], response) / len(response)
                assert row[f"reference_{side}_logps"] == pytest.approx(mean, abs=1e-10), (name, side)


def brute_force_ipo_loss(policy, reference, row: dict, beta: float) -> float:
    """(h − 1/(2β))², h the difference of the per-token-mean log-ratios of chosen and rejected, from one-row loops."""
    ratios = []
    for side in ("chosen", "rejected"):
        response = row[f"{side}_ids"]
        logps = [brute_force_logps(model, row["prompt_ids"], response) / len(response) for model in (policy, reference)]
        ratios.append(logps[0] - logps[1])
    return (ratios[0] - ratios[1] - 1 / (2 * beta)) ** 2


def test_ipo_on_cached_logps_equals_a_resident_reference_and_per_token_means(
    tmp_path, tiny_model_dir, other_reference_dir
):
    """An IPO fit against a separate reference model trains the same policy whether the reference log-probs are cached
    or computed by a resident reference, and its validation loss is the IPO loss of per-token-mean log-ratios."""
    from transformers import AutoModelForCausalLM

    runs = {
        precompute: fit(tiny_model_dir, tmp_path / str(precompute), reference=other_reference_dir,
                        precompute=precompute, max_steps=2, pair_loss=IPOLoss())
        for precompute in (True, False)
    }  # fmt: skip
    (cached, data), (resident, _) = runs[True], runs[False]
    assert cached.reference is None and resident.reference is not None
    for (name, a), (_, b) in zip(cached.policy.named_parameters(), resident.policy.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10, msg=name)

    reference = AutoModelForCausalLM.from_pretrained(other_reference_dir, dtype=torch.float64).eval()
    rows = data.val_datasets[data.val_names[0]].select(range(data.val_batch_size))  # the one batch validated
    expected = sum(brute_force_ipo_loss(cached.policy, reference, row, cached.beta) for row in rows) / len(rows)
    for module in (cached, resident):
        module.trainer.validate(module, datamodule=data, verbose=False)
        assert module.trainer.callback_metrics["val/loss"].item() == pytest.approx(expected, rel=1e-9)


def test_unreadable_or_mismatched_cache_file_is_recomputed(tmp_path):
    cache = ReferenceCache(tmp_path)
    cache.path("broken").write_bytes(b"not a torch file")
    assert cache.load("broken", rows=3) is None
    assert cache.load("missing", rows=3) is None


@pytest.mark.parametrize("rows, world", [(8, 2), (7, 2), (5, 4), (1, 3)])
def test_shards_cover_every_row_once_in_order(rows, world):
    per_rank = [shard_indices(rows, rank, world) for rank in range(world)]
    assert len({len(s) for s in per_rank}) == 1  # every rank runs as many forwards (FSDP needs it)
    gathered = torch.tensor(per_rank).unsqueeze(-1)  # (W, per_rank, 1): each row's own index as its "result"
    assert unshard(gathered, rows).squeeze(-1).tolist() == list(range(rows))


def validate(model_dir, cache_dir, checkpoint):
    L.seed_everything(0, verbose=False)
    module = RobustDPO(model=str(model_dir), torch_dtype="float64", reference_cache_dir=str(cache_dir))
    data = AttributeWorldDataModule(
        num_train=12, num_val=4, val_alphas=[1.0], batch_size=4, max_length=24, tokenizer_dir=str(model_dir)
    )
    trainer = quiet_trainer(accelerator="cpu")
    trainer.validate(module, datamodule=data, ckpt_path=str(checkpoint), verbose=False)
    return module, {k: float(v) for k, v in trainer.callback_metrics.items()}


def test_validate_a_checkpoint_of_a_cached_run_with_and_without_the_cache(tmp_path, tiny_model_dir, lightning_messages):
    """A checkpoint saved without reference weights validates from the cache (no reference model) or, with the cache
    gone, with a resident reference rebuilt from ``model``: the same validation loss either way."""
    module, _ = fit(tiny_model_dir, tmp_path / "cache", max_steps=2)
    checkpoint = tmp_path / "run.ckpt"
    module.trainer.save_checkpoint(checkpoint)
    assert not any(key.startswith("reference.") for key in torch.load(checkpoint, weights_only=False)["state_dict"])

    lightning_messages.clear()
    cached, with_cache = validate(tiny_model_dir, tmp_path / "cache", checkpoint)
    assert cached.reference is None
    assert set(outcome(lightning_messages).values()) == {"loaded"}

    lightning_messages.clear()
    resident, without_cache = validate(tiny_model_dir, tmp_path / "empty", checkpoint)  # a miss outside fit
    assert resident.reference is not None
    assert outcome(lightning_messages) == {}
    assert with_cache["val/loss"] == pytest.approx(without_cache["val/loss"], abs=1e-9)
    assert with_cache["val/loss"] != pytest.approx(0.6931, abs=1e-3)  # the trained policy, not the initial one


def test_the_reference_cache_defaults_to_the_data_cache_folder(monkeypatch, tmp_path):
    """One cache folder (``$RDPO_CACHE``) for tokenised splits and reference log-probs."""
    from rdpo_lightning.data.datamodule import default_cache_dir
    from rdpo_lightning.training.reference_cache import default_reference_cache_dir

    monkeypatch.setenv("RDPO_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    assert default_reference_cache_dir() == tmp_path / "reference_logps"


def test_the_trainer_precision_is_part_of_the_key(tmp_path, tiny_model_dir, lightning_messages):
    """A ``bf16-mixed`` fit computes its own reference log-probs rather than loading a ``32-true`` fit's: each run's
    cached values are those of an independent per-row computation at its own precision (autocast for bf16), which
    differ from the other precision's by 500x more than that."""
    from transformers import AutoModelForCausalLM

    def run(precision: str):
        L.seed_everything(0, verbose=False)
        module = RobustDPO(model=str(tiny_model_dir), reference_cache_dir=str(tmp_path))  # float32 weights
        data = AttributeWorldDataModule(
            num_train=8, num_val=4, val_alphas=[], batch_size=4, max_length=24, tokenizer_dir=str(tiny_model_dir)
        )
        trainer = quiet_trainer(accelerator="cpu", max_steps=1, limit_val_batches=0, precision=precision)
        trainer.fit(module, datamodule=data)
        return data.train_dataset

    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()

    def independent(rows) -> torch.Tensor:
        return torch.tensor([brute_force_logps(reference, r["prompt_ids"], r["chosen_ids"]) for r in rows])

    full = run("32-true")
    lightning_messages.clear()
    mixed = run("bf16-mixed")
    assert outcome(lightning_messages)["train"] == "computed"
    want_full = independent(full)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want_mixed = independent(mixed)
    apart = (want_full - want_mixed).abs().max()
    assert apart > 1e-4
    for rows, want in ((full, want_full), (mixed, want_mixed)):
        got = torch.tensor(rows["reference_chosen_logps"])
        assert (got - want).abs().max() < 0.05 * apart
