"""N micro-batches of B pairs give the one-step update of one batch of N·B pairs, for every strategy (one process).

One SGD step (lr=1, float64): the parameter delta is −(gradient of the objective), so equal deltas (1e-12) mean the
objective was formed over the whole optimizer batch. The runs come from ``tests/distributed/_strategy_steps.py``
(single-process cases); the 2-process DDP / FSDP2 cases are in ``tests/distributed/test_strategy_steps.py``. The
reference differs from the initial policy, so pair losses, hence the weights, are not uniform at step 0.
"""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parents[1] / "distributed" / "_strategy_steps.py"
EVERY_STRATEGY = ("none", "kl", "kl_clamped", "cvar", "chi_square", "dr_dpo", "group_dro", "wdpo_fd", "wdpo_exact")
ATOL = 1e-12


@pytest.fixture(scope="module")
def step(tiny_model_dir, tiny_reference_dir, tmp_path_factory):
    """``step(case)``: the policy's parameters after one step of ``single:<case>`` (cached per case)."""
    import datasets

    datasets.disable_progress_bars()
    run_case = runpy.run_path(str(SCRIPT))["run_case"]
    cache, done = tmp_path_factory.mktemp("accumulation_cache"), {}

    def run(case: str) -> dict[str, torch.Tensor]:
        if case not in done:
            model, reference = str(tiny_model_dir), str(tiny_reference_dir)
            params, refusal = run_case(f"single:{case}", model, reference, str(cache))
            assert refusal is None, refusal
            done[case] = params
        return done[case]

    return run


def assert_same_update(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], case: str) -> None:
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=ATOL, msg=f"{case}: {name}")


def largest_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[n] - b[n]).abs().max()) for n in a)


@pytest.mark.parametrize("robust", EVERY_STRATEGY)
def test_four_micro_batches_give_the_full_batch_step(robust, step):
    assert_same_update(step(f"{robust}+acc4"), step(robust), f"{robust}+acc4")


@pytest.mark.parametrize("robust", ["kl", "cvar"])
def test_unequal_micro_batches_are_weighted_exactly(robust, step):
    """8 pairs as micro-batches of 3, 3 and 2 (the epoch's last window is short): each pair still counts once."""
    assert_same_update(step(f"{robust}+acc3"), step(robust), f"{robust}+acc3")


@pytest.mark.parametrize("case", ["kl+pf", "wdpo_exact+pf", "chi_square+lora", "group_dro+lora"])
def test_padding_free_and_lora_micro_batches_give_the_full_batch_step(case, step):
    assert_same_update(step(f"{case}+acc4"), step(case), f"{case}+acc4")


@pytest.mark.parametrize("robust", ["kl", "cvar", "group_dro"])
def test_the_per_micro_batch_objective_is_another_update(robust, step):
    """Guards the equalities above: forming the objective per micro-batch (the explicit option) moves the policy
    differently, and at one pair per micro-batch every reweighting is DPO."""
    assert largest_difference(step(f"{robust}+acc4+micro"), step(robust)) > 1e-4
    if robust != "group_dro":  # its weights move between micro-batches
        assert_same_update(step(f"{robust}+acc8+micro"), step("none"), f"{robust}+acc8+micro")
