"""A few bf16-mixed training steps of each robust objective under one strategy, on every visible GPU.

    python benchmarks/gpu_check.py --strategy {ddp,fsdp,fsdp2} [--steps 6]
    python benchmarks/gpu_check.py --strategy single --cases qlora qlora+export   (one GPU: a 4-bit NF4 base)
    python benchmarks/gpu_check.py --strategy fsdp2 --cpu-dry-run   (2 CPU processes, tiny model: checks this script)
    python benchmarks/gpu_check.py --strategy fsdp --list          (the cases it would run; parses its arguments only)

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

``...+accum`` cases check the objective over the optimizer batch (``model.accumulate_grad_batches``) in bf16: one SGD
step on the same 8 pairs per rank taken in one piece, as 1 pair per micro-batch × 8, and, as the control, with the
objective formed per micro-batch (``objective_scope: micro_batch``, where every reweighting of one pair is uniform).
The reference is another model with larger weights, so the pair losses spread from the first step and the weights
matter. The case passes when the accumulated step is within ``ACCUMULATION_TOLERANCE`` of the one-piece step
(relative norm of the parameter-update difference) and at most a quarter as far from it as the control is.
``lora_base+adapter_only`` trains LoRA adapters on a saved base with ``adapter_only_checkpoints: true``, then resumes
from the adapter-only checkpoint (the restored weights' checksum must equal the saved one, and two more steps run)
and exports it (FSDP1 refuses adapter-only checkpoints in one line, as designed); ``qlora+resume+export`` does the
same with a 4-bit base on one GPU. ``mixtral+router`` trains a small Mixtral with the router load-balancing term,
which must be logged finite and positive. ``mixture`` trains MixtureDRO (issue 25) on the world's score margins.
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

from rdpo_lightning import robust
from rdpo_lightning.data import AttributeWorldDataModule
from rdpo_lightning.robust import KLReweighter, NoRobust, WassersteinPenalty
from rdpo_lightning.training.module import RobustDPO
from rdpo_lightning.training.quiet import quiet_trainer
from rdpo_lightning.training.strategies import FSDP2Strategy

#: a GPT-2-shaped model big enough that sharding does real work, small enough to build in seconds
MODEL = {"model_type": "gpt2", "n_layer": 6, "n_head": 8, "n_embd": 512, "n_positions": 128}
TINY = {"model_type": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 32, "n_positions": 128}
#: a small Mixture-of-Experts model for the router term (and its CPU dry-run size)
MIXTRAL = {"model_type": "mixtral", "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 4,
           "num_attention_heads": 8, "num_key_value_heads": 4, "num_local_experts": 8, "num_experts_per_tok": 2,
           "max_position_embeddings": 128}  # fmt: skip
TINY_MIXTRAL = {**MIXTRAL, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "num_local_experts": 4}  # fmt: skip

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
    "kl+accum": (functools.partial(robust.KLReweighter, tau=1.0), False, True),
    "cvar+accum": (functools.partial(robust.CVaR, worst_fraction=0.25), False, True),
    "lora_base+adapter_only": (functools.partial(KLReweighter, tau=1.0), False, True),
    "mixtral+router": (NoRobust, False, True),
    # issue 25 ("Robust to the mixture itself"): the worst mixture of [0, 0.3] around the world's alpha_0 = 0.1
    "mixture": (functools.partial(robust.MixtureDRO, radius=0.2, label_temperature=0.05), False, True),
    "qlora": (NoRobust, False, True),
    "qlora+export": (functools.partial(WassersteinPenalty, rho=0.01, mode="finite_difference"), False, True),
    "qlora+resume+export": (NoRobust, False, True),
}
#: the cases each strategy runs by default (QLoRA: one GPU, ``--strategy single``)
STRATEGY_CASES = {
    "single": [c for c in CASES if c.startswith("qlora")],
    **{name: [c for c in CASES if not c.startswith("qlora")] for name in ("ddp", "fsdp", "fsdp2")},
}
#: cases a strategy must refuse, with the start of the one-line message that says why
REFUSALS = {
    ("fsdp", "wdpo_exact"): "model.robust.mode='exact' cannot run under FSDP",
    ("fsdp", "wdpo_exact+pf"): "model.robust.mode='exact' cannot run under FSDP",
    ("fsdp2", "wdpo_exact"): "model.robust.mode='exact' cannot run under FSDP",
    ("fsdp2", "wdpo_exact+pf"): "model.robust.mode='exact' cannot run under FSDP",
    ("fsdp", "lora_base+adapter_only"): "model.adapter_only_checkpoints: true cannot run here",
}
LORA = {"r": 16, "lora_alpha": 32, "target_modules": "all-linear"}
QUANTIZATION = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "bfloat16"}
#: ``...+accum``: the largest relative difference between the accumulated and the one-piece update (bf16 rounding)
ACCUMULATION_TOLERANCE = 0.05


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
    # float64: a 4-bit base's packed uint8 weights sum to ~1e9, where float32 cannot see an adapter's step
    local = sum(p.detach().double().abs().sum() for p in _local_tensors(module.policy))
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


def build(strategy: str, case: str, cache_dir: str, cpu: bool, batch_size: int = 8, steps: int = 6, **module_args):
    """The case's module and data (``module_args`` override the module's arguments)."""
    robust_factory, checkpointing, precompute = CASES[case]
    L.seed_everything(0, verbose=False)
    devices = 1 if strategy == "single" else 2 if cpu else torch.cuda.device_count()
    adapters: dict = {}
    if case.startswith("lora_base"):  # a saved base: adapter-only checkpoints re-read it on resume and export
        adapters = {"peft": LoraConfig(**LORA), "model": saved_model(cache_dir, TINY if cpu else MODEL, "base")}
    elif case.startswith("lora"):
        adapters = {"peft": LoraConfig(**LORA)}
    elif case.startswith("qlora"):  # quantization needs saved weights to load
        adapters = {"peft": LoraConfig(**LORA), "quantization": QUANTIZATION, "model": saved_base(cache_dir)}
    config = (TINY_MIXTRAL if cpu else MIXTRAL) if case.startswith("mixtral") else TINY if cpu else MODEL
    arguments = dict(
        model_config=None if "model" in adapters else dict(config),
        **adapters,
        robust=robust_factory(),
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-4),
        activation_checkpointing=checkpointing,
        reference_cache_dir=cache_dir,
        precompute_reference=precompute,
        fused_logprobs=not case.endswith("+full"),
    )
    module = RobustDPO(**{**arguments, **module_args})
    data = AttributeWorldDataModule(
        num_train=8 * devices * steps,
        num_val=16,
        val_alphas=[0.0],
        batch_size=batch_size,
        max_length=64,
        padding_free=case.endswith("+pf"),
        tokenizer_dir=adapters.get("model"),
    )
    return module, data


def trainer_for(strategy: str, cpu: bool, steps: int, callbacks: list) -> L.Trainer:
    return quiet_trainer(
        accelerator="cpu" if cpu else "gpu",
        devices=1 if strategy == "single" else 2 if cpu else torch.cuda.device_count(),
        strategy=strategy_of(strategy),
        precision="bf16-mixed",
        max_steps=steps,
        limit_val_batches=0,
        callbacks=callbacks,
    )


def run_case(strategy: str, case: str, steps: int, cache_dir: str, cpu: bool = False) -> tuple[bool, float, str]:
    refusal = REFUSALS.get((strategy, case))
    try:
        if case.endswith("+accum"):
            return accumulation_case(strategy, case, cache_dir, cpu)
        module_args = {"adapter_only_checkpoints": True} if "adapter_only" in case or "+resume" in case else {}
        if case.startswith("mixtral"):
            module_args["router_aux_loss_coef"] = 0.02
        module, data = build(strategy, case, cache_dir, cpu, steps=steps, **module_args)
        timer = StepTimer()
        trainer = trainer_for(strategy, cpu, steps, [timer])
        trainer.fit(module, datamodule=data)
    except ValueError as error:
        refused = refusal is not None and refusal in str(error)
        return refused, math.nan, ("refused as expected: " if refused else "") + str(error).split(":")[0]
    if refusal is not None:
        return False, math.nan, f"not refused (expected: {refusal})"
    loss = float(trainer.callback_metrics.get("train/loss", torch.tensor(math.nan)))
    moved = abs(parameter_checksum(module) - timer.before)
    median_ms = 1000 * statistics.median(timer.times[2:] or timer.times)
    ok = trainer.global_step == steps and math.isfinite(loss) and moved > 0
    detail = f"steps={trainer.global_step} loss={loss:.4f} |dθ|sum={moved:.3g} peak_mem={peak_gib():.2f}GiB"
    if case.startswith("mixtral"):
        aux = float(trainer.callback_metrics.get("train/router_aux_loss", torch.tensor(math.nan)))
        ok, detail = ok and math.isfinite(aux) and aux > 0, f"{detail} router_aux_loss={aux:.4f}"
    if "+resume" in case or "adapter_only" in case:
        resumed, how = check_resume(strategy, case, steps, cache_dir, cpu, trainer, module, module_args)
        ok, detail = ok and resumed, f"{detail} resume: {how}"
    if case.endswith("+export") or "adapter_only" in case:
        exported, how = check_exports(trainer, module, cache_dir, f"{strategy}-{case}")
        ok, detail = ok and exported, f"{detail} export: {how}"
    return ok, median_ms, detail


class RestoredChecksum(Callback):
    """The policy's parameter checksum once a checkpoint is restored (before any step of the resumed fit)."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.value = parameter_checksum(pl_module)


def check_resume(strategy, case, steps, cache_dir, cpu, trainer, module, module_args) -> tuple[bool, str]:
    """Save the run's checkpoint, resume a fresh module from it for two more steps: the restored weights must be the
    saved ones (the base re-read from ``model.model``, the adapters from the checkpoint); a collective."""
    path = os.path.join(cache_dir, f"{strategy}-{case}-resume.ckpt")
    trainer.save_checkpoint(path)
    saved = parameter_checksum(module)
    fresh, data = build(strategy, case, cache_dir, cpu, steps=steps, **module_args)  # the same data
    probe = RestoredChecksum()
    resumed = trainer_for(strategy, cpu, steps + 2, [probe])
    resumed.fit(fresh, datamodule=data, ckpt_path=path)
    loss = float(resumed.callback_metrics.get("train/loss", torch.tensor(math.nan)))
    same = math.isclose(probe.value, saved, rel_tol=1e-6)
    ok = same and resumed.global_step == steps + 2 and math.isfinite(loss)
    return ok, f"restored Σ|θ| {probe.value:.6g} vs saved {saved:.6g}, steps={resumed.global_step} loss={loss:.4f}"


class Snapshot(Callback):
    """This rank's local parameter shards as training starts."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.before = [t.detach().float().cpu().clone() for t in _local_tensors(pl_module.policy)]


def accumulation_case(strategy: str, case: str, cache_dir: str, cpu: bool) -> tuple[bool, float, str]:
    """One SGD step on the same pairs, in one piece against 1 pair per micro-batch × 8 (see the module docstring)."""
    config = TINY if cpu else MODEL
    # a reference with larger weights than the policy's: the pair losses spread from the first step
    reference = saved_model(cache_dir, {**config, "initializer_range": 0.1}, "reference", seed=1)
    runs = {"piece": (8, 1, "optimizer_batch"), "window": (1, 8, "optimizer_batch"), "micro": (1, 8, "micro_batch")}
    deltas, step_ms = {}, math.nan
    for name, (batch_size, accumulate, scope) in runs.items():
        module, data = build(
            strategy, case, cache_dir, cpu, batch_size=batch_size, steps=1, reference=reference,
            optimizer=functools.partial(torch.optim.SGD, lr=1.0), gradient_clip_val=None,
            accumulate_grad_batches=accumulate, objective_scope=scope,
        )  # fmt: skip
        snapshot, timer = Snapshot(), StepTimer()
        trainer = trainer_for(strategy, cpu, 1, [snapshot, timer])
        trainer.fit(module, datamodule=data)
        after = [t.detach().float().cpu() for t in _local_tensors(module.policy)]  # DDP's teardown: on the CPU
        deltas[name] = [a - b for a, b in zip(after, snapshot.before, strict=True)]
        if name == "window":
            step_ms = 1000 * sum(timer.times)
    strategy_ = trainer.strategy

    def distance(a: str, b: str) -> float:
        local = sum(float((x - y).pow(2).sum()) for x, y in zip(deltas[a], deltas[b], strict=True))
        return math.sqrt(float(strategy_.reduce(torch.tensor(local, device=strategy_.root_device), reduce_op="sum")))

    norm = math.sqrt(float(strategy_.reduce(
        torch.tensor(sum(float(x.pow(2).sum()) for x in deltas["piece"]), device=strategy_.root_device),
        reduce_op="sum")))  # fmt: skip
    window, micro = distance("window", "piece") / norm, distance("micro", "piece") / norm
    ok = window <= ACCUMULATION_TOLERANCE and window <= 0.25 * micro
    detail = (f"1x8 window vs one piece: rel.diff {window:.2e} (tolerance {ACCUMULATION_TOLERANCE}); objective per"
              f" micro-batch (control): {micro:.2e}; |Δθ| {norm:.3g}; peak_mem={peak_gib():.2f}GiB")  # fmt: skip
    return ok, step_ms, detail


def saved_model(cache_dir: str, config: dict, name: str, seed: int = 0) -> str:
    """A model of ``config`` with random weights (``seed``) and the world's tokenizer, saved once."""
    from rdpo_lightning.models.loading import load_causal_lm

    directory = os.path.join(cache_dir, f"{name}-{config['model_type']}-{config.get('n_embd', '')}-{seed}")
    if not os.path.isfile(os.path.join(directory, "config.json")):
        tokenizer = AttributeWorldDataModule().build_tokenizer()
        torch.manual_seed(seed)
        load_causal_lm(None, dict(config), tokenizer).save_pretrained(directory)
        tokenizer.save_pretrained(directory)
    return directory


def saved_base(cache_dir: str) -> str:
    """MODEL with random weights and the world's tokenizer, saved once (QLoRA quantizes weights it loads)."""
    return saved_model(cache_dir, MODEL, "qlora_base")


def check_exports(trainer: L.Trainer, module: RobustDPO, cache_dir: str, name: str) -> tuple[bool, str]:
    """Save the checkpoint (FSDP1: full, then sharded), export each on rank 0, and compare the merged model's
    logits on one batch with the trained policy's (bf16 tolerance); a collective on every rank."""
    from transformers import AutoModelForCausalLM

    from rdpo_lightning.checkpoints.export import export_checkpoint

    kinds = ["full", "sharded"] if isinstance(trainer.strategy, FSDPStrategy) else ["default"]
    batch = next(iter(trainer.datamodule.train_dataloader()))
    # DDP's teardown moves the module back to the CPU after fit; FSDP's keeps it (sharded) on the GPU
    device = next(module.policy.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
    module.eval()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        want = module.policy(**batch).logits.float().cpu()
    if module.hparams.get("quantization"):  # the export's base is full-precision, not the 4-bit one trained on
        want = full_precision_logits(module, {k: v.cpu() for k, v in batch.items()})
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


def full_precision_logits(module: RobustDPO, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """QLoRA's export merges the trained adapters into the base read in its compute dtype (docs/adapters.md), not
    into the 4-bit weights the policy trained on (their rounding alone moves logits ~20%): the independent reference
    is that base, on the CPU, with the trained adapters applied unmerged."""
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(module.hparams["model"], dtype=torch.bfloat16)
    model = get_peft_model(base, module.policy.peft_config["default"])
    trained = {k: v.detach().cpu() for k, v in get_peft_model_state_dict(module.policy).items()}
    set_peft_model_state_dict(model, trained)
    with torch.no_grad():
        return model.eval()(**batch).logits.float()


def peak_gib() -> float:
    if not torch.cuda.is_available():
        return math.nan
    peak = torch.cuda.max_memory_allocated() / 2**30
    torch.cuda.reset_peak_memory_stats()
    return peak


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategy", choices=tuple(STRATEGY_CASES), required=True)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--cases", nargs="*", default=None, choices=tuple(CASES),
                        help="default: the strategy's cases (STRATEGY_CASES)")  # fmt: skip
    parser.add_argument("--cpu-dry-run", action="store_true", help="2 CPU processes and a tiny model (not fsdp)")
    parser.add_argument("--list", action="store_true", help="print the cases it would run, and run none")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cases = args.cases or STRATEGY_CASES[args.strategy]
    rank0 = int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0
    if rank0:  # gpu_check.sh counts the expected passes from these lines
        print(f"PLAN {args.strategy} {len(cases)} cases: {' '.join(cases)}", flush=True)
    if args.list:
        return
    datasets.disable_progress_bars()
    torch.set_float32_matmul_precision("high")
    # one cache for every rank (Lightning re-executes this script with this environment): checkpoints are shared
    cache_dir = os.environ.setdefault("GPU_CHECK_CACHE", tempfile.mkdtemp(prefix="gpu_check_cache_"))
    for case in cases:
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
