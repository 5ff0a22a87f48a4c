"""Online fits under DDP and FSDP2 on 2 gloo CPU processes (Lightning re-executes this script for rank 1).

``python _online_ranks.py MODEL_DIR OUT_DIR STRATEGY [STRATEGY ...]``: for each strategy (``ddp``, ``fsdp2``) a fit of
3 steps, 2 pairs per rank per step, a round per step; each rank writes ``OUT_DIR/<strategy>-rank<r>.json``: the prompt
of every pair it trained on, per step, and its steps.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import datasets
import lightning as L

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rdpo_lightning.batch_layout import IGNORE_INDEX  # noqa: E402
from rdpo_lightning.data.tokenizer import load_tokenizer  # noqa: E402
from rdpo_lightning.training.strategies import FSDP2Strategy  # noqa: E402
from tests.online.online_fits import RecordBatches, build, fit  # noqa: E402


def prompts_of(batch: dict, tokenizer) -> list[str]:
    half = batch["input_ids"].shape[0] // 2
    return [
        tokenizer.decode(ids[labels == IGNORE_INDEX].tolist(), skip_special_tokens=True).strip()
        for ids, labels in zip(batch["input_ids"][:half], batch["labels"][:half], strict=True)
    ]


def main() -> None:
    datasets.disable_progress_bars()
    model_dir, out_dir, *strategies = sys.argv[1:]
    tokenizer = load_tokenizer(model_dir)
    for name in strategies:
        module, data = build(Path(model_dir), Path(out_dir) / f"cache-{name}", batch_size=2)
        record = RecordBatches()
        strategy = FSDP2Strategy() if name == "fsdp2" else "ddp"
        trainer = fit(module, data, max_steps=3, callbacks=[record], devices=2, strategy=strategy)
        rank = int(os.environ.get("LOCAL_RANK", "0"))
        result = {"steps": trainer.global_step, "prompts": [prompts_of(b, tokenizer) for b in record.batches]}
        (Path(out_dir) / f"{name}-rank{rank}.json").write_text(json.dumps(result))
        L.seed_everything(0, verbose=False)


if __name__ == "__main__":
    main()
