"""Each pair loss against its closed form, written out with scalar math."""

from __future__ import annotations

import math

import pytest
import torch

from rdpo_lightning.losses import HingeLoss, IPOLoss, RobustNoiseLoss, SigmoidLoss

CHOSEN = [0.5, -1.0, 2.0, 0.0, -3.0]
REJECTED = [-0.5, 1.0, 2.5, 0.0, 4.0]
BETA = 0.3


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def evaluate(loss, beta=BETA):
    return loss(torch.tensor(CHOSEN, dtype=torch.float64), torch.tensor(REJECTED, dtype=torch.float64), beta).tolist()


def test_sigmoid_is_dpo():
    expected = [-log_sigmoid(BETA * (c - r)) for c, r in zip(CHOSEN, REJECTED, strict=True)]
    assert evaluate(SigmoidLoss()) == pytest.approx(expected, rel=1e-12)


def test_label_smoothing_is_cdpo():
    eps = 0.2
    expected = [
        -(1 - eps) * log_sigmoid(BETA * (c - r)) - eps * log_sigmoid(-BETA * (c - r))
        for c, r in zip(CHOSEN, REJECTED, strict=True)
    ]
    assert evaluate(SigmoidLoss(label_smoothing=eps)) == pytest.approx(expected, rel=1e-12)


def test_robust_noise_is_rdpo():
    eps = 0.1
    expected = [
        ((1 - eps) * -log_sigmoid(BETA * (c - r)) + eps * log_sigmoid(-BETA * (c - r))) / (1 - 2 * eps)
        for c, r in zip(CHOSEN, REJECTED, strict=True)
    ]
    assert evaluate(RobustNoiseLoss(label_smoothing=eps)) == pytest.approx(expected, rel=1e-12)


def test_hinge():
    expected = [max(0.0, 1 - BETA * (c - r)) for c, r in zip(CHOSEN, REJECTED, strict=True)]
    assert evaluate(HingeLoss()) == pytest.approx(expected, rel=1e-12)


def test_ipo_and_its_length_normalisation():
    expected = [(c - r - 1 / (2 * BETA)) ** 2 for c, r in zip(CHOSEN, REJECTED, strict=True)]
    assert evaluate(IPOLoss()) == pytest.approx(expected, rel=1e-12)
    assert IPOLoss.length_normalized and not SigmoidLoss.length_normalized


def test_losses_are_per_pair():
    assert len(evaluate(SigmoidLoss())) == len(CHOSEN)


@pytest.mark.parametrize("bad", [-0.1, 0.6])
def test_bad_label_smoothing_rejected(bad):
    with pytest.raises(ValueError, match="label_smoothing"):
        SigmoidLoss(label_smoothing=bad)


def test_rdpo_rejects_half():
    with pytest.raises(ValueError, match=r"\[0, 0.5\)"):
        RobustNoiseLoss(label_smoothing=0.5)
