"""Fused Adam/AdamW by default on CUDA, decided on CPU with the parameters' device faked: the decision, the user's
explicit choice winning, and the rebuilt optimizer stepping as the configured one does."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from rdpo_lightning.training import optimizers
from rdpo_lightning.training.optimizers import build_optimizer, fused_by_default, steps_where_fused_reads_them


def params(device: str = "cpu") -> list[torch.nn.Parameter]:
    torch.manual_seed(0)
    return [torch.nn.Parameter(torch.randn(4, 3, device=device)), torch.nn.Parameter(torch.randn(5, device=device))]


@pytest.mark.parametrize(
    "factory, devices, fused",
    [
        (torch.optim.AdamW, {"cuda"}, True),
        (partial(torch.optim.Adam, lr=0.1), {"cuda"}, True),
        (torch.optim.AdamW, {"cpu"}, False),
        (torch.optim.AdamW, {"cuda", "cpu"}, False),
        (partial(torch.optim.AdamW, fused=False), {"cuda"}, False),  # the user's choice wins
        (partial(torch.optim.AdamW, foreach=True), {"cuda"}, False),
        (partial(torch.optim.AdamW, foreach=False), {"cuda"}, False),
        (partial(torch.optim.AdamW, differentiable=True), {"cuda"}, False),  # fused refuses it
        (partial(torch.optim.SGD, lr=0.1), {"cuda"}, False),
        (type("MyAdamW", (torch.optim.AdamW,), {}), {"cuda"}, False),  # a subclass may step otherwise
    ],
)  # fmt: skip
def test_the_decision(factory, devices, fused):
    assert fused_by_default(factory(params("meta")), devices) is fused
    # under 16-mixed Lightning leaves unscaling to a fused step, after clipping: never fused there by default
    assert fused_by_default(factory(params("meta")), devices, loss_scaled=True) is False


def test_the_parameters_device_decides(monkeypatch):
    assert optimizers.parameter_devices(torch.optim.AdamW(params("meta"))) == {"meta"}
    assert build_optimizer(torch.optim.AdamW, params()).defaults["fused"] is None  # on CPU: as configured


def test_rebuilt_fused_steps_as_configured(monkeypatch, caplog):
    """With the device faked as CUDA the optimizer is rebuilt fused (torch's fused AdamW also runs on CPU), keeps
    every configured hyper-parameter, and takes the steps torch's default (foreach/for-loop) form takes."""
    monkeypatch.setattr(optimizers, "parameter_devices", lambda optimizer: {"cuda"})
    factory = partial(torch.optim.AdamW, lr=0.05, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.3, amsgrad=True)
    with caplog.at_level("INFO"):
        fused = build_optimizer(factory, fused_params := params())
    configured = factory(plain_params := params())
    assert fused.defaults == {**configured.defaults, "fused": True}
    assert [line for line in caplog.messages if "runs fused" in line] == [
        "optimizer: AdamW runs fused on CUDA (one kernel a step; set model.optimizer.init_args.fused: false to keep"
        " torch's foreach form)"
    ]
    for step in range(3):
        torch.manual_seed(step)
        for p, q in zip(fused_params, plain_params, strict=True):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        fused.step()
        configured.step()
    for p, q, initial in zip(fused_params, plain_params, params(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)
        assert (p - initial).abs().min() > 0.01  # they moved
    monkeypatch.setattr(optimizers, "parameter_devices", lambda optimizer: {"cuda"})
    assert build_optimizer(partial(factory, fused=False), params()).defaults["fused"] is False


def test_a_foreach_checkpoints_steps_move_where_fused_reads_them():
    """A checkpoint of the foreach form keeps ``step`` on the CPU (float, any dtype); once ``fused`` is put back the
    steps go to each parameter's device in float32 (here the meta device stands for CUDA)."""
    meta = params("meta")
    optimizer = torch.optim.AdamW(meta)
    optimizer.state[meta[0]] = {"step": torch.tensor(3.0, dtype=torch.float64)}
    optimizer.state[meta[1]] = {"step": torch.tensor(3.0)}
    steps_where_fused_reads_them(optimizer)  # not fused: left alone
    assert optimizer.state[meta[0]]["step"].device.type == "cpu"
    optimizer.param_groups[0]["fused"] = True
    steps_where_fused_reads_them(optimizer)
    for p in meta:
        step = optimizer.state[p]["step"]
        assert step.device.type == "meta" and step.dtype == torch.float32
