"""An adapter-only checkpoint under FSDP2 and DDP (2 gloo CPU processes, ``_adapter_checkpoint.py``): every rank's
shards of the adapters and their optimizer moments are saved and restored (a known failure elsewhere kept only rank
0's share), the base is not in it, and the resumed fit ends as the uninterrupted one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
SCRIPT = HERE / "_adapter_checkpoint.py"
WORLD = 2
RESUME_AT = 2  # the checkpoint the script resumes from
STRATEGIES = ("fsdp2", "ddp")


@pytest.fixture(scope="module")
def launch(tmp_path_factory, tiny_model_dir: Path) -> Path:
    """One launch of 2 processes runs both strategies in turn."""
    out = tmp_path_factory.mktemp("adapter_checkpoint")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(tiny_model_dir), str(out), *STRATEGIES],
        env=env,
        cwd=out,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return out


@pytest.fixture(params=STRATEGIES)
def launched(request, launch: Path) -> Path:
    return launch / request.param  # named after the strategy


def test_every_ranks_adapter_shards_and_moments_are_restored(launched):
    for rank in range(WORLD):
        saved = torch.load(launched / f"saved-step{RESUME_AT}-rank{rank}.pt")
        restored = torch.load(launched / f"restored-rank{rank}.pt")
        for kind in ("trainable", "moments"):
            assert saved[kind].keys() == restored[kind].keys() and saved[kind], kind
            different = [n for n in saved[kind] if not torch.equal(saved[kind][n], restored[kind][n])]
            assert not different, f"rank {rank} {kind}: {different[:3]}"
        assert not any("lora_" in name for name in restored["base"])
    ranks = [torch.load(launched / f"saved-step{RESUME_AT}-rank{rank}.pt")["trainable"] for rank in range(WORLD)]
    if not launched.name.startswith("fsdp2"):
        assert all(torch.equal(ranks[0][n], ranks[1][n]) for n in ranks[0])  # DDP: every rank holds all of it
        return
    # the shards are the ranks' own halves (each rank holds other values), so equality above is per rank
    assert all(not torch.equal(ranks[0][n], ranks[1][n]) for n in ranks[0] if "lora_B" in n or "lora_A" in n)


def test_the_checkpoint_holds_every_shard_of_the_adapters_and_no_base(launched):
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    checkpoint = launched / "checkpoints" / f"step={RESUME_AT}.ckpt"
    if checkpoint.is_file():  # DDP: one file, rank 0's (every rank holds the same)
        saved = torch.load(checkpoint, weights_only=False)
        policy = [k for k in saved["state_dict"] if k.startswith("policy.")]
        assert policy and all(".default." in k for k in policy) and saved["rdpo"]["base"]["adapter_only"] is True
        return
    stored = FileSystemReader(str(checkpoint)).read_metadata().state_dict_metadata
    policy = {k: v for k, v in stored.items() if k.startswith("state_dict.policy.")}
    assert policy and all(".default." in k for k in policy)  # adapter weights only
    for key, item in policy.items():
        assert isinstance(item, TensorStorageMetadata)
        covered = sum(torch.Size(chunk.sizes).numel() for chunk in item.chunks)
        assert covered == item.size.numel() and len(item.chunks) == WORLD, key  # both ranks' shards, whole
    meta = torch.load(checkpoint / "meta.pt", weights_only=False)
    assert meta["rdpo"]["base"]["adapter_only"] is True


def test_the_resumed_fit_ends_as_the_uninterrupted_one(launched):
    resumed, uninterrupted = torch.load(launched / "resumed.pt"), torch.load(launched / "uninterrupted.pt")
    assert resumed.keys() == uninterrupted.keys()
    assert [n for n in resumed if not torch.equal(resumed[n], uninterrupted[n])] == []
