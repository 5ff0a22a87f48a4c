"""Each data-parallel rank generates for its own prompts: under DDP and FSDP2 (2 gloo processes) the two ranks'
prompts of a step are disjoint, and together they are the prompts one process with the whole batch completes.

One launch of ``_online_ranks.py`` runs both strategies (Lightning re-executes it for rank 1); the single process runs
here, with the same world, seed and 4 pairs per step (2 per rank there).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rdpo_lightning.data.tokenizer import load_tokenizer
from tests.online.online_fits import RecordBatches, build, fit

HERE = Path(__file__).parent
STRATEGIES = ("ddp", "fsdp2")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory, tiny_model_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("online_ranks")
    env = {**os.environ, "PYTHONPATH": str(HERE.parents[1]), "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(HERE / "_online_ranks.py"), str(tiny_model_dir), str(out), *STRATEGIES]
    done = subprocess.run(command, env=env, cwd=out, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return out


@pytest.fixture(scope="module")
def single_process(tmp_path_factory, tiny_model_dir: Path) -> list[set[str]]:
    from tests.online._online_ranks import prompts_of

    module, data = build(tiny_model_dir, tmp_path_factory.mktemp("online_single"), batch_size=4)
    record = RecordBatches()
    fit(module, data, max_steps=3, callbacks=[record])
    tokenizer = load_tokenizer(tiny_model_dir)
    return [set(prompts_of(batch, tokenizer)) for batch in record.batches]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_each_rank_completes_its_own_prompts_and_together_the_whole_batchs(strategy, ranks: Path, single_process):
    rank0, rank1 = (json.loads((ranks / f"{strategy}-rank{r}.json").read_text()) for r in (0, 1))
    assert rank0["steps"] == rank1["steps"] == 3
    for step, (mine, theirs, whole) in enumerate(zip(rank0["prompts"], rank1["prompts"], single_process, strict=True)):
        assert len(mine) == len(theirs) == 2
        assert not set(mine) & set(theirs), step
        assert set(mine) | set(theirs) == whole, step
