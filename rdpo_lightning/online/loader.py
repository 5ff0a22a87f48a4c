"""The training loader of an online fit: each round's batches, drawn from the policy as training reaches the round.

Lightning iterates it like any loader (``len`` = the epoch's batches) and saves its ``state_dict`` in every
checkpoint (the ``_Stateful`` protocol, as :class:`~rdpo_lightning.data.sampler.ResumableDataLoader`): the round under
way, how many of its batches were handed out, and its pair rows. A resumed fit serves the rest of that round as it was
(its completions came from the policy before the checkpoint, which cannot be drawn again), then draws the next round
from its own seed, as the uninterrupted fit would have.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from rdpo_lightning.online.rounds import RoundPlan, RoundReport, run_round


class OnlineLoader:
    """``steps_per_round × accumulation`` batches per round, ``rounds_per_epoch`` rounds per epoch.

    ``context`` supplies, when a round starts, what the round runs with: the policy, the tokenizer, the device, the
    epoch, an all-rank "any" and a progress-bar factory. ``collate`` batches pair rows; ``report`` receives each
    round's :class:`RoundReport` with the seconds trained since the previous round."""

    def __init__(
        self,
        plan: RoundPlan,
        batch_size: int,
        batches_per_round: int,
        context: Callable[[], dict[str, Any]],
        collate: Callable[[list[dict[str, Any]]], Any],
        report: Callable[[RoundReport, float], None],
    ) -> None:
        self.plan, self.batch_size, self.batches_per_round = plan, batch_size, batches_per_round
        self.context, self.collate, self.report = context, collate, report
        self.rounds_per_epoch = plan.rounds_per_epoch()
        self.round: int | None = None  # the global index of the round under way
        self.given = 0  # its batches handed out
        self.rows: list[dict[str, Any]] = []
        self._training_since: float | None = None

    def __len__(self) -> int:
        return self.rounds_per_epoch * self.batches_per_round

    def __iter__(self) -> Iterator[Any]:
        context = self.context()
        epoch = context["epoch"]
        first = epoch * self.rounds_per_epoch
        if self.round is None or not first <= self.round < first + self.rounds_per_epoch:
            self.round, self.given, self.rows = first, 0, []
        while self.round < first + self.rounds_per_epoch:
            if not self.rows:
                self._draw(context, epoch)
            while self.given < self.batches_per_round:
                start = self.given * self.batch_size
                batch = self.collate(self.rows[start : start + self.batch_size])
                if self.given == 0:
                    self._training_since = time.perf_counter()
                self.given += 1  # before handing it out: a checkpoint after this step includes it
                yield batch
            self.round, self.given, self.rows = self.round + 1, 0, []

    def _draw(self, context: dict[str, Any], epoch: int) -> None:
        # the previous round's steps (and any validation pass between them), from its first batch to now
        trained = time.perf_counter() - self._training_since if self._training_since is not None else 0.0
        self.rows, report = run_round(
            self.plan, context["policy"], context["tokenizer"], context["device"], self.round, epoch,
            context["any_rank"], context.get("progress"),
        )  # fmt: skip
        self.report(report, trained)

    # --- Lightning's checkpoints -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"round": self.round, "given": self.given, "rows": self.rows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.round, self.given, self.rows = state["round"], state["given"], list(state["rows"])
        if self.given >= self.batches_per_round:  # the checkpoint came at the round's last step: the next one is due
            self.round, self.given, self.rows = self.round + 1, 0, []
