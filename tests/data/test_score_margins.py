"""Each training pair's attribute score margins, against the scores recomputed from its text (the world) or looked up
in the source rows (scored completions); the mixture space the DataModules describe; ragged columns refused."""

from __future__ import annotations

import numpy as np
import pytest

from rdpo_lightning.data import AttributeWorldDataModule
from rdpo_lightning.data.collate import PairCollator
from rdpo_lightning.data.score_margins import SCORE_MARGINS, score_margins
from rdpo_lightning.data.world import AttributeWorld
from rdpo_lightning.errors import InputError
from tests.data.test_scored import SCORES, helpsteer_rows, raw_splits, scored


@pytest.mark.parametrize("kind", ["convex", "geometric"])
def test_world_margins_are_the_rewards_of_the_chosen_minus_the_rejected(kind, tmp_path):
    data = AttributeWorldDataModule(
        num_train=24, num_val=8, val_alphas=[1.0], mixture_kind=kind, cache_dir=str(tmp_path), seed=3
    )
    data.tokenizer = data.build_tokenizer()
    train, vals = data.build_splits()
    world = AttributeWorld()  # the default world, rebuilt: the rewards come from the text alone
    chosen, rejected = world.attribute_rewards(train["chosen"]), world.attribute_rewards(train["rejected"])
    want = np.log(chosen) - np.log(rejected) if kind == "geometric" else chosen - rejected
    np.testing.assert_allclose(np.asarray(train[SCORE_MARGINS]), want, rtol=0, atol=1e-12)
    assert all(SCORE_MARGINS not in v.column_names and "group" not in v.column_names for v in vals.values())
    space = data.mixture_space()
    assert space.attributes == tuple(world.attributes) and space.kind == kind and space.pair == (3, 4)
    assert [m.weights for m in space.train] == [(0.0, 0.0, 0.0, 0.1, 0.9)]


def test_scores_equal_up_to_rounding_have_a_margin_of_exactly_zero():
    """0.1 + 0.2 and 0.3 are one score rounded two ways (5.6e-17 apart): their margin is 0, not noise of either sign
    that a mixture would read as a preference; a real difference of 1e-9 stays, and so do the sizes of tiny scores
    (1e-300 against 0) and a geometric margin of two zero scores (not a number)."""
    convex = score_margins(np.array([0.1 + 0.2, 0.3, 1e-300, 0.3 + 1e-9]), np.array([0.3, 0.3, 0.0, 0.3]), "convex")
    assert 0.1 + 0.2 - 0.3 != 0
    assert convex[:3] == [0.0, 0.0, 1e-300] and convex[3] == pytest.approx(1e-9, rel=1e-6)
    geometric = score_margins(np.array([0.1 + 0.2, 0.0, 0.5]), np.array([0.3, 0.0, 0.25]), "geometric")
    assert geometric[0] == 0.0 and np.isnan(geometric[1]) and geometric[2] == pytest.approx(np.log(2))


def test_scored_completion_margins_are_the_source_rows_scores(tmp_path, world_tokenizer_dir):
    rows = helpsteer_rows(30, seed=4)
    dm = scored(tmp_path, world_tokenizer_dir, rows, helpsteer_rows(6, seed=5), train_alpha=0.3)
    train, _ = raw_splits(dm)
    by_text = {(r["prompt"], r["response"]): [r[k] for k in SCORES] for r in rows}
    for prompt, chosen, rejected, margins in zip(
        train["prompt"], train["chosen"], train["rejected"], train[SCORE_MARGINS], strict=True
    ):
        want = np.subtract(by_text[prompt, chosen], by_text[prompt, rejected])
        assert margins == pytest.approx(want.tolist(), abs=0)
    assert dm.mixture_space().attributes == tuple(SCORES) and dm.mixture_space().pair == (0, 4)


def test_margin_lists_reach_the_strategy_as_a_matrix_and_ragged_ones_are_refused():
    base = {"prompt_ids": [5], "chosen_ids": [6], "rejected_ids": [7], "group": 0}
    batch = PairCollator(0)([{**base, SCORE_MARGINS: [0.5, -1.0]}, {**base, SCORE_MARGINS: [2, 0]}])
    assert batch["columns"][SCORE_MARGINS].tolist() == [[0.5, -1.0], [2.0, 0.0]]
    assert batch["columns"]["group"].tolist() == [0, 0]
    with pytest.raises(InputError, match="'score_margins' holds lists of different lengths \\(2, 3\\)"):
        PairCollator(0)([{**base, SCORE_MARGINS: [0.5, -1.0]}, {**base, SCORE_MARGINS: [1.0, 2.0, 3.0]}])
