"""The pair-loss interface: per-pair losses from policy and reference log-probs."""

from __future__ import annotations

from torch import Tensor, nn

from rdpo_lightning.pair_scores import PairScores


class PairLoss(nn.Module):
    """Maps the scores of a batch of preference pairs to one loss per pair.

    Losses are per pair (shape (B,)), never reduced: turning them into the training objective is the job of the
    robust strategy (``rdpo_lightning.robust``). ``length_normalized`` asks the module for mean instead of summed
    token log-probs (IPO is defined on length-normalised log-probs). ``uses_reference = False`` (reference-free
    losses such as SimPO) lets the module skip the reference model and its log-probs altogether.

    Most losses are functions of the two log-ratios and implement :meth:`forward`; a loss that needs more (the raw
    policy log-probs, the response lengths) overrides :meth:`pair_losses`, which is what the module calls.
    """

    length_normalized: bool = False
    uses_reference: bool = True

    def forward(self, chosen_logratios: Tensor, rejected_logratios: Tensor, beta: float) -> Tensor:
        """``*_logratios`` = log π(y|x) − log π_ref(y|x) for the chosen / rejected responses, shape (B,)."""
        raise NotImplementedError

    def pair_losses(self, scores: PairScores, beta: float) -> Tensor:
        """Per-pair losses (B,) of a scored batch; by default a function of the log-ratios alone."""
        return self(scores.chosen_logratios, scores.rejected_logratios, beta)

    def both_orders(self, scores: PairScores, beta: float, reversed_order: bool) -> tuple[Tensor, Tensor | None]:
        """The per-pair losses and, with ``reversed_order``, the losses of the opposite label (each rejected response
        preferred), computed by this loss on the swapped scores: exact for any loss, also one that is not a function
        of the margin alone (RPO's NLL term, SimPO's length normalisation)."""
        reversed_losses = self.pair_losses(scores.swapped(), beta) if reversed_order else None
        return self.pair_losses(scores, beta), reversed_losses
