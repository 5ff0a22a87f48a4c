"""A few bf16-mixed training steps of each robust objective under one strategy, on every visible GPU.

    python benchmarks/gpu_check.py --strategy {ddp,fsdp,fsdp2} [--steps 6]
    python benchmarks/gpu_check.py --strategy fsdp2 --cpu-dry-run   (2 CPU processes, tiny model: checks this script)

Lightning re-executes this script once per extra GPU. Rank 0 prints one line per case:
``RESULT <strategy> <case> PASS|FAIL <median step ms> <detail>``. A case passes when it trains ``--steps`` optimizer
steps with a finite loss and moved parameters, or, for ``wdpo_exact`` under FSDP, when it is refused with the
message that explains why. Run through ``benchmarks/gpu_check.sh``, which runs all three strategies.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import statistics
import tempfile
import time
import traceback

import datasets
import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import FSDPStrategy

from rdpo_lightning.data import AttributeWorldDataModule
from rdpo_lightning.distributed import FSDP2Strategy
from rdpo_lightning.module import RobustDPO
from rdpo_lightning.quiet import quiet_trainer
from rdpo_lightning.robust import KLReweighter, NoRobust, WassersteinPenalty

#: a GPT-2-shaped model big enough that sharding does real work, small enough to build in seconds
MODEL = {"model_type": "gpt2", "n_layer": 6, "n_head": 8, "n_embd": 512, "n_positions": 128}
TINY = {"model_type": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 32, "n_positions": 128}

#: case → (robust objective, activation checkpointing, reference log-probs precomputed (else a resident reference))
CASES = {
    "none": (NoRobust, False, True),
    "kl": (functools.partial(KLReweighter, tau=1.0), False, True),
    "kl+resident_ref": (functools.partial(KLReweighter, tau=1.0), False, False),
    "wdpo_fd": (functools.partial(WassersteinPenalty, rho=0.01, mode="finite_difference"), False, True),
    "wdpo_fd+ac": (functools.partial(WassersteinPenalty, rho=0.01, mode="finite_difference"), True, True),
    "wdpo_exact": (functools.partial(WassersteinPenalty, rho=0.01, mode="exact"), False, True),
}


class StepTimer(Callback):
    """Wall time of each training batch (CUDA-synchronised), and the policy's parameter checksum before training."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        synchronize()
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        synchronize()
        self.times.append(time.perf_counter() - self.start)

    def on_train_start(self, trainer, pl_module) -> None:
        self.before = parameter_checksum(pl_module)


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def parameter_checksum(module: RobustDPO) -> float:
    """Σ|θ| over the policy's local shards, summed over ranks (a collective under FSDP / DDP alike)."""
    local = sum(p.detach().float().abs().sum() for p in _local_tensors(module.policy))
    strategy = module.trainer.strategy
    return float(strategy.reduce(torch.as_tensor(local, device=strategy.root_device), reduce_op="sum"))


def _local_tensors(model: torch.nn.Module):
    for param in model.parameters():
        yield param.to_local() if hasattr(param, "to_local") else param


def strategy_of(name: str):
    if name == "ddp":
        return "ddp"
    if name == "fsdp":
        return FSDPStrategy(sharding_strategy="FULL_SHARD")
    return FSDP2Strategy()


def run_case(strategy: str, case: str, steps: int, cache_dir: str, cpu: bool = False) -> tuple[bool, float, str]:
    robust_factory, checkpointing, precompute = CASES[case]
    L.seed_everything(0, verbose=False)
    devices = 2 if cpu else torch.cuda.device_count()
    module = RobustDPO(
        model_config=dict(TINY if cpu else MODEL),
        robust=robust_factory(),
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-4),
        activation_checkpointing=checkpointing,
        reference_cache_dir=cache_dir,
        precompute_reference=precompute,
    )
    data = AttributeWorldDataModule(
        num_train=8 * devices * steps, num_val=16, val_alphas=[0.0], batch_size=8, max_length=64
    )
    timer = StepTimer()
    trainer = quiet_trainer(
        accelerator="cpu" if cpu else "gpu",
        devices=devices,
        strategy=strategy_of(strategy),
        precision="bf16-mixed",
        max_steps=steps,
        limit_val_batches=0,
        callbacks=[timer],
    )
    try:
        trainer.fit(module, datamodule=data)
    except ValueError as error:
        refused = case == "wdpo_exact" and strategy != "ddp" and "cannot run under FSDP" in str(error)
        return refused, math.nan, ("refused as expected: " if refused else "") + str(error).split(":")[0]
    loss = float(trainer.callback_metrics.get("train/loss", torch.tensor(math.nan)))
    moved = abs(parameter_checksum(module) - timer.before)
    median_ms = 1000 * statistics.median(timer.times[2:] or timer.times)
    ok = trainer.global_step == steps and math.isfinite(loss) and moved > 0
    if case == "wdpo_exact" and strategy != "ddp":
        return False, median_ms, "exact WDPO was not refused under FSDP"
    return (
        ok,
        median_ms,
        f"steps={trainer.global_step} loss={loss:.4f} |dθ|sum={moved:.3g} peak_mem={peak_gib():.2f}GiB",
    )


def peak_gib() -> float:
    if not torch.cuda.is_available():
        return math.nan
    peak = torch.cuda.max_memory_allocated() / 2**30
    torch.cuda.reset_peak_memory_stats()
    return peak


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategy", choices=("ddp", "fsdp", "fsdp2"), required=True)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    parser.add_argument("--cpu-dry-run", action="store_true", help="2 CPU processes and a tiny model (not fsdp)")
    args = parser.parse_args()
    datasets.disable_progress_bars()
    torch.set_float32_matmul_precision("high")
    rank0 = int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0
    cache_dir = os.environ.get("GPU_CHECK_CACHE") or tempfile.mkdtemp(prefix="gpu_check_cache_")
    for case in args.cases:
        try:
            ok, median_ms, detail = run_case(args.strategy, case, args.steps, cache_dir, args.cpu_dry_run)
        except Exception as error:  # report and go on: one broken case must not hide the others
            ok, median_ms, detail = False, math.nan, f"{type(error).__name__}: {error}".splitlines()[0][:300]
            if rank0:
                traceback.print_exc()
        if rank0:
            status = "PASS" if ok else "FAIL"
            print(f"RESULT {args.strategy:5s} {case:11s} {status} {median_ms:8.1f} ms/step  {detail}", flush=True)


if __name__ == "__main__":
    main()
