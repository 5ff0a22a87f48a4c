"""The output layer alone: the tiled ``autograd.Function`` against the checkpointed chunks it replaced (issue 33).

    python benchmarks/output_layer.py                                   # CPU, 2,048 tokens, H 2,048, V 128,256, fp32
    python benchmarks/output_layer.py --device cuda --dtype bf16 --tokens 16384
    python benchmarks/output_layer.py --tiny                            # a few tokens: checks this script

Each path runs ``head_token_logps`` forward and backward once (after one warm-up on CUDA) with a random per-token
upstream gradient, the scored positions given as the collator gives them; the chunked path is the one exact WDPO
takes (inside ``double_backward()``). It prints one line per path: wall time, CPU time, and peak memory (CUDA: the
allocator's peak over the inputs; CPU: the peak resident set's growth over the inputs, each path in a fresh process,
the weight gradient included), the log-prob sum and the weight-gradient norm (the paths must agree). On CUDA the tiled
path's forward and backward also run under ``torch.cuda.set_sync_debug_mode("error")``: the line says whether the
host waited on the device, and the same check on the boolean-mask gather it replaced shows what it would catch.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rdpo_lightning.batch_layout import scored_positions  # noqa: E402
from rdpo_lightning.double_backward import double_backward  # noqa: E402
from rdpo_lightning.models.fused_logprobs import OutputHead, head_token_logps  # noqa: E402

DTYPES = {"float32": torch.float32, "bf16": torch.bfloat16}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=128_256)
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32", help="bf16: autocast over fp32 weights")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on CPU")
    parser.add_argument("--tiny", action="store_true", help="a few tokens and a small vocabulary")
    parser.add_argument("--path", choices=["tiled", "chunked"], help=argparse.SUPPRESS)  # one path, this process
    args = parser.parse_args(argv)
    if args.tiny:
        args.tokens, args.hidden, args.vocab = 37, 16, 301
    return args


def inputs(args: argparse.Namespace):
    torch.manual_seed(0)
    device = torch.device(args.device)
    layer = nn.Linear(args.hidden, args.vocab, bias=False, device=device)
    hidden = torch.randn(1, args.tokens + 1, args.hidden, device=device, requires_grad=True)
    labels = torch.randint(0, args.vocab, (1, args.tokens + 1), device=device)
    positions = scored_positions(labels.cpu()).to(device)
    upstream = torch.randn(1, args.tokens, device=device)
    return OutputHead(layer), hidden, labels, positions, upstream


def step(path: str, args: argparse.Namespace, head, hidden, labels, positions, upstream) -> torch.Tensor:
    head.layer.weight.grad = hidden.grad = None
    autocast = torch.autocast(hidden.device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")
    if path == "chunked":
        with double_backward(), autocast:
            logps, _ = head_token_logps(hidden, labels, head, positions=positions)
    else:
        with autocast:
            logps, _ = head_token_logps(hidden, labels, head, positions=positions)
    (logps * upstream).sum().backward()
    return logps.detach()


def host_syncs(args: argparse.Namespace, head, hidden, labels, positions, upstream) -> str:
    """Whether the tiled path's forward and backward make the host wait on the device (CUDA only), and whether the
    check catches the boolean-mask gather that was there before."""
    if hidden.device.type != "cuda":
        return ""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        try:
            step("tiled", args, head, hidden, labels, positions, upstream)
            verdict = "no host sync"
        except RuntimeError as error:
            verdict = f"host sync: {str(error).splitlines()[0]}"
        try:
            hidden[:, :-1][labels[:, 1:] >= 0]
            control = "the boolean-mask gather was not caught (check inconclusive)"
        except RuntimeError:
            control = "the boolean-mask gather is caught"
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return f" | {verdict} ({control})"


def measure(path: str, args: argparse.Namespace) -> str:
    torch.set_num_threads(args.threads)
    tensors = inputs(args)
    cuda = tensors[1].device.type == "cuda"
    if cuda:
        step(path, args, *tensors)  # warm-up: kernels, allocator
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    wall, cpu = time.perf_counter(), time.process_time()
    logps = step(path, args, *tensors)
    if cuda:
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    grad = tensors[0].layer.weight.grad.double().norm().item()
    syncs = host_syncs(args, *tensors) if path == "tiled" else ""
    return (
        f"{path:7s} n={args.tokens} H={args.hidden} V={args.vocab} {args.dtype} {args.device}: {wall:.3f} s wall,"
        f" {cpu:.3f} s CPU, peak +{(peak - base) / 2**20:.0f} MiB | log-prob sum {logps.double().sum().item():.6e},"
        f" |dW| {grad:.6e}{syncs}"
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.path is not None:
        print(measure(args.path, args), flush=True)
        return
    for path in ("chunked", "tiled"):
        if args.device == "cpu" and not args.tiny:  # a fresh process per path: its peak RSS is its own
            command = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--path", path]
            print(subprocess.run(command, check=True, capture_output=True, text=True).stdout, end="", flush=True)
        else:
            print(measure(path, args), flush=True)


if __name__ == "__main__":
    main()
