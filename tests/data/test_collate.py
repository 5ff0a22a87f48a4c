"""PairCollator: padding, labels, and precomputed reference log-probs passed through to the module."""

from __future__ import annotations

import pytest
import torch

from rdpo_lightning.batch_layout import IGNORE_INDEX, SCORED_POSITIONS
from rdpo_lightning.data.collate import PairCollator

EXAMPLES = [
    {"prompt_ids": [5, 6], "chosen_ids": [7, 2], "rejected_ids": [8, 9, 2]},
    {"prompt_ids": [10], "chosen_ids": [11, 12, 2], "rejected_ids": [2]},
]


def test_rows_padding_and_labels() -> None:
    batch = PairCollator(pad_token_id=0)(EXAMPLES)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 2, 0], [10, 11, 12, 2, 0], [5, 6, 8, 9, 2], [10, 2, 0, 0, 0]]
    assert batch["attention_mask"].sum(1).tolist() == [4, 4, 5, 2]
    assert batch["labels"][0].tolist() == [IGNORE_INDEX, IGNORE_INDEX, 7, 2, IGNORE_INDEX]
    assert "reference_chosen_logps" not in batch


@pytest.mark.parametrize("padding_free", [False, True], ids=["padded", "packed"])
def test_scored_positions_are_the_flat_positions_whose_next_label_is_scored(padding_free) -> None:
    """Plain integers for the output layer's gather (no boolean mask on the device): r·T + t for every position t of
    row r whose label t + 1 is scored, in row-major order."""
    batch = PairCollator(pad_token_id=0, padding_free=padding_free)(EXAMPLES)
    labels = batch["labels"].tolist()
    width = len(labels[0])
    want = [r * width + t for r, row in enumerate(labels) for t in range(width - 1) if row[t + 1] != IGNORE_INDEX]
    assert batch[SCORED_POSITIONS].dtype == torch.long
    assert batch[SCORED_POSITIONS].tolist() == want and len(want) == 9


def test_reference_logps_pass_through() -> None:
    examples = [
        dict(ex, reference_chosen_logps=-1.5 - i, reference_rejected_logps=-2.5 - i) for i, ex in enumerate(EXAMPLES)
    ]
    batch = PairCollator(pad_token_id=0)(examples)
    assert batch["reference_chosen_logps"].dtype == torch.float64  # lossless: the module casts to its own dtype
    assert batch["reference_chosen_logps"].tolist() == [-1.5, -2.5]
    assert batch["reference_rejected_logps"].tolist() == [-2.5, -3.5]


def test_precomputed_reference_gives_the_online_losses(tiny_model_dir) -> None:
    """Reference log-probs computed once and carried by the batch reproduce the losses of the online reference."""
    from rdpo_lightning.training.module import RobustDPO

    torch.manual_seed(0)
    module = RobustDPO(model=str(tiny_model_dir))
    module.configure_model()
    with torch.no_grad():  # move the policy away from the reference, so a wrong reference would show
        for p in module.policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    online = PairCollator(pad_token_id=0)(EXAMPLES)
    reference = module.reference_logps(online)
    examples = [
        dict(ex, reference_chosen_logps=float(c), reference_rejected_logps=float(r))
        for ex, c, r in zip(EXAMPLES, reference.chosen, reference.rejected, strict=True)
    ]
    precomputed = PairCollator(pad_token_id=0)(examples)
    module.reference = None  # the precomputed path must not need it
    pairs_online = module.policy_forward(online, reference)
    pairs_precomputed = module.policy_forward(precomputed, module.reference_logps(precomputed))
    torch.testing.assert_close(pairs_precomputed.losses, pairs_online.losses)
    assert pairs_online.losses.abs().sum() > 0
    with pytest.raises(RuntimeError, match="no reference model is resident"):  # the dropped reference is needed
        module.reference_logps(online)
