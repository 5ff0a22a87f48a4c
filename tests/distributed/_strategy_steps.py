"""One SGD step (lr=1, float64) per case under DDP / FSDP2 on 2 gloo CPU processes, or on one process.

Run as a script (Lightning re-executes it for rank 1):
``python _strategy_steps.py MODEL_DIR REFERENCE_DIR OUT_DIR CASE [CASE ...]`` with CASE =
``<ddp|fsdp2|single>:<robust>[+clip][+ac][+lora][+resident][+save][+pf][+full][+accN][+micro][+hard]``. For each case
rank 0 writes ``OUT_DIR/<case>.pt`` with the policy's full parameters after the step, or ``OUT_DIR/<case>.err`` with the
message of a refused configuration. ``lora``: LoRA adapters (randomly initialised, so the policy starts away from its
base, which is the reference; no separate reference model); ``resident``: no precomputed reference log-probs (the base
computes them every step); ``save``: the checkpoint after the step goes to ``<cache dir>/<case>.ckpt`` (a directory
under FSDP2); ``pf``: padding-free batches; ``full``: the full-logits path instead of the default fused output-layer
log-probs; ``accN``: the same optimizer batch as N micro-batches per rank (``model.accumulate_grad_batches: N``);
``micro``: with ``model.objective_scope: micro_batch``; ``hard``: the data labelled by the higher reward at α₀
(``label_temperature: null``), no Bradley–Terry draws. Each strategy has its own reference log-prob cache, so its first
case computes it through that strategy. The pytest side imports :func:`run_case` to make the single-process, full-batch
runs it compares against.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

import datasets
import lightning as L
import torch
from peft import LoraConfig

from rdpo_lightning.data import AttributeWorldDataModule
from rdpo_lightning.robust import (
    ChiSquareDRO,
    CVaR,
    DrDPO,
    GroupDRO,
    KLReweighter,
    MixtureDRO,
    NoRobust,
    WassersteinPenalty,
)
from rdpo_lightning.training.module import RobustDPO
from rdpo_lightning.training.quiet import quiet_trainer
from rdpo_lightning.training.strategies import FSDP2Strategy

ROBUST = {
    "none": NoRobust,
    "kl": functools.partial(KLReweighter, tau=0.5),
    "kl_clamped": functools.partial(KLReweighter, tau=0.5, normalize=False, clamp_max=2.0),
    "cvar": functools.partial(CVaR, worst_fraction=0.3),  # 2.4 of 8 pairs: a fractional boundary weight
    "chi_square": functools.partial(ChiSquareDRO, rho=0.5),
    "wdpo_fd": functools.partial(WassersteinPenalty, rho=0.05, mode="finite_difference"),
    "wdpo_fd_eps": functools.partial(WassersteinPenalty, rho=0.05, mode="finite_difference", epsilon=1e-3),
    "wdpo_exact": functools.partial(WassersteinPenalty, rho=0.05, mode="exact"),
    "dr_dpo": functools.partial(DrDPO, beta_prime=0.5),
    "group_dro": functools.partial(GroupDRO, num_groups=2, eta=0.5),
    # the interval [0, 0.6] around the world's α₀ = 0.1, Bradley–Terry labels: both orders' losses carry weight
    "mixture_dro": functools.partial(MixtureDRO, radius=0.5, label_temperature=0.05),
    "mixture_r0": functools.partial(MixtureDRO, radius=0.0),  # hard labels at α₀ alone: DPO
}
#: GroupDRO's data: two training mixtures, whose index is each pair's ``group`` column
GROUPED = {"train_alpha": None, "train_mixtures": [0.1, 0.9]}
LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["c_attn", "c_fc"], "init_lora_weights": False}
GLOBAL_BATCH = 8
WORLD = 2
#: what each case's fit logged (``trainer.logged_metrics``), by case; rank 0 also writes ``OUT_DIR/<case>.json``
LOGGED: dict[str, dict[str, float]] = {}


def strategy_of(name: str):
    return {"ddp": "ddp", "fsdp2": FSDP2Strategy(), "single": "auto"}[name]


def run_case(
    case: str, model_dir: str, reference_dir: str, cache_dir: str
) -> tuple[dict[str, torch.Tensor] | None, str | None]:
    """Fit one step; return (full policy parameters, None) or (None, refusal message)."""
    strategy_name, spec = case.split(":")
    robust_name, *flags = spec.split("+")
    single = strategy_name == "single"
    L.seed_everything(0, verbose=False)
    lora = "lora" in flags
    accumulate = next((int(f[3:]) for f in flags if f.startswith("acc")), 1)
    module = RobustDPO(
        model=model_dir,
        # unlike the initial policy, so pair losses (and KL weights) differ at step 0; with LoRA the base is
        reference=None if lora else reference_dir,
        peft=LoraConfig(**LORA) if lora else None,
        precompute_reference="resident" not in flags,
        beta=0.1,
        robust=ROBUST[robust_name](),
        optimizer=functools.partial(torch.optim.SGD, lr=1.0),
        min_lr_ratio=1.0,
        gradient_clip_val=0.05 if "clip" in flags else None,
        torch_dtype="float64",
        activation_checkpointing="ac" in flags,
        fused_logprobs="full" not in flags,
        reference_cache_dir=cache_dir,
        accumulate_grad_batches=accumulate,
        objective_scope="micro_batch" if "micro" in flags else "optimizer_batch",
    )
    data = AttributeWorldDataModule(
        num_train=GLOBAL_BATCH,
        num_val=2,
        val_alphas=[],
        batch_size=-(-(GLOBAL_BATCH if single else GLOBAL_BATCH // WORLD) // accumulate),  # acc3: 3, 3 and 2 pairs
        max_length=24,
        padding_free="pf" in flags,
        tokenizer_dir=model_dir,
        **(GROUPED if robust_name == "group_dro" else {}),
        **({"label_temperature": None} if "hard" in flags else {}),
    )
    trainer = quiet_trainer(
        accelerator="cpu",
        devices=1 if single else WORLD,
        strategy=strategy_of(strategy_name),
        max_steps=1,
        limit_val_batches=0,
    )
    try:
        trainer.fit(module, datamodule=data)
    except ValueError as error:
        return None, str(error)
    LOGGED[case] = {name: float(value) for name, value in trainer.logged_metrics.items()}
    if "save" in flags:
        trainer.save_checkpoint(Path(cache_dir) / f"{case}.ckpt")
    params = {}
    for name, param in module.policy.named_parameters():
        full = param.full_tensor() if hasattr(param, "full_tensor") else param  # FSDP2 DTensor shards: collective
        params[name.replace("_checkpoint_wrapped_module.", "")] = full.detach().cpu().clone()
    return params, None


def main() -> None:
    datasets.disable_progress_bars()
    model_dir, reference_dir, out_dir, *cases = sys.argv[1:]
    out = Path(out_dir)
    for case in cases:
        params, refusal = run_case(case, model_dir, reference_dir, str(out / f"cache-{case.split(':')[0]}"))
        if int(os.environ.get("LOCAL_RANK", "0")) != 0:
            continue
        if refusal is not None:
            (out / f"{case}.err").write_text(refusal)
        else:
            torch.save(params, out / f"{case}.pt")
            (out / f"{case}.json").write_text(json.dumps(LOGGED[case]))


if __name__ == "__main__":
    main()
