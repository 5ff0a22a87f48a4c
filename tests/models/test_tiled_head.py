"""The tiled output layer against autograd through the full logits (``linear``, scale, soft-cap, ``log_softmax``,
``gather``), in float64 for any per-token upstream gradient, tile sizes that divide neither the tokens nor the
vocabulary, with and without a bias; and under bf16 autocast, where its products run in bf16 as ``nn.Linear``'s would
and its weight gradient is accumulated in float32."""

from __future__ import annotations

import pytest
import torch

from rdpo_lightning.models.tiled_head import tiled_head_logps

N, H, V = 23, 8, 37


def full_logits_logps(hidden, weight, bias, targets, scale, softcap):
    logits = torch.nn.functional.linear(hidden, weight, bias)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32)) * scale
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def leaves(bias: bool, dtype=torch.float64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=g, dtype=dtype).requires_grad_()
    weight = torch.randn(V, H, generator=g, dtype=dtype).requires_grad_()
    b = torch.randn(V, generator=g, dtype=dtype).requires_grad_() if bias else None
    targets = torch.randint(0, V, (N,), generator=g)
    upstream = torch.randn(N, generator=g, dtype=dtype)  # a robust strategy's arbitrary per-token weights
    return hidden, weight, b, targets, upstream


def values_and_grads(fn, hidden, weight, bias, upstream):
    inputs = [hidden, weight] + ([bias] if bias is not None else [])
    out = fn()
    return out.detach(), torch.autograd.grad(out, inputs, upstream)


@pytest.mark.parametrize("bias", [False, True], ids=["no_bias", "bias"])
@pytest.mark.parametrize("softcap", [None, 1.5], ids=["plain", "softcap"])
@pytest.mark.parametrize(("token_tile", "vocab_tile"), [(5, 6), (1, 37), (23, 1), (7, 100), (4096, 32768)])
def test_log_probs_and_gradients_equal_autograd_through_full_logits(bias, softcap, token_tile, vocab_tile):
    hidden, weight, b, targets, upstream = leaves(bias)
    scale = 0.7
    ours = values_and_grads(
        lambda: tiled_head_logps(hidden, weight, b, targets, scale, softcap, token_tile, vocab_tile),
        hidden, weight, b, upstream,
    )  # fmt: skip
    want = values_and_grads(
        lambda: full_logits_logps(hidden, weight, b, targets, scale, softcap), hidden, weight, b, upstream
    )
    torch.testing.assert_close(ours[0], want[0], rtol=0, atol=1e-12)
    for got, expected in zip(ours[1], want[1], strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    assert want[0].abs().min() > 0.01 and all(grad.abs().max() > 0.1 for grad in want[1])


def test_only_the_inputs_that_need_a_gradient_get_one():
    hidden, weight, _, targets, upstream = leaves(False)
    frozen = weight.detach()
    out = tiled_head_logps(hidden, frozen, None, targets, 1.0, None, 5, 6)
    (grad,) = torch.autograd.grad(out, [hidden], upstream)
    want = full_logits_logps(hidden, frozen, None, targets, 1.0, None)
    torch.testing.assert_close(grad, torch.autograd.grad(want, [hidden], upstream)[0], rtol=0, atol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(tiled_head_logps(hidden, weight, None, targets, 1.0, None, 5, 6), want, atol=1e-12,
                                   rtol=0)  # fmt: skip


def test_bf16_autocast_runs_the_products_in_bf16_and_accumulates_the_weight_gradient_in_float32():
    """Under autocast the log-probs are those of bf16 logits (as ``nn.Linear`` gives), and the weight gradient summed
    over 128 token tiles stays within bf16's rounding of one product of the float64 gradient, where summing it in bf16
    drifts ~40x further."""
    g = torch.Generator().manual_seed(3)
    n, h, v = 1024, 16, 50
    hidden = (torch.randn(n, h, generator=g) * 0.1 + 1.0).requires_grad_()
    weight = (torch.randn(v, h, generator=g) * 0.1).requires_grad_()
    targets = torch.full((n,), 3)  # every token's gradient pushes the same rows the same way: errors add up
    upstream = torch.rand(n, generator=g) + 0.5
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = tiled_head_logps(hidden, weight, None, targets, 1.0, None, 8, 16)
        bf16_logits = full_logits_logps(hidden, weight, None, targets, 1.0, None)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, bf16_logits, rtol=0, atol=1e-5)
    grad_hidden, grad_weight = torch.autograd.grad(ours, [hidden, weight], upstream)
    assert grad_hidden.dtype == torch.float32 and grad_weight.dtype == torch.float32

    exact = [x.detach().double().requires_grad_() for x in (hidden, weight)]
    want = torch.autograd.grad(full_logits_logps(*exact, None, targets, 1.0, None), exact, upstream.double())
    for got, expected, bound in zip((grad_hidden, grad_weight), want, (2e-2, 2e-3), strict=True):
        relative = (got.double() - expected).abs().max() / expected.abs().max()
        assert relative < bound, relative
