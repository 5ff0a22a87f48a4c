"""GPU check of the variable-length attention (issue 33 item 2): what the CPU suite cannot run. Never run by the tests.

    python benchmarks/varlen_check.py                 (a CUDA GPU; about a minute)
    python benchmarks/varlen_check.py --cpu-dry-run   (rehearsal: float64 on CPU, the flash parts skipped)

1. kernel: ``flash_varlen`` (torch's ``varlen_attn``, bf16, grouped-query heads) against causal sdpa on each segment
   in float32, forward and gradients;
2. model: a tiny grouped-query Llama under bf16 autocast, a long-tailed padding-free batch run as one row (the flash
   kernel must run in every layer) against the padded batch, log-probs and gradients;
3. exact WDPO: under ``math_attention()`` the per-segment path (not flash) and a double backward through it;
4. speed: one attention layer at the 1.24 B Llama's shape (32 heads, 8 KV heads, head 64), forward + backward, the
   packed rows under sdpa with the (R, 1, L, L) block mask (what transformers runs today) against flash varlen on one
   row: milliseconds and their ratio.
Prints PASS/FAIL per part; exit status 1 if one fails.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from rdpo_lightning.data.collate import PairCollator  # noqa: E402
from rdpo_lightning.models import scoring, varlen_attention  # noqa: E402
from rdpo_lightning.robust.base import math_attention  # noqa: E402

VOCAB = 256


def long_tailed_pairs(count: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.exp(torch.randn(count, 3, generator=g) * 0.8 + 4).clamp(2, 400).long().tolist()
    return [
        {name: torch.randint(1, VOCAB, (n,), generator=g).tolist() for name, n in zip(("prompt_ids", "chosen_ids",
         "rejected_ids"), shape, strict=True)}
        for shape in lengths
    ]  # fmt: skip


def check_kernel(device: str) -> bool:
    g = torch.Generator(device=device).manual_seed(0)
    bounds = [0, 300, 301, 700, 1024]
    q = torch.randn(1, 32, 1024, 64, device=device, generator=g)
    k, v = (torch.randn(1, 8, 1024, 64, device=device, generator=g) for _ in range(2))
    leaves = [t.to(torch.bfloat16).requires_grad_() for t in (q, k, v)]
    assert varlen_attention.uses_flash_varlen(leaves[0], 0.0), "flash varlen not taken for a bf16 CUDA query"
    cu = torch.tensor(bounds, dtype=torch.int32, device=device)
    longest = max(b - a for a, b in zip(bounds, bounds[1:], strict=False))
    out = varlen_attention.flash_varlen(*leaves, cu, longest, 0.125)
    refs = [t.detach().float().requires_grad_() for t in (q, k, v)]
    want = varlen_attention.per_segment_sdpa(*refs, bounds, 0.0, 0.125)
    grad = torch.randn_like(want)
    out.float().backward(grad)
    want.backward(grad)
    errors = [(out.float() - want).abs().max().item()] + [
        (a.grad.float() - b.grad).abs().max().item() for a, b in zip(leaves, refs, strict=True)
    ]
    ok = max(errors) < 5e-2
    print(f"{'PASS' if ok else 'FAIL'} kernel: max |flash - sdpa| output, dq, dk, dv = {errors}")
    return ok


def tiny_llama(device: str, dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=2, max_position_embeddings=2048,
    )  # fmt: skip
    config._attn_implementation = "sdpa"
    return LlamaForCausalLM(config).to(device=device, dtype=dtype)


def check_model(device: str, dry: bool) -> bool:
    lm = tiny_llama(device, torch.float64 if dry else torch.float32)
    flash_calls = []
    original = varlen_attention.flash_varlen

    def counted(*args, **kwargs):
        flash_calls.append(1)
        return original(*args, **kwargs)

    varlen_attention.flash_varlen = counted
    results = []
    try:
        for padding_free in (False, True):
            batch = PairCollator(0, padding_free=padding_free)(long_tailed_pairs(8))
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            lm.zero_grad()
            with torch.autocast(device, dtype=torch.bfloat16, enabled=not dry):
                logps, mask = scoring.token_logps(lm, batch)
            sums = logps.sum(-1)
            sums.float().pow(2).mean().backward()
            results.append((sums.detach().double(), [p.grad.double().clone() for p in lm.parameters()]))
    finally:
        varlen_attention.flash_varlen = original
    (want, want_grads), (got, got_grads) = results
    one_row = getattr(lm, scoring._PACKING_CHECKED) == scoring.ONE_ROW
    error = ((got - want).abs() / want.abs().clamp(min=1)).max().item()
    pairs = zip(got_grads, want_grads, strict=True)
    grad_error = max(((a - b).norm() / b.norm().clamp(min=1e-12)).item() for a, b in pairs)
    tolerance = 1e-9 if dry else 3e-2
    flash_ran = dry or len(flash_calls) >= 4
    ok = one_row and flash_ran and error < tolerance and grad_error < tolerance
    print(
        f"{'PASS' if ok else 'FAIL'} model: one row {one_row}, flash varlen calls {len(flash_calls)}, max relative"
        f" sequence log-prob error {error:.2e}, max relative gradient error {grad_error:.2e} (tolerance {tolerance})"
    )
    return ok


def check_double_backward(device: str, dry: bool) -> bool:
    lm = tiny_llama(device, torch.float64 if dry else torch.float32)
    batch = PairCollator(0, padding_free=True)(long_tailed_pairs(4, seed=1))
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    scoring.check_packing_support(lm, batch)
    flash_calls = []
    original = varlen_attention.flash_varlen
    varlen_attention.flash_varlen = lambda *a, **k: flash_calls.append(1) or original(*a, **k)
    try:
        embeddings = lm.get_input_embeddings()
        captured = []
        hook = embeddings.register_forward_hook(lambda m, i, out: captured.append(out.requires_grad_()) or out)
        with math_attention(), torch.autocast(device, dtype=torch.bfloat16, enabled=not dry):
            logps, _ = scoring.token_logps(lm, {**batch})
        hook.remove()
        (grad,) = torch.autograd.grad(logps.sum(), captured[-1], create_graph=True)
        grad.float().pow(2).sum().backward()
        ok = not flash_calls and all(p.grad is not None for p in lm.parameters() if p.requires_grad)
    except RuntimeError as error:
        print(f"FAIL double backward: {error}")
        return False
    finally:
        varlen_attention.flash_varlen = original
    print(f"{'PASS' if ok else 'FAIL'} double backward under math_attention(): flash calls {len(flash_calls)}")
    return ok


def time_attention(device: str) -> None:
    """One attention layer, forward + backward, at the 1.24 B Llama's shape: today's masked rows vs one varlen row."""
    pairs = long_tailed_pairs(8, seed=2)
    batch = PairCollator(0, padding_free=True)(pairs)
    rows, width = batch["input_ids"].shape
    bounds, longest = batch["cu_seq_lens"], batch["max_seq_len"]
    segment = torch.zeros(rows * width, dtype=torch.long)
    for i, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False)):
        segment[a:b] = i
    segment = segment.view(rows, width).to(device)
    causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
    mask = (segment[:, :, None] == segment[:, None, :]) & causal
    q = torch.randn(rows, 32, width, 64, device=device, dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(rows, 8, width, 64, device=device, dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    cu = torch.tensor(bounds, dtype=torch.int32, device=device)

    def masked():
        kk, vv = k.repeat_interleave(4, 1), v.repeat_interleave(4, 1)  # transformers turns GQA off with a mask
        out = torch.nn.functional.scaled_dot_product_attention(q, kk, vv, attn_mask=mask[:, None])
        out.sum().backward()

    def varlen():
        one = [t.transpose(0, 1).reshape(t.shape[1], -1, 64).unsqueeze(0) for t in (q, k, v)]  # (1, H, R*L, D)
        out = varlen_attention.flash_varlen(*one, cu, longest, None)
        out.sum().backward()

    for name, step in (("masked rows (sdpa)", masked), ("one row (flash varlen)", varlen)):
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(20):
            step()
        torch.cuda.synchronize()
        print(f"time {name}: {(time.perf_counter() - start) / 20 * 1e3:.3f} ms ({rows} x {width} tokens)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu-dry-run", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    dry = parse_args(argv).cpu_dry_run
    if not dry and not torch.cuda.is_available():
        print("varlen_check: no CUDA GPU visible (--cpu-dry-run rehearses it on CPU)", file=sys.stderr)
        return 2
    device = "cpu" if dry else "cuda"
    print(f"torch {torch.__version__}, varlen_attn parameters {sorted(varlen_attention.varlen_parameters() or [])}")
    if not dry:
        print(f"device {torch.cuda.get_device_name(0)}")
    ok = [check_model(device, dry), check_double_backward(device, dry)]
    if not dry:
        ok.append(check_kernel(device))
        time_attention(device)
    return 0 if all(ok) else 1


if __name__ == "__main__":
    sys.exit(main())
