"""TRL's OnlineDPOTrainer on the attribute world, for ``benchmarks/online.py --trl``.

Why this exists: the issue asks whether our online DPO matches the reference implementation people would reach for.
This module only trains (TRL's own loop, on CPU) and saves the policy; ``online.py`` evaluates the saved policy with
the very code that evaluates its own runs, so the rows differ only in how they were trained.

TRL samples 2 completions per prompt (fixed in its trainer), scores them with one callable per attribute summed under
``reward_weights`` = α₀, and trains the better (``>=``: a tie keeps the first sample as chosen) against the other.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class TrlRun:
    """What a TRL fit measured: seconds in ``fit``, in generation, tokens generated, pairs trained, tied pairs."""

    fit_seconds: float = 0.0
    generation_seconds: float = 0.0
    generated_tokens: int = 0
    pairs: int = 0
    ties: int = 0
    steps: int = 0


class AttributeScores:
    """The world's K attribute scores of a TRL batch, computed once and served to K per-attribute callables.

    TRL calls each reward callable in turn with the same ``prompts``/``completions`` (the first sample of every prompt,
    then the second); the last callable also counts the pairs whose mixed reward r(α₀) ties, by our rule."""

    def __init__(self, scorer: Any, alpha0: Any, pad_token_id: int, run: TrlRun) -> None:
        self.scorer, self.alpha0, self.pad, self.run = scorer, alpha0, pad_token_id, run
        self._key: tuple | None = None
        self._scores = None

    def callables(self) -> list:
        return [self._attribute(k, last=k == len(self.alpha0.weights) - 1) for k in range(len(self.alpha0.weights))]

    def _attribute(self, k: int, last: bool):
        def reward(prompts: list[str], completions: list[str], completion_ids: list[list[int]], **_: Any) -> list:
            scores = self._batch(prompts, completions, completion_ids)
            if last:
                self._count(scores)
            return [float(s) for s in scores[:, k]]

        reward.__name__ = f"attribute_{k}"
        return reward

    def _batch(self, prompts: list[str], completions: list[str], completion_ids: list[list[int]]):
        key = (tuple(prompts), tuple(completions))
        if key != self._key:
            self._key = key
            self._scores = self.scorer.score_completions(prompts, [c.strip() for c in completions])
            self.run.generated_tokens += sum(sum(t != self.pad for t in ids) for ids in completion_ids)
        return self._scores

    def _count(self, scores) -> None:
        from rdpo_lightning.data.score_margins import mixed_margin, score_margins
        from rdpo_lightning.mixtures import tied

        half = len(scores) // 2
        self.run.pairs += half
        for first, second in zip(scores[:half], scores[half:], strict=True):
            margins = score_margins(first, second, self.alpha0.kind)
            self.run.ties += bool(tied(*mixed_margin(margins, self.alpha0.weights)))


def train_trl(
    model_dir: Path, out_dir: Path, prompts: list[str], scorer: Any, alpha0: Any, *, steps: int,
    batch_size: int, lr: float, beta: float, warmup_steps: int, min_lr_ratio: float, max_new_tokens: int,
    temperature: float, seed: int,
) -> TrlRun:  # fmt: skip
    """TRL's OnlineDPOTrainer from the saved ``model_dir`` on ``prompts`` for ``steps`` optimizer steps on CPU; the
    trained policy and its tokenizer saved to ``out_dir``. Our schedule (linear warm-up, cosine to ``min_lr_ratio``),
    gradient clip (1.0), AdamW without weight decay and dropout-free policy are asked of TRL: only the loop differs."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import datasets
    from transformers import AutoModelForCausalLM, PrinterCallback
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    from rdpo_lightning.data.tokenizer import load_tokenizer

    run = TrlRun()

    class Timed(OnlineDPOTrainer):
        """Times TRL's sampling, for the generation columns."""

        def _generate(self, *a: Any, **k: Any):
            started = time.perf_counter()
            try:
                return super()._generate(*a, **k)
            finally:
                run.generation_seconds += time.perf_counter() - started

    tokenizer = load_tokenizer(model_dir)
    tokenizer.padding_side = "left"
    config = OnlineDPOConfig(
        output_dir=str(out_dir / "trainer"), max_steps=steps, per_device_train_batch_size=batch_size,
        learning_rate=lr, weight_decay=0.0, max_grad_norm=1.0, lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": min_lr_ratio}, warmup_steps=warmup_steps, beta=beta,
        max_new_tokens=max_new_tokens, temperature=temperature, reward_weights=list(alpha0.weights), use_cpu=True,
        bf16=False, fp16=False, report_to=[], save_strategy="no", logging_strategy="no", seed=seed, data_seed=seed,
        disable_tqdm=True, dataloader_num_workers=0,
    )  # fmt: skip
    scores = AttributeScores(scorer, alpha0, tokenizer.pad_token_id, run)
    trainer = Timed(
        model=AutoModelForCausalLM.from_pretrained(model_dir), reward_funcs=scores.callables(), args=config,
        train_dataset=datasets.Dataset.from_dict({"prompt": list(prompts)}), processing_class=tokenizer,
    )  # fmt: skip
    trainer.remove_callback(PrinterCallback)  # its end-of-training summary would break the benchmark's table
    started = time.perf_counter()
    trainer.train()
    run.fit_seconds = time.perf_counter() - started
    run.steps = trainer.state.global_step
    trainer.save_model(str(out_dir))
    tokenizer.padding_side = "right"
    tokenizer.save_pretrained(out_dir)
    return run
