"""The pair-loss interface: per-pair losses from policy and reference log-probs."""

from __future__ import annotations

from torch import Tensor, nn


class PairLoss(nn.Module):
    """Maps the log-ratios of a batch of preference pairs to one loss per pair.

    Losses are per pair (shape (B,)), never reduced: turning them into the training objective is the job of the
    robust strategy (``rdpo_lightning.robust``). ``length_normalized`` asks the module for mean instead of summed
    token log-probs (IPO is defined on length-normalised log-probs).
    """

    length_normalized: bool = False

    def forward(self, chosen_logratios: Tensor, rejected_logratios: Tensor, beta: float) -> Tensor:
        """``*_logratios`` = log π(y|x) − log π_ref(y|x) for the chosen / rejected responses, shape (B,)."""
        raise NotImplementedError


def check_probability(name: str, value: float, upper_open: bool = True) -> None:
    """Reject a smoothing probability outside [0, 0.5) (or [0, 0.5] when ``upper_open`` is False)."""
    bad = not (isinstance(value, (int, float)) and value == value) or value < 0 or value > 0.5  # value != value: NaN
    bad = bad or (upper_open and value == 0.5)
    if bad:
        bound = "[0, 0.5)" if upper_open else "[0, 0.5]"
        raise ValueError(f"{name} must lie in {bound}, got {value}")
