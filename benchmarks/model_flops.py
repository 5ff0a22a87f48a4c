"""Model FLOPs of a DPO training step, for model FLOPs utilisation (MFU).

The PaLM convention (Chowdhery et al. 2022, appendix B): training a decoder on one sequence of t tokens costs
6·N·t FLOPs for the products of its N matrix weights with the activations (forward 2·N·t; backward 4·N·t, the input
and the weight gradients), plus 12·L·d·t² for attention's score and value products (L layers, d = heads × head
dimension, the full t × t square). N counts every ``nn.Linear`` weight, the output layer included (tied or not), and
not the embedding lookup. A DPO pair trains two sequences, prompt + chosen and prompt + rejected.

The count is the model's, not the hardware's: padding, recomputation (activation checkpointing, WDPO's second pass),
a reference forward and skipped work (log-probs at response tokens only) leave it unchanged, so MFU compares
frameworks on the same useful work: their MFU ratio is their real-tokens-per-second ratio.
``tests/benchmarks/test_model_flops.py`` checks the formula against ``torch.utils.flop_counter`` on a real model.
"""

from __future__ import annotations

from collections.abc import Sequence

#: dense bf16 matrix-product rate of one H200 measured on this workplace's machines (8192³ products on random data,
#: 769-798 TFLOP/s; the datasheet's dense figure is about 990): the denominator of MFU on that GPU
H200_BF16_TFLOPS = 790.0


def matmul_parameters(model) -> int:
    """N: the weights of every ``nn.Linear`` of ``model`` (a tied output layer counts: it is a product)."""
    from torch import nn

    return sum(module.weight.numel() for module in model.modules() if isinstance(module, nn.Linear))


def sequence_flops(matmul_params: int, layers: int, width: int, length: int) -> int:
    """Forward and backward of one sequence of ``length`` tokens: 6·N·t + 12·L·d·t²."""
    return 6 * matmul_params * length + 12 * layers * width * length * length


def pairs_flops(shapes: Sequence[Sequence[int]], matmul_params: int, layers: int, width: int) -> int:
    """Both sequences of each (prompt, chosen, rejected) pair of ``shapes``."""
    return sum(
        sequence_flops(matmul_params, layers, width, prompt + chosen)
        + sequence_flops(matmul_params, layers, width, prompt + rejected)
        for prompt, chosen, rejected in shapes
    )


def utilisation(flops: float, seconds: float, peak_tflops: float) -> float:
    """Achieved model FLOP/s as a fraction of ``peak_tflops``."""
    return flops / seconds / (peak_tflops * 1e12)
