"""What each online round shows: counts, seconds, the completions' scores per attribute and per mixture, samples.

Every rank calls :meth:`RoundLog.round` (the means are averaged over ranks, a collective); rank 0 writes them to the
Trainer's loggers as ``online/...`` scalars at the step the round starts, and the samples to TensorBoard's text tab.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from rdpo_lightning.mixtures import Mixture
from rdpo_lightning.online.rounds import RoundReport


class RoundLog:
    """Logs each :class:`RoundReport` of ``trainer``'s fit; ``mixtures``: the ones the worst case is over."""

    def __init__(self, trainer: Any, mixtures: Sequence[Mixture], attributes: Sequence[str]) -> None:
        self.trainer, self.mixtures, self.attributes = trainer, list(mixtures), list(attributes)

    def progress(self, round_index: int, prompts: int):
        """A bar over the prompts a pass completes (rank 0, when the fit shows progress bars)."""
        shown = self.trainer.is_global_zero and self.trainer.progress_bar_callback is not None
        return tqdm(total=prompts, desc=f"online round {round_index}: generating", unit="prompt", leave=False,
                    disable=not shown)  # fmt: skip

    def metrics(self, report: RoundReport, trained_seconds: float) -> dict[str, float]:
        """The round's scalars on this rank (means over its completions)."""
        scores = np.concatenate(report.scores) if report.scores else np.zeros((0, len(self.attributes)))
        values = {
            "online/round": float(report.round),
            "online/prompts": float(report.prompts),
            "online/pairs": float(report.pairs),
            "online/ties": float(report.ties),
            "online/dropped": float(sum(report.dropped.values())),
            "online/unused_pairs": float(report.unused),
            "online/truncated_responses": float(report.truncated),
            "online/generated_tokens": float(report.generated_tokens),
            "online/generation_seconds": report.generation_seconds,
            "online/scoring_seconds": report.scoring_seconds,
            "online/training_seconds": trained_seconds,
        }
        for k, name in enumerate(self.attributes):
            values[f"online/attributes/{name}"] = float(scores[:, k].mean()) if len(scores) else float("nan")
        rewards = {m.name: float(m.combine(scores).mean()) if len(scores) else float("nan") for m in self.mixtures}
        values.update({f"online/reward/{name}": value for name, value in rewards.items()})
        return values

    def round(self, report: RoundReport, trained_seconds: float) -> None:
        values = self.metrics(report, trained_seconds)
        names = list(values)
        summed = ("online/prompts", "online/pairs", "online/ties", "online/dropped", "online/unused_pairs",
                  "online/truncated_responses", "online/generated_tokens")  # fmt: skip
        strategy = self.trainer.strategy
        if self.trainer.world_size > 1:
            tensor = torch.tensor([values[n] for n in names], dtype=torch.float64, device=strategy.root_device)
            total = strategy.reduce(tensor, reduce_op="sum")
            values = {
                n: float(v) if n in summed else float(v) / self.trainer.world_size
                for n, v in zip(names, total.tolist(), strict=True)
            }
        rewards = [values[f"online/reward/{m.name}"] for m in self.mixtures]
        if rewards:
            worst = int(np.argmin(rewards))
            values["online/reward/worst_case"] = rewards[worst]
            values["online/reward/worst_case_at"] = float(worst)
        if not self.trainer.is_global_zero:
            return
        step = self.trainer.global_step
        for logger in self.trainer.loggers:
            logger.log_metrics(values, step=step)
            experiment = getattr(logger, "experiment", None)
            if report.samples and hasattr(experiment, "add_text"):
                experiment.add_text("online/samples", samples_markdown(report), global_step=step)


def samples_markdown(report: RoundReport) -> str:
    """The round's first pairs as a Markdown table (TensorBoard's text tab renders it)."""
    lines = [f"round {report.round}", "", "| prompt | chosen | rejected |", "|---|---|---|"]
    for prompt, chosen, rejected in report.samples:
        lines.append(
            "| " + " | ".join(text.replace("|", "\\|").replace("\n", " ") for text in (prompt, chosen, rejected)) + " |"
        )
    return "\n".join(lines)
