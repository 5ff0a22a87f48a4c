"""Worst-case evaluation across preference mixtures: what a robust method is judged by.

After each validation pass the callback logs, for every validation set (one per mixture α of the grid),
``val/<mixture>/loss``, ``val/<mixture>/accuracy`` (implicit-reward accuracy: β·log-ratio of the chosen response
above the rejected one) and ``val/<mixture>/margin``, and their worst case over the grid: ``val/worst_case/loss``
(the maximum), ``val/worst_case/accuracy`` (the minimum), with where it lies (``..._at``: α for ``alpha=<x>``
names, else the mixture's index). With a :class:`GenerationEvaluation` it also logs the mean generated reward
``val/reward/<mixture>`` and ``val/reward/worst_case``. Monitor ``val/worst_case/...`` with ``EarlyStopping`` and
``ModelCheckpoint`` to select models on the worst case.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn

from rdpo_lightning.callbacks.generation import GenerationEvaluation, GenerationResult
from rdpo_lightning.callbacks.metrics import GroupedMean, owned_samples
from rdpo_lightning.callbacks.report import (
    MixtureResult,
    ShiftReport,
    format_table,
    mixture_coordinates,
    shift_figure,
    worst_case,
)

PAIR_METRICS = ("loss", "accuracy", "margin")
RESERVED_NAMES = ("worst_case", "reward")


class WorstCaseEvaluation(Callback):
    """Per-mixture metrics, their worst case, generated rewards, the shift curve and the ``validate`` table.

    Args:
        generation: optional generation-based reward evaluation (sampling + reward functions).
        plot_name: file name of the shift-curve PNG, written to the logger's ``log_dir`` at the end of fit/validate
            (None: no PNG); the figure also goes to TensorBoard as ``val/shift_curve`` after every pass.
        print_table: print the per-mixture table at the end of ``validate``.
    """

    def __init__(
        self,
        generation: GenerationEvaluation | None = None,
        plot_name: str | None = "shift_curve.png",
        print_table: bool = True,
    ) -> None:
        self.generation = generation
        self.plot_name = plot_name
        self.print_table = print_table
        self.report: ShiftReport | None = None
        self.generation_result: GenerationResult | None = None
        self._metric: GroupedMean | None = None
        self._owned: list[int | None] = []
        self._seen: list[int] = []

    # --- accumulate ------------------------------------------------------------------------------------------------
    @staticmethod
    def _loaders(trainer: L.Trainer) -> list[Any]:
        loaders = trainer.val_dataloaders
        if loaders is None:
            return []
        return list(loaders) if isinstance(loaders, Sequence) else [loaders]

    @staticmethod
    def _names(trainer: L.Trainer, count: int) -> list[str]:
        names = list(getattr(trainer.datamodule, "val_names", None) or [])
        if len(names) != count:
            names = [str(i) for i in range(count)]
        for name in names:
            if name in RESERVED_NAMES:
                raise ValueError(f"a validation set may not be named {name!r}: its metrics would clash with val/{name}")
        return names

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        loaders = self._loaders(trainer)
        self._metric = GroupedMean(len(loaders), len(PAIR_METRICS)).to(pl_module.device)
        self._owned = [owned_samples(loader) for loader in loaders]
        self._seen = [0] * len(loaders)

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking or self._metric is None:
            return
        if not isinstance(outputs, dict) or "losses" not in outputs:
            raise TypeError(
                "WorstCaseEvaluation needs validation_step to return per-pair 'losses', 'chosen_rewards' and "
                f"'rejected_rewards' (RobustDPO does); got {type(outputs).__name__}"
            )
        losses = outputs["losses"]
        count = losses.shape[0]
        owned = self._owned[dataloader_idx]
        keep = count if owned is None else max(0, min(count, owned - self._seen[dataloader_idx]))
        self._seen[dataloader_idx] += count
        if keep == 0:
            return
        chosen, rejected = outputs["chosen_rewards"][:keep], outputs["rejected_rewards"][:keep]
        values = torch.stack([losses[:keep], (chosen > rejected).to(losses.dtype), chosen - rejected], dim=1)
        self._metric.update(dataloader_idx, values)

    # --- report ----------------------------------------------------------------------------------------------------
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self._metric is None:
            return
        means = self._metric.compute().tolist()  # a collective: every rank computes
        self._metric = None
        names = self._names(trainer, len(means))
        training = in_distribution_names(trainer.datamodule, names)
        results = {
            name: MixtureResult(name, *row, in_distribution=name in training)
            for name, row in zip(names, means, strict=True)
        }
        generated = None
        if self.generation is not None and self.generation.due(trainer):
            generated = self.generation.evaluate(trainer, pl_module)
            self.generation_result = generated
            for name, value in generated.rewards.items():
                results.setdefault(name, MixtureResult(name)).reward = value
        report = ShiftReport(list(results.values()), step=trainer.global_step)
        for metric in ("loss", "accuracy", "reward"):
            found = worst_case(report.mixtures, metric)
            if found is not None:
                report.worst[metric] = found
        self.report = report
        self._log(pl_module, report, generated)
        if trainer.is_global_zero:
            self._log_figure(trainer, report, generated)

    def validation_record(self) -> dict[str, Any] | None:
        """The latest pass's per-mixture and worst-case metrics as plain data, for the checkpoint's run record (and
        the model card :mod:`rdpo_lightning.checkpoints.model_card` writes from it); None before any pass."""
        if self.report is None:
            return None
        mixtures = [
            {k: v for k, v in vars(m).items() if not (isinstance(v, float) and math.isnan(v))}
            for m in self.report.mixtures
        ]
        worst = {metric: {"value": value, "mixture": name} for metric, (value, name) in self.report.worst.items()}
        return {"step": self.report.step, "mixtures": mixtures, "worst_case": worst}

    def _log(self, pl_module: L.LightningModule, report: ShiftReport, generated: GenerationResult | None) -> None:
        values: dict[str, float] = {}
        for result in report.mixtures:
            for metric in PAIR_METRICS:
                if not math.isnan(getattr(result, metric)):
                    values[f"val/{result.name}/{metric}"] = getattr(result, metric)
        xs, _ = mixture_coordinates([r.name for r in report.mixtures])
        position = {r.name: x for r, x in zip(report.mixtures, xs, strict=True)}
        for metric in ("loss", "accuracy"):
            if metric in report.worst:
                value, name = report.worst[metric]
                values[f"val/worst_case/{metric}"] = value
                values[f"val/worst_case/{metric}_at"] = position[name]
        if generated is not None:
            for name, value in generated.rewards.items():
                values[f"val/reward/{name}"] = value
            for name, value in generated.attributes.items():
                values[f"val/reward/attributes/{name}"] = value
            value, name = report.worst["reward"]
            values["val/reward/worst_case"] = value
            values["val/reward/worst_case_at"] = position[name]
        for key, value in values.items():
            # identical on every rank already; sync_dist only keeps Lightning's distributed bookkeeping quiet
            pl_module.log(key, value, batch_size=1, sync_dist=True, prog_bar=key == "val/worst_case/loss")

    def _log_figure(self, trainer: L.Trainer, report: ShiftReport, generated: GenerationResult | None) -> None:
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if not hasattr(experiment, "add_figure"):
                continue
            experiment.add_figure("val/shift_curve", shift_figure(report), report.step)
            experiment.add_text("val/shift_table", _markdown_block(format_table(report)), report.step)
            if generated is not None and generated.samples:
                text = "\n\n".join(f"**{prompt}** → {completion}" for prompt, completion in generated.samples)
                experiment.add_text("val/generations", text, report.step)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn != TrainerFn.VALIDATING or self.report is None or not trainer.is_global_zero:
            return
        if self.print_table:
            source = f"checkpoint {trainer.ckpt_path}" if trainer.ckpt_path else "the current weights"
            print(f"\nPer-mixture validation of {source}:\n{format_table(self.report)}\n", flush=True)
        self.save_plot(trainer)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.report is not None and trainer.is_global_zero:
            self.save_plot(trainer)

    def save_plot(self, trainer: L.Trainer) -> Path | None:
        """Write the latest shift curve as a PNG next to the logs (``trainer.log_dir``)."""
        if self.plot_name is None or self.report is None:
            return None
        directory = Path(trainer.log_dir or trainer.default_root_dir)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / self.plot_name
        shift_figure(self.report).savefig(path, dpi=120)
        return path


def in_distribution_names(datamodule: Any, names: list[str]) -> set[str]:
    """The validation sets drawn from the training distribution (``(train)`` in the table, the star in the plot).

    A DataModule says so with ``in_distribution_names``; one with an optional held-out split says whether it has
    one (``has_held_out``: then it is served first); otherwise the first set is the training mixture, as
    :class:`~rdpo_lightning.data.PreferenceDataModule` serves them."""
    declared = getattr(datamodule, "in_distribution_names", None)
    if declared is not None:
        return set(declared)
    if getattr(datamodule, "has_held_out", True) is False:
        return set()
    return set(names[:1])


def _markdown_block(text: str) -> str:
    """TensorBoard renders text as markdown: indent to keep the table's columns."""
    return "\n".join("    " + line for line in text.splitlines())
