"""What the policy and the reference say about a batch of pairs: the numbers pair losses and strategies read."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class PairLogps:
    """Sequence log-probs of the chosen and rejected responses, each (B,): sums of response-token log-probs, or
    per-token means when the pair loss is length-normalised."""

    chosen: Tensor
    rejected: Tensor


@dataclass
class PairScores:
    """Policy and reference log-probs of a batch of pairs and the response lengths they were taken over.

    ``chosen_tokens`` / ``rejected_tokens`` (B,) count the response tokens that were scored, so a loss can
    normalise by length (SimPO) or weight a per-token term (an NLL on the chosen response) itself.
    ``router_aux_loss``: a Mixture-of-Experts policy's router load-balancing loss over the batch's forward, when the
    objective includes it (:mod:`rdpo_lightning.models.router_aux`); None otherwise.
    """

    policy: PairLogps
    reference: PairLogps
    chosen_tokens: Tensor
    rejected_tokens: Tensor
    router_aux_loss: Tensor | None = None

    def swapped(self) -> PairScores:
        """The same pairs in the reversed order (each rejected response as the chosen one): the scores a pair loss
        needs for the loss of the opposite label, whatever it reads (log-ratios, raw log-probs, lengths)."""
        return PairScores(
            PairLogps(self.policy.rejected, self.policy.chosen),
            PairLogps(self.reference.rejected, self.reference.chosen),
            self.rejected_tokens,
            self.chosen_tokens,
            router_aux_loss=self.router_aux_loss,
        )

    @property
    def chosen_logratios(self) -> Tensor:
        """log π(y_w|x) − log π_ref(y_w|x), (B,)."""
        return self.policy.chosen - self.reference.chosen

    @property
    def rejected_logratios(self) -> Tensor:
        """log π(y_l|x) − log π_ref(y_l|x), (B,)."""
        return self.policy.rejected - self.reference.rejected

    def rewards(self, beta: float) -> tuple[Tensor, Tensor]:
        """DPO's implicit rewards β·(log π − log π_ref) of the chosen and rejected responses, detached."""
        return beta * self.chosen_logratios.detach(), beta * self.rejected_logratios.detach()

    def metrics(self, beta: float) -> dict[str, Tensor]:
        """TRL's per-batch metric set (batch means): rewards, margins, accuracies and policy log-probs."""
        chosen, rejected = self.rewards(beta)
        return {
            "rewards/chosen": chosen.mean(),
            "rewards/rejected": rejected.mean(),
            "rewards/margins": (chosen - rejected).mean(),
            "rewards/accuracies": (chosen > rejected).float().mean(),
            "logps/chosen": self.policy.chosen.detach().mean(),
            "logps/rejected": self.policy.rejected.detach().mean(),
        }
