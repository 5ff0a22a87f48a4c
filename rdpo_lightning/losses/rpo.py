"""RPO: a pair loss plus an NLL term on the chosen response, which keeps the chosen likelihood from falling."""

from __future__ import annotations

from torch import Tensor

from rdpo_lightning.checks import check_choice, check_non_negative
from rdpo_lightning.losses.base import PairLoss
from rdpo_lightning.losses.pairwise import SigmoidLoss
from rdpo_lightning.pair_scores import PairScores

NLL_NORMALIZATIONS = ("tokens", "sequence")


class RPOLoss(PairLoss):
    """``loss`` (default DPO) plus α·NLL of the chosen response under the policy, per pair (Pang et al. 2024,
    "Iterative reasoning preference optimization"; TRL's ``loss_type=["sigmoid", "sft"]`` with ``loss_weights=[1, α]``;
    OpenRLHF's ``nll_loss_coef``).

    ``nll_normalization`` says what the NLL is averaged over:

    * ``"tokens"`` (default, TRL 1.16's ``sft`` term): the mean over every chosen-response token of the batch,
      −Σ_i S_i / Σ_i T_i (S_i the chosen log-prob sum, T_i its token count). Split per pair as −S_i·B/Σ_j T_j, so the
      plain mean of the per-pair losses is TRL's DPO + α·SFT exactly; the token total is the rank's own batch, as in
      TRL under data parallelism.
    * ``"sequence"`` (OpenRLHF's ``nll_loss_coef``; the RPO paper's length-normalised NLL): −S_i / T_i per pair, each
      response's mean token log-prob, whatever the other pairs of the batch.

    The inner loss decides whether the log-probs are sums or per-token means (``length_normalized``) and whether a
    reference is needed; the NLL uses the policy's log-probs alone, on the sum scale either way.
    """

    def __init__(self, loss: PairLoss | None = None, alpha: float = 1.0, nll_normalization: str = "tokens") -> None:
        super().__init__()
        check_non_negative("alpha", alpha)
        check_choice("nll_normalization", nll_normalization, NLL_NORMALIZATIONS)
        self.loss = loss if loss is not None else SigmoidLoss()
        self.alpha = float(alpha)
        self.nll_normalization = nll_normalization
        self.length_normalized = self.loss.length_normalized
        self.uses_reference = self.loss.uses_reference

    def chosen_nll(self, scores: PairScores) -> Tensor:
        """The per-pair NLL term (B,), before α."""
        tokens = scores.chosen_tokens.to(scores.policy.chosen.dtype)
        chosen = scores.policy.chosen
        total = chosen * tokens if self.length_normalized else chosen  # Σ_t log π(y_w,t | ...)
        if self.nll_normalization == "sequence":
            return -total / tokens.clamp(min=1)
        return -total * tokens.numel() / tokens.sum().clamp(min=1)

    def pair_losses(self, scores: PairScores, beta: float) -> Tensor:
        return self.loss.pair_losses(scores, beta) + self.alpha * self.chosen_nll(scores)
