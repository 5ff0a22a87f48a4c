"""Optimizer hyper-parameters are checked when the module is built: torch's own range checks become one line naming
the YAML key, and what torch lets through (an infinite learning rate, a beta of 1) is refused too."""

from __future__ import annotations

import re
from functools import partial

import pytest
import torch

from rdpo_lightning.errors import InputError
from rdpo_lightning.training.module import RobustDPO
from rdpo_lightning.training.optim_checks import check_optimizer

TORCH_REFUSES = {
    "negative lr": (partial(torch.optim.AdamW, lr=-1e-4), "model.optimizer.init_args.lr: Invalid learning rate"),
    "beta0": (partial(torch.optim.Adam, betas=(-0.1, 0.9)), "model.optimizer.init_args.betas[0]: Invalid beta"),
    "weight decay": (partial(torch.optim.SGD, lr=0.1, weight_decay=-1.0), "init_args.weight_decay: Invalid"),
    "nan eps": (partial(torch.optim.AdamW, eps=float("nan")), "model.optimizer.init_args.eps: Invalid epsilon"),
    "momentum": (partial(torch.optim.SGD, lr=0.1, momentum=-0.5), "model.optimizer.init_args.momentum: Invalid"),
    "alpha": (partial(torch.optim.RMSprop, alpha=-0.5), "model.optimizer.init_args.alpha: Invalid alpha"),
    "beta of one": (partial(torch.optim.AdamW, betas=(0.9, 1.0)), "init_args.betas[1]: Invalid beta parameter"),
}
WE_REFUSE = {
    "inf lr": (partial(torch.optim.AdamW, lr=float("inf")), "model.optimizer.init_args.lr must be finite, got inf"),
    "inf eps": (partial(torch.optim.AdamW, eps=float("inf")), "model.optimizer.init_args.eps must be finite, got inf"),
    "inf weight decay": (partial(torch.optim.SGD, lr=0.1, weight_decay=float("inf")), "weight_decay must be finite"),
}


@pytest.mark.parametrize("case", sorted({**TORCH_REFUSES, **WE_REFUSE}))
def test_bad_hyper_parameters_are_one_line_naming_the_key(case):
    factory, expected = {**TORCH_REFUSES, **WE_REFUSE}[case]
    with pytest.raises(InputError, match=re.escape(expected)):
        check_optimizer(factory)
    with pytest.raises(InputError, match="model.optimizer.init_args"):  # where it enters: building the module
        RobustDPO(model_config={"model_type": "gpt2"}, optimizer=factory)


def test_good_and_unbuildable_factories_pass():
    check_optimizer(torch.optim.AdamW)
    check_optimizer(partial(torch.optim.SGD, lr=0.0, momentum=0.9))  # lr 0 is a valid (frozen) run

    def needs_a_process_group(params):
        raise RuntimeError("Default process group has not been initialized")

    check_optimizer(needs_a_process_group)  # not a hyper-parameter problem: left to configure_optimizers
