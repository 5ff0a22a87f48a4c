"""A resumed fit computes missing reference log-probs from the *initial* weights, never from the restored policy.

The situation of a run moved to a new machine: the checkpoint travels, the reference log-prob cache does not. Each
case fits 2 steps (which computes and caches the reference), saves a checkpoint, then resumes to 4 steps twice: with
that cache, and with an empty one. Both resumes must train the same policy, bit for bit (float64), and the entries
the cache-less resume writes must be the first run's, bit for bit: a later fresh run that loads them starts from its
own initial policy (every step-0 loss log 2). Cases: DPO, a reweighting strategy (KLDPO), LoRA (the base with
adapters off is the reference) and a named reference model. The same under DDP (gloo, ``ddp_spawn``) is
:func:`test_a_ddp_resume_without_the_cache_equals_one_with_it`.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
from peft import LoraConfig

from rdpo_lightning.data import AttributeWorldDataModule
from rdpo_lightning.robust import KLReweighter
from rdpo_lightning.training.module import RobustDPO
from rdpo_lightning.training.quiet import quiet_trainer
from rdpo_lightning.training.reference_cache import DIGEST_FIELD, WEIGHTS_FIELD, ReferenceSource, RestoredWeightsError
from tests.conftest import save_reinitialised, spawn_retrying_port_clash

CASES = ["dpo", "kl", "lora", "named"]


@pytest.fixture(scope="module")
def named_reference_dir(tmp_path_factory, tiny_model_dir: Path) -> Path:
    return save_reinitialised(tiny_model_dir, 3, tmp_path_factory.mktemp("named_reference"))


def build(case: str, model_dir: Path, cache: Path, reference: Path | None) -> tuple[RobustDPO, L.LightningDataModule]:
    L.seed_everything(0, verbose=False)
    module = RobustDPO(
        model=str(model_dir),
        reference=str(reference) if case == "named" else None,
        robust=KLReweighter(tau=0.5) if case == "kl" else None,
        peft=LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn"]) if case == "lora" else None,
        torch_dtype="float64",
        reference_cache_dir=str(cache),
        adapter_only_checkpoints=False,
    )
    data = AttributeWorldDataModule(
        num_train=16, num_val=4, val_alphas=[1.0], batch_size=4, max_length=24, tokenizer_dir=str(model_dir)
    )
    return module, data


class SavePolicy(L.Callback):
    """Rank 0 writes the policy's weights at the end of a fit: a spawned run's module comes back without them."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_end(self, trainer, module) -> None:
        if trainer.is_global_zero:
            torch.save(policy_state(module), self.path)


def fit(case, model_dir, cache, reference=None, max_steps=2, ckpt_path=None, strategy="auto", devices=1, save=None):
    module, data = build(case, model_dir, cache, reference)
    trainer = quiet_trainer(
        accelerator="cpu", max_steps=max_steps, limit_val_batches=1, strategy=strategy, devices=devices,
        callbacks=[SavePolicy(save)] if save is not None else [],
    )  # fmt: skip
    trainer.fit(module, datamodule=data, ckpt_path=None if ckpt_path is None else str(ckpt_path))
    return module, data, trainer


def entries(cache: Path) -> dict[str, dict]:
    return {p.name: torch.load(p, weights_only=True) for p in sorted(cache.glob("*.pt"))}


def assert_same_entries(got: dict[str, dict], want: dict[str, dict]) -> None:
    assert got.keys() == want.keys() and got
    for name, entry in got.items():
        for field, value in entry.items():
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(value, want[name][field], rtol=0, atol=0, msg=f"{name} {field}")
            else:
                assert value == want[name][field], (name, field)


def policy_state(module: RobustDPO) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.policy.state_dict().items()}


@pytest.mark.parametrize("case", CASES)
def test_a_resume_without_the_cache_equals_one_with_it_and_leaves_the_cache_true(
    case, tmp_path, tiny_model_dir, named_reference_dir
):
    first_cache = tmp_path / "cache"
    module, _, trainer = fit(case, tiny_model_dir, first_cache, named_reference_dir)
    checkpoint = tmp_path / "step2.ckpt"
    trainer.save_checkpoint(checkpoint)
    written = entries(first_cache)
    assert module.reference is None  # the reference was precomputed, and no model of it kept

    with_cache, _, _ = fit(case, tiny_model_dir, first_cache, named_reference_dir, max_steps=4, ckpt_path=checkpoint)
    empty = tmp_path / "new_machine_cache"
    without, _, _ = fit(case, tiny_model_dir, empty, named_reference_dir, max_steps=4, ckpt_path=checkpoint)
    assert without.trainer.global_step == 4 and without.reference is None  # the initial copy was freed
    want, got = policy_state(with_cache), policy_state(without)
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0, msg=name)
    assert_same_entries(entries(empty), written)  # the resume wrote the initial weights' numbers under their key

    # a fresh run on the cache the resume wrote starts where a fresh run must: the policy is its own reference
    fresh, data, _ = fit(case, tiny_model_dir, empty, named_reference_dir, max_steps=0)
    batch = next(iter(data.train_dataloader()))
    with torch.no_grad():
        losses = fresh.policy_forward(batch, fresh.reference_logps(batch)).losses
    if case == "named":  # the reference is another model: compare with the log-probs it computes itself
        fresh_cache = tmp_path / "fresh"
        _, fresh_data, _ = fit(case, tiny_model_dir, fresh_cache, named_reference_dir, max_steps=0)
        assert data.train_dataset["reference_chosen_logps"] == fresh_data.train_dataset["reference_chosen_logps"]
    else:
        torch.testing.assert_close(losses, torch.full_like(losses, math.log(2)), rtol=0, atol=1e-12)


def test_cache_entries_record_the_weights_they_come_from_and_a_foreign_entry_is_recomputed(
    tmp_path, tiny_model_dir, caplog
):
    cache = tmp_path / "cache"
    module, data, _ = fit("dpo", tiny_model_dir, cache, max_steps=0)
    stored = entries(cache)
    digests = {entry[DIGEST_FIELD] for entry in stored.values()}
    assert len(digests) == 1 and {entry[WEIGHTS_FIELD] for entry in stored.values()} == {"the initial policy"}
    digest = digests.pop()
    want = data.train_dataset["reference_chosen_logps"]

    # the entries under this reference's keys now say they were computed by other weights (as an entry written by
    # an earlier version from a resumed policy would be, under the initial policy's key): refused and recomputed
    for path in cache.glob("*.pt"):
        entry = torch.load(path, weights_only=True)
        entry["chosen_sum"] = entry["chosen_sum"] + 1.0
        torch.save({**entry, DIGEST_FIELD: "0" * 32}, path)
    with caplog.at_level("WARNING", logger="rdpo_lightning.training.reference_cache"):
        _, again, _ = fit("dpo", tiny_model_dir, cache, max_steps=0)
    refused = [r.getMessage() for r in caplog.records if "not the reference's" in r.getMessage()]
    assert len(refused) == len(stored) and all(digest in line for line in refused)
    assert again.train_dataset["reference_chosen_logps"] == want
    assert {entry[DIGEST_FIELD] for entry in entries(cache).values()} == {digest}


def test_the_policy_restored_from_a_checkpoint_never_computes_the_reference(tmp_path, tiny_model_dir, monkeypatch):
    """The guard behind the copy: without :meth:`ReferenceSource.before_restore`'s copy of the initial policy, the
    resume stops instead of computing (and caching) the restored policy's log-probs."""
    module, _, trainer = fit("dpo", tiny_model_dir, tmp_path / "cache")
    checkpoint = tmp_path / "step2.ckpt"
    trainer.save_checkpoint(checkpoint)
    original = ReferenceSource.before_restore

    def no_copy(self, policy, resident):
        original(self, policy, resident)
        return None

    monkeypatch.setattr(ReferenceSource, "before_restore", no_copy)
    empty = tmp_path / "empty"
    with pytest.raises(RestoredWeightsError, match="whose weights a checkpoint replaced"):
        fit("dpo", tiny_model_dir, empty, max_steps=4, ckpt_path=checkpoint)
    assert not list(empty.glob("*.pt"))


def test_a_ddp_resume_without_the_cache_equals_one_with_it(tmp_path, tiny_model_dir):
    """Two gloo processes (``ddp_spawn``) resume a single-process checkpoint with and without the cache: the same
    policy bit for bit, and the cache-less resume's entries (gathered from both ranks) are the first run's."""
    first_cache = tmp_path / "cache"
    _, _, trainer = fit("kl", tiny_model_dir, first_cache)
    checkpoint = tmp_path / "step2.ckpt"
    trainer.save_checkpoint(checkpoint)
    written = entries(first_cache)
    shutil.copytree(first_cache, tmp_path / "copied")
    runs = {}
    for name, cache in (("with", tmp_path / "copied"), ("without", tmp_path / "empty")):
        saved = tmp_path / f"{name}.pt"
        spawn_retrying_port_clash(
            lambda cache=cache, saved=saved: fit(
                "kl", tiny_model_dir, cache, max_steps=4, ckpt_path=checkpoint, strategy="ddp_spawn", devices=2,
                save=saved,
            )
        )  # fmt: skip
        runs[name] = torch.load(saved, weights_only=True)
    for name, want in runs["with"].items():
        torch.testing.assert_close(runs["without"][name], want, rtol=0, atol=0, msg=name)
    assert_same_entries(entries(tmp_path / "empty"), written)
