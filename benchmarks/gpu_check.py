"""A few bf16-mixed training steps of each robust objective under one strategy, on every visible GPU.

    python benchmarks/gpu_check.py --strategy {ddp,fsdp,fsdp2} [--steps 6]
    python benchmarks/gpu_check.py --strategy single --cases qlora qlora+export   (one GPU: a 4-bit NF4 base)
    python benchmarks/gpu_check.py --strategy fsdp2 --cpu-dry-run   (2 CPU processes, tiny model: checks this script)

Lightning re-executes this script once per extra GPU. Rank 0 prints one line per case:
``RESULT <strategy> <case> PASS|FAIL <median step ms> <detail>``. A case passes when it trains ``--steps`` optimizer
steps with a finite loss and moved parameters, or, for ``wdpo_exact`` under FSDP, when it is refused with the
message that explains why. Run through ``benchmarks/gpu_check.sh``, which runs all three strategies.

``lora...`` cases train LoRA adapters (the base is the reference: cached, or resident with ``resident_ref``);
``...+export`` cases then save the checkpoint the strategy writes (FSDP1: a full state dict file, then a sharded
directory; FSDP2: a distributed-checkpoint directory; DDP: a file), export it with ``rdpo export`` on rank 0 and check
that the merged model loads with ``from_pretrained`` and reproduces the policy's logits. ``qlora`` cases load the base
in 4-bit NF4 with bf16 compute (bitsandbytes) on one GPU. ``...+pf`` cases pack each batch (``data.padding_free``)
with the default fused output-layer log-probs; ``...+full`` cases switch the fused path off (``fused_logprobs:
false``), a baseline for their step time and peak memory (with this small vocabulary the saving is small:
``benchmarks/scale.py`` measures it at a 128,256-token vocabulary).
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
from peft import LoraConfig

from rdpo_lightning.data import AttributeWorldDataModule
from rdpo_lightning.robust import KLReweighter, NoRobust, WassersteinPenalty
from rdpo_lightning.training.module import RobustDPO
from rdpo_lightning.training.quiet import quiet_trainer
from rdpo_lightning.training.strategies import FSDP2Strategy

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
    "lora+export": (NoRobust, False, True),
    "lora+kl+resident_ref": (functools.partial(KLReweighter, tau=1.0), False, False),
    "lora+wdpo_fd": (functools.partial(WassersteinPenalty, rho=0.01, mode="finite_difference"), False, True),
    "none+pf": (NoRobust, False, True),
    "none+full": (NoRobust, False, True),
    "wdpo_fd+pf": (functools.partial(WassersteinPenalty, rho=0.01, mode="finite_difference"), False, True),
    "wdpo_exact+pf": (functools.partial(WassersteinPenalty, rho=0.01, mode="exact"), False, True),
    "qlora": (NoRobust, False, True),
    "qlora+export": (functools.partial(WassersteinPenalty, rho=0.01, mode="finite_difference"), False, True),
}
#: the cases each strategy runs by default (QLoRA: one GPU, ``--strategy single``)
STRATEGY_CASES = {
    "single": ["qlora", "qlora+export"],
    **{name: [c for c in CASES if not c.startswith("qlora")] for name in ("ddp", "fsdp", "fsdp2")},
}
LORA = {"r": 16, "lora_alpha": 32, "target_modules": "all-linear"}
QUANTIZATION = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "bfloat16"}


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
    if name in ("ddp", "single"):
        return "ddp" if name == "ddp" else "auto"
    if name == "fsdp":
        return FSDPStrategy(sharding_strategy="FULL_SHARD")
    return FSDP2Strategy()


def run_case(strategy: str, case: str, steps: int, cache_dir: str, cpu: bool = False) -> tuple[bool, float, str]:
    robust_factory, checkpointing, precompute = CASES[case]
    L.seed_everything(0, verbose=False)
    devices = 1 if strategy == "single" else 2 if cpu else torch.cuda.device_count()
    adapters = {}
    if case.startswith("lora"):
        adapters = {"peft": LoraConfig(**LORA)}
    elif case.startswith("qlora"):  # quantization needs saved weights to load
        adapters = {"peft": LoraConfig(**LORA), "quantization": QUANTIZATION, "model": saved_base(cache_dir)}
    module = RobustDPO(
        model_config=None if "model" in adapters else dict(TINY if cpu else MODEL),
        **adapters,
        robust=robust_factory(),
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-4),
        activation_checkpointing=checkpointing,
        reference_cache_dir=cache_dir,
        precompute_reference=precompute,
        fused_logprobs=not case.endswith("+full"),
    )
    data = AttributeWorldDataModule(
        num_train=8 * devices * steps,
        num_val=16,
        val_alphas=[0.0],
        batch_size=8,
        max_length=64,
        padding_free=case.endswith("+pf"),
        tokenizer_dir=adapters.get("model"),
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
        refused = case.startswith("wdpo_exact") and strategy != "ddp" and "cannot run under FSDP" in str(error)
        return refused, math.nan, ("refused as expected: " if refused else "") + str(error).split(":")[0]
    loss = float(trainer.callback_metrics.get("train/loss", torch.tensor(math.nan)))
    moved = abs(parameter_checksum(module) - timer.before)
    median_ms = 1000 * statistics.median(timer.times[2:] or timer.times)
    ok = trainer.global_step == steps and math.isfinite(loss) and moved > 0
    if case.startswith("wdpo_exact") and strategy != "ddp":
        return False, median_ms, "exact WDPO was not refused under FSDP"
    detail = f"steps={trainer.global_step} loss={loss:.4f} |dθ|sum={moved:.3g} peak_mem={peak_gib():.2f}GiB"
    if case.endswith("+export"):
        exported, how = check_exports(trainer, module, cache_dir, f"{strategy}-{case}")
        ok, detail = ok and exported, f"{detail} export: {how}"
    return ok, median_ms, detail


def saved_base(cache_dir: str) -> str:
    """MODEL with random weights and the world's tokenizer, saved once (QLoRA quantizes weights it loads)."""
    from rdpo_lightning.models.loading import load_causal_lm

    directory = os.path.join(cache_dir, "qlora_base")
    if not os.path.isfile(os.path.join(directory, "config.json")):
        tokenizer = AttributeWorldDataModule().build_tokenizer()
        torch.manual_seed(0)
        load_causal_lm(None, dict(MODEL), tokenizer).save_pretrained(directory)
        tokenizer.save_pretrained(directory)
    return directory


def check_exports(trainer: L.Trainer, module: RobustDPO, cache_dir: str, name: str) -> tuple[bool, str]:
    """Save the checkpoint (FSDP1: full, then sharded), export each on rank 0, and compare the merged model's
    logits on one batch with the trained policy's (bf16 tolerance); a collective on every rank."""
    from transformers import AutoModelForCausalLM

    from rdpo_lightning.checkpoints.export import export_checkpoint

    kinds = ["full", "sharded"] if isinstance(trainer.strategy, FSDPStrategy) else ["default"]
    batch = next(iter(trainer.datamodule.train_dataloader()))
    batch = {k: v.to(trainer.strategy.root_device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
    module.eval()
    with torch.no_grad(), torch.autocast(trainer.strategy.root_device.type, dtype=torch.bfloat16):
        want = module.policy(**batch).logits.float().cpu()
    results = []
    for kind in kinds:
        if kind != "default":
            trainer.strategy._state_dict_type = kind
        path = os.path.join(cache_dir, f"{name}-{kind}.ckpt")
        trainer.save_checkpoint(path)
        if trainer.is_global_zero:
            out = export_checkpoint(path, os.path.join(cache_dir, f"{name}-{kind}-hf"), overwrite=True)
            model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16).to(want.device).eval()
            with torch.no_grad():
                got = model(**{k: v.cpu() for k, v in batch.items()}).logits.float()
            error = float((got - want).abs().max() / want.abs().max())
            results.append((error < 5e-2, f"{kind} rel.err {error:.2e}"))
        trainer.strategy.barrier()
    return all(ok for ok, _ in results), ", ".join(how for _, how in results)


def peak_gib() -> float:
    if not torch.cuda.is_available():
        return math.nan
    peak = torch.cuda.max_memory_allocated() / 2**30
    torch.cuda.reset_peak_memory_stats()
    return peak


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategy", choices=tuple(STRATEGY_CASES), required=True)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--cases", nargs="*", default=None, help="default: the strategy's cases (STRATEGY_CASES)")
    parser.add_argument("--cpu-dry-run", action="store_true", help="2 CPU processes and a tiny model (not fsdp)")
    args = parser.parse_args()
    datasets.disable_progress_bars()
    torch.set_float32_matmul_precision("high")
    rank0 = int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0
    cache_dir = os.environ.get("GPU_CHECK_CACHE") or tempfile.mkdtemp(prefix="gpu_check_cache_")
    for case in args.cases or STRATEGY_CASES[args.strategy]:
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
