"""`rdpo fit -c configs/distributed/cpu_fsdp2.yaml`: the CLI trains under FSDP2 on 2 CPU processes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent.parent
CONFIG = ROOT / "configs" / "distributed" / "cpu_fsdp2.yaml"


def rdpo_fit(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    """``rdpo fit -c configs/distributed/cpu_fsdp2.yaml <overrides>`` in a fresh process, as a user runs it."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "RDPO_CACHE": str(tmp_path / "cache"),
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    }
    command = [sys.executable, "-m", "rdpo_lightning.cli", "fit", "-c", str(CONFIG), *overrides]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_rdpo_fit_with_the_cpu_fsdp2_config(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    done = rdpo_fit(
        tmp_path, "--trainer.max_steps=2", "--trainer.val_check_interval=2", "--data.init_args.num_train=32"
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert "Starting with 2 processes" in log and "distributed_backend=gloo" in log
    assert "FSDPGPT2LMHeadModel" in log  # the policy was fully_shard-ed (FSDP2 swaps in an FSDP subclass)
    assert "reference log-probs of split 'train' (32 rows) of the initial policy (weights " in log
    assert re.search(
        r"split 'train' \(32 rows\) of the initial policy \(weights [0-9a-f]{12}\): computed and saved", log
    )
    events = list((tmp_path / "runs" / "cpu_fsdp2" / "tensorboard").rglob("events.out.tfevents.*"))
    assert len(events) == 1
    accumulator = EventAccumulator(str(events[0]))
    accumulator.Reload()
    tags = accumulator.Tags()["scalars"]
    assert "train/loss" in tags and "train/robust/penalty" in tags and "val/loss" in tags
    assert len(accumulator.Scalars("train/loss")) == 2


def test_exact_wdpo_refused_under_fsdp2_is_one_line_from_one_rank(tmp_path):
    """Both ranks refuse in ``setup``; the user sees the reason once, as one line, and no traceback."""
    done = rdpo_fit(tmp_path, "--model.robust.init_args.mode=exact", "--data.init_args.num_train=16")
    log = done.stdout + done.stderr
    assert done.returncode == 2, log[-4000:]
    assert "Starting with 2 processes" in log  # both ranks ran into the refusal
    assert "Traceback" not in log
    errors = [line for line in log.splitlines() if "cannot run under FSDP" in line]
    assert len(errors) == 1 and errors[0].startswith("rdpo: error: model.robust.mode='exact' cannot run"), errors
