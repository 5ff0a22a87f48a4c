"""Throughput of one training step: our DPO / KLDPO / WDPO (Lightning) against TRL's ``DPOTrainer``.

Every configuration trains the same GPT-2-style model (saved once with ``save_pretrained`` and loaded by both sides
with ``from_pretrained``) on the same preference pairs, tokenised by the same word-level tokenizer (saved and loaded
with ``AutoTokenizer``), with the same batch size, sequence length, optimizer (``torch.optim.AdamW``, same lr, no
weight decay), gradient clipping (norm 1.0) and number of steps. Every sequence is exactly ``--seq-len`` tokens long
(fixed-length prompts and responses), so neither side pads or truncates; the tokens each step actually processed are
counted (attention-mask sums) and reported, and the token ids both sides built are compared by digest.

Timing: ours through a real ``lightning.Trainer`` with :class:`RobustDPO` and a real :class:`PreferenceDataModule`
(callback ``on_train_batch_start`` → ``on_train_batch_end``); TRL through ``DPOTrainer.train()`` (``TrainerCallback``
``on_step_begin`` → ``on_step_end``). Both windows hold forward, backward, clipping and the optimizer step, and leave
out data loading. The first ``--warmup`` steps are dropped; a row's step time is the median of the remaining
``--steps`` (with ``--repeats`` > 1, the median of each repeat's median; repeats run the configurations interleaved).

Memory: each configuration runs in its own fresh process (forked from a forkserver that has only *imported* the
libraries, so no process inherits another's allocations). After imports the process resets its peak-RSS counter
(``/proc/self/clear_refs`` ← 5) and records its RSS; at the end it reads the peak (``VmHWM``). The difference is
"peak RSS growth": everything the run allocated (datasets, policy, reference, optimizer state, activations) *plus*
whatever freed memory glibc's allocator kept instead of returning it. Because that second part depends on the order
of allocations as much as on what is alive, every configuration also runs a short second time (3 steps) with
``mallopt(M_MMAP_THRESHOLD, 64 KiB)``, which gives every block above 64 KiB its own mapping, returned to the kernel
when freed: there, peak RSS growth tracks the peak of *live* memory ("live peak"). Minor page faults per step show
the other side of the same coin: memory returned to the kernel is faulted in again (and zeroed) on the next step.

    python benchmarks/throughput.py                 # default size (GPT-2, 4 layers, d=256, seq 128, batch 8)
    python benchmarks/throughput.py --tiny          # seconds; what the test runs
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import hashlib
import importlib.util
import json
import math
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

THREADS = 2
BETA = 0.1
LIVE_MMAP_THRESHOLD = 64 * 1024
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
PRELOAD = [
    "torch",
    "numpy",
    "datasets",
    "lightning.pytorch",
    "transformers",
    "transformers.models.gpt2.modeling_gpt2",
    "rdpo_lightning.training.module",
    "rdpo_lightning.data.datamodule",
]
TRL_PRELOAD = ["trl", "trl.trainer.dpo_trainer"]


# --- what is measured --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """The workload every configuration runs."""

    steps: int = 10
    warmup: int = 3
    batch_size: int = 8
    seq_len: int = 128
    layers: int = 4
    hidden: int = 256
    lr: float = 1e-4
    seed: int = 0

    @property
    def heads(self) -> int:
        return max(1, self.hidden // 64)

    @property
    def total_steps(self) -> int:
        return self.warmup + self.steps


@dataclass(frozen=True)
class Config:
    """One row of the table. ``robust`` builds our strategy (None: a TRL row); ``pair`` names the TRL row it is
    compared with like for like; ``bf16``: bf16 autocast (Lightning ``bf16-mixed``, TRL ``bf16=True``)."""

    name: str
    framework: str
    reference: str = "online"
    bf16: bool = False
    robust: Callable[[], Any] | None = None
    trl_defaults: bool = False
    pair: str | None = None

    @property
    def precompute(self) -> bool:
        return self.reference == "precomputed"

    @property
    def precision(self) -> str:
        if self.trl_defaults:
            return "TRL defaults (bf16 autocast, grad. ckpt., fused AdamW)"
        if not self.bf16:
            return "fp32"
        return "bf16-mixed" if self.framework == "ours" else "bf16 autocast"


def _no_robust():
    from rdpo_lightning.robust import NoRobust

    return NoRobust()


def _kl():
    from rdpo_lightning.robust import KLReweighter

    return KLReweighter(tau=1.0)


def _wasserstein(mode: str) -> Callable[[], Any]:
    def build():
        from rdpo_lightning.robust import WassersteinPenalty

        return WassersteinPenalty(rho=0.01, mode=mode)

    return build


CONFIGS: dict[str, Config] = {
    c.name: c
    for c in (
        Config("dpo", "ours", robust=_no_robust, pair="trl"),
        Config("dpo-precomputed", "ours", "precomputed", robust=_no_robust, pair="trl-precomputed"),
        Config("dpo-bf16", "ours", bf16=True, robust=_no_robust, pair="trl-bf16"),
        Config("kldpo", "ours", robust=_kl, pair="trl"),
        Config("wdpo-finite_difference", "ours", robust=_wasserstein("finite_difference"), pair="trl"),
        Config("wdpo-exact", "ours", robust=_wasserstein("exact"), pair="trl"),
        Config("trl", "trl"),
        Config("trl-precomputed", "trl", "precomputed"),
        Config("trl-bf16", "trl", bf16=True),
        Config("trl-defaults", "trl", bf16=True, trl_defaults=True),
        Config("torch-loop", "torch"),
        Config("torch-loop-precomputed", "torch", "precomputed"),
    )
}
ALIASES = {"wdpo-fd": "wdpo-finite_difference", "wdpo": "wdpo-finite_difference"}


# --- shared inputs: tokenizer, model weights, pairs ----------------------------------------------------------------
def prepare(workdir: Path, settings: Settings) -> dict[str, str]:
    """Write the tokenizer, the initial model and the pairs every configuration loads."""
    import datasets
    import numpy as np
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from rdpo_lightning.data import AttributeWorld
    from rdpo_lightning.data.tokenizer import load_tokenizer, save_word_tokenizer

    prompt_words = max(1, settings.seq_len // 4)
    response_words = settings.seq_len - prompt_words - 1  # + <eos>
    world = AttributeWorld(prompt_words=prompt_words, response_words=response_words)
    tokenizer_dir = save_word_tokenizer(world.vocabulary(), workdir / "tokenizer")
    tokenizer = load_tokenizer(tokenizer_dir)

    torch.manual_seed(settings.seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_layer=settings.layers,
        n_embd=settings.hidden,
        n_head=settings.heads,
        n_positions=settings.seq_len,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model_dir = workdir / "model"
    GPT2LMHeadModel(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)

    # Which response is "chosen" does not change the cost of a step; the world's rewards are not needed here.
    rng = np.random.default_rng(settings.seed)
    n = settings.total_steps * settings.batch_size
    prompts = world.sample_prompts(n, rng)
    first, second = world.sample_responses(n, rng), world.sample_responses(n, rng)
    # Leading space: TRL tokenises prompt + completion as one string; the word-level tokenizer splits on whitespace.
    pairs = datasets.Dataset.from_dict(
        {"prompt": prompts, "chosen": [" " + t for t in first], "rejected": [" " + t for t in second]}
    )
    pairs_dir = workdir / "pairs"
    pairs.save_to_disk(pairs_dir)
    length = len(tokenizer(prompts[0] + pairs[0]["chosen"])["input_ids"]) + 1
    if length != settings.seq_len:
        raise RuntimeError(f"built sequences of {length} tokens, expected --seq-len={settings.seq_len}")
    return {
        "tokenizer": str(tokenizer_dir),
        "model": str(model_dir),
        "pairs": str(pairs_dir),
        "work": str(workdir),
        "vocab": str(len(tokenizer)),
    }


def token_digest(rows) -> str:
    """sha1 of every prompt+chosen and prompt+rejected id sequence, in dataset order."""
    digest = hashlib.sha1()
    for row in rows:
        for key in ("chosen_ids", "rejected_ids"):
            digest.update(json.dumps(list(row["prompt_ids"]) + list(row[key])).encode())
    return digest.hexdigest()


# --- per-step clock and memory ---------------------------------------------------------------------------------------
class StepClock:
    """Wall time, tokens and minor page faults of each step, from the frameworks' own step-boundary callbacks."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.tokens: list[int] = []
        self.faults: list[int] = []
        self._start = 0.0
        self._faults = 0

    def start(self) -> None:
        self._faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        self._start = time.perf_counter()

    def stop(self, tokens: int) -> None:
        self.times.append(time.perf_counter() - self._start)
        self.faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - self._faults)
        self.tokens.append(tokens)

    def result(self) -> dict[str, list]:
        return {"times": self.times, "tokens": self.tokens, "faults": self.faults}


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak_rss() -> int:
    """Reset this process's peak RSS (VmHWM) to its current RSS; return that RSS in KiB."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    return _proc_status_kib("VmRSS")


def peak_rss() -> int:
    return _proc_status_kib("VmHWM")


def return_freed_blocks_to_kernel() -> None:
    """glibc: every allocation above 64 KiB gets its own mapping, unmapped when freed (no dynamic threshold)."""
    if ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, LIVE_MMAP_THRESHOLD) != 1:
        raise RuntimeError("mallopt(M_MMAP_THRESHOLD) failed: the live-memory measurement needs glibc")


# --- our side: Lightning ---------------------------------------------------------------------------------------------
def run_ours(config: Config, settings: Settings, paths: dict[str, str]) -> dict[str, Any]:
    result, _ = time_our_fit(
        settings,
        paths,
        precision="bf16-mixed" if config.bf16 else "32-true",
        robust=config.robust(),
        # As TRL's precompute_ref_log_probs: the package's own path, one no-grad pass of the reference over the data
        # before training, the results carried by the batches, the reference freed; else an online reference.
        precompute_reference=config.precompute,
    )
    return result


def time_our_fit(settings, paths: dict[str, str], precision: str = "32-true", **module_args: Any):
    """One timed ``RobustDPO`` fit on the benchmark's pairs (AdamW, clip 1.0, no validation); ``module_args`` say
    what the configuration changes. Returns the step timings with the pairs' digest, and the fitted module."""
    import functools

    import lightning as L
    import torch

    from rdpo_lightning.training.module import RobustDPO
    from rdpo_lightning.training.quiet import quiet_trainer

    clock = StepClock()
    L.seed_everything(settings.seed, verbose=False)
    datamodule = fixed_pairs_datamodule(paths, settings.batch_size, settings.seq_len)
    module = RobustDPO(
        model=paths["model"],
        beta=BETA,
        optimizer=functools.partial(torch.optim.AdamW, lr=settings.lr, weight_decay=0.0),
        gradient_clip_val=1.0,
        **module_args,
    )
    trainer = quiet_trainer(
        accelerator="cpu",
        devices=1,
        precision=precision,
        max_steps=settings.total_steps,
        limit_val_batches=0,
        callbacks=[lightning_step_timer(clock)],
    )
    trainer.fit(module, datamodule=datamodule)
    return {**clock.result(), "digest": token_digest(datamodule.train_dataset)}, module


def fixed_pairs_datamodule(paths: dict[str, str], batch_size: int, seq_len: int):
    """The benchmark's pairs through the package's own tokenisation, collator and loaders."""
    import datasets

    from rdpo_lightning.data.datamodule import PreferenceDataModule
    from rdpo_lightning.data.tokenizer import load_tokenizer

    class FixedPairsDataModule(PreferenceDataModule):
        def build_tokenizer(self):
            return load_tokenizer(paths["tokenizer"])

        def build_splits(self):
            train = datasets.load_from_disk(paths["pairs"])
            return train, {"held_out": train.select(range(batch_size))}

    return FixedPairsDataModule(batch_size=batch_size, max_length=seq_len)


def lightning_step_timer(clock: StepClock):
    """A Lightning callback timing each training batch (start → end) on ``clock``, with its tokens."""
    import lightning as L

    class StepTimer(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.tokens = int(batch["attention_mask"].sum())
            clock.start()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            clock.stop(self.tokens)

    return StepTimer()


def trl_step_timer(clock: StepClock):
    """A ``TrainerCallback`` timing each step on ``clock`` with TRL's own token count (attention-mask sums); set its
    ``trainer`` once the DPOTrainer exists."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        trainer: Any

        def on_step_begin(self, args, state, control, **kwargs) -> None:
            self.seen = self.trainer._total_train_tokens
            clock.start()

        def on_step_end(self, args, state, control, **kwargs) -> None:
            clock.stop(int(self.trainer._total_train_tokens - self.seen))

    return StepTimer()


# --- TRL's side ------------------------------------------------------------------------------------------------------
def run_trl(config: Config, settings: Settings, paths: dict[str, str]) -> dict[str, Any]:
    import datasets
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    clock = StepClock()
    common = {
        "output_dir": str(Path(paths["work"]) / f"trl-{config.name}"),
        "per_device_train_batch_size": settings.batch_size,
        "max_length": settings.seq_len,
        "max_steps": settings.total_steps,
        "learning_rate": settings.lr,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "beta": BETA,
        "seed": settings.seed,
        "report_to": [],
        "save_strategy": "no",
        "disable_tqdm": True,
        "use_cpu": True,  # on a machine without GPU, TRL refuses to start without it
    }
    if config.trl_defaults:  # everything else as a CPU user gets it: bf16 autocast, gradient checkpointing, fused AdamW
        args = DPOConfig(**common)
    else:
        args = DPOConfig(
            **common,
            bf16=config.bf16,
            gradient_checkpointing=False,
            dataloader_num_workers=0,
            logging_strategy="no",
            optim="adamw_torch",  # torch.optim.AdamW with its defaults, as ours
            lr_scheduler_type="constant",
            precompute_ref_log_probs=config.precompute,
        )
    timer = trl_step_timer(clock)
    trainer = DPOTrainer(
        model=paths["model"],
        args=args,
        train_dataset=datasets.load_from_disk(paths["pairs"]),
        processing_class=AutoTokenizer.from_pretrained(paths["tokenizer"]),
        callbacks=[timer],
    )
    timer.trainer = trainer
    trainer.train()
    ran_with = {
        "bf16": bool(trainer.args.bf16),
        "gradient_checkpointing": bool(trainer.args.gradient_checkpointing),
        "optim": str(trainer.args.optim.value),
        "precompute_ref_log_probs": bool(trainer.args.precompute_ref_log_probs),
    }
    return {**clock.result(), "digest": token_digest(trainer.train_dataset), "trl": ran_with}


# --- the floor: a plain PyTorch loop, no framework ------------------------------------------------------------------
def run_torch_loop(config: Config, settings: Settings, paths: dict[str, str]) -> dict[str, Any]:
    """The same DPO step written out by hand: what a framework's step can at best cost on this model and batch."""
    import datasets
    import torch
    import torch.nn.functional as F

    from rdpo_lightning.data.collate import PairCollator
    from rdpo_lightning.data.tokenize import tokenize_pair
    from rdpo_lightning.data.tokenizer import load_tokenizer
    from rdpo_lightning.models.loading import disable_dropout, frozen_copy, load_causal_lm
    from rdpo_lightning.models.logprobs import sequence_logprobs

    torch.manual_seed(settings.seed)
    tokenizer = load_tokenizer(paths["tokenizer"])
    rows = [tokenize_pair(pair, tokenizer, settings.seq_len) for pair in datasets.load_from_disk(paths["pairs"])]
    collate = PairCollator(tokenizer.pad_token_id)
    size = settings.batch_size
    batches = [collate(rows[i : i + size]) for i in range(0, len(rows), size)][: settings.total_steps]
    policy = load_causal_lm(paths["model"])
    disable_dropout(policy)
    policy.train()
    reference = frozen_copy(policy)

    def logps(model, batch):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        return sequence_logprobs(logits, batch["labels"])

    if config.precompute:
        with torch.no_grad():
            for batch in batches:
                batch["reference_logps"] = logps(reference, batch)
        reference = None
    optimizer = torch.optim.AdamW(policy.parameters(), lr=settings.lr, weight_decay=0.0)
    clock = StepClock()
    for batch in batches:
        clock.start()
        if config.precompute:
            reference_logps = batch["reference_logps"]
        else:
            with torch.no_grad():
                reference_logps = logps(reference, batch)
        ratios = logps(policy, batch) - reference_logps
        loss = -F.logsigmoid(BETA * (ratios[:size] - ratios[size:])).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        clock.stop(int(batch["attention_mask"].sum()))
    return {**clock.result(), "digest": token_digest(rows)}


RUNNERS = {"ours": run_ours, "trl": run_trl, "torch": run_torch_loop}


def worker(name: str, settings: Settings, paths: dict[str, str], result_path: str, live_memory: bool) -> None:
    """One configuration in a fresh process: threads, allocator mode, peak-RSS reset, run, write JSON."""
    import logging
    import warnings

    import datasets
    import torch
    import transformers

    torch.set_num_threads(THREADS)
    os.environ["TQDM_DISABLE"] = "1"
    warnings.filterwarnings("ignore")
    for logger in ("lightning", "lightning.pytorch", "lightning.fabric", "transformers", "datasets", "trl"):
        logging.getLogger(logger).setLevel(logging.ERROR)
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    if live_memory:
        return_freed_blocks_to_kernel()
    config = CONFIGS[name]
    baseline = reset_peak_rss()
    load_before = os.getloadavg()[0]
    with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the table
        result = RUNNERS[config.framework](config, settings, paths)
    result.update(
        peak_rss_kib=peak_rss(),
        baseline_rss_kib=baseline,
        threads=torch.get_num_threads(),
        load=[load_before, os.getloadavg()[0]],
    )
    Path(result_path).write_text(json.dumps(result))


def run_one(context, name: str, settings: Settings, paths: dict[str, str], live_memory: bool) -> dict[str, Any]:
    result_path = Path(paths["work"]) / f"result-{name}-{'live' if live_memory else 'timed'}.json"
    result_path.unlink(missing_ok=True)
    process = context.Process(target=worker, args=(name, settings, paths, str(result_path), live_memory), name=name)
    start = time.perf_counter()
    process.start()
    process.join()
    if process.exitcode != 0 or not result_path.exists():
        raise RuntimeError(f"configuration {name!r} failed (exit code {process.exitcode}); see its traceback above")
    result = json.loads(result_path.read_text())
    kind = "live-memory run" if live_memory else "timed run"
    print(f"  {name}: {kind} done in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    return result


def run_configs(
    names: list[str], settings: Settings, paths: dict[str, str], repeats: int
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, dict[str, Any]]]:
    """``repeats`` interleaved timed runs of every configuration, then one short live-memory run of each."""
    context = multiprocessing.get_context("forkserver")
    trl = any(CONFIGS[n].framework == "trl" for n in names)
    context.set_forkserver_preload(PRELOAD + (TRL_PRELOAD if trl else []))
    timed: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for _ in range(repeats):
        for name in names:
            timed[name].append(run_one(context, name, settings, paths, live_memory=False))
    short = dataclasses.replace(settings, warmup=1, steps=2)
    live = {name: run_one(context, name, short, paths, live_memory=True) for name in names}
    return timed, live


# --- the table -------------------------------------------------------------------------------------------------------
@dataclass
class Row:
    config: Config
    median_s: float
    min_s: float
    max_s: float
    tokens_per_step: float
    tokens_per_s: float
    faults_per_step: float
    peak_growth_mib: float
    live_peak_mib: float


def summarise(name: str, runs: list[dict[str, Any]], live: dict[str, Any], settings: Settings) -> Row:
    medians, all_times, tokens, faults = [], [], [], []
    for result in runs:
        if len(result["times"]) != settings.total_steps:
            raise RuntimeError(f"{name}: timed {len(result['times'])} steps, expected {settings.total_steps}")
        times = result["times"][settings.warmup :]
        medians.append(statistics.median(times))
        all_times += times
        tokens += result["tokens"][settings.warmup :]
        faults += result["faults"][settings.warmup :]
    median = statistics.median(medians)
    per_step = statistics.mean(tokens)
    growth = statistics.median((r["peak_rss_kib"] - r["baseline_rss_kib"]) / 1024 for r in runs)
    return Row(
        config=CONFIGS[name],
        median_s=median,
        min_s=min(all_times),
        max_s=max(all_times),
        tokens_per_step=per_step,
        tokens_per_s=per_step / median,
        faults_per_step=statistics.median(faults),
        peak_growth_mib=growth,
        live_peak_mib=(live["peak_rss_kib"] - live["baseline_rss_kib"]) / 1024,
    )


@dataclass(frozen=True)
class Target:
    """``numerator``'s ``metric`` ÷ ``denominator``'s, against ``bound`` (None: reported, no target)."""

    what: str
    numerator: str
    denominator: str
    metric: str  # a Row attribute
    bound: float | None = None
    at_least: bool = False

    def measure(self, rows: dict[str, Row]) -> tuple[float, bool | None] | None:
        if self.numerator not in rows or self.denominator not in rows:
            return None
        ratio = getattr(rows[self.numerator], self.metric) / getattr(rows[self.denominator], self.metric)
        if self.bound is None:
            return ratio, None
        return ratio, (ratio >= self.bound if self.at_least else ratio <= self.bound)


def _pairing_targets(label: str, ours: str, trl: str) -> list[Target]:
    return [
        Target(f"DPO tokens/s ÷ TRL ({label})", ours, trl, "tokens_per_s", 1.3, at_least=True),
        Target(f"DPO peak RSS growth ÷ TRL ({label})", ours, trl, "peak_growth_mib", 1.0),
        Target(f"DPO live peak ÷ TRL ({label})", ours, trl, "live_peak_mib", 1.0),
    ]


TARGETS = (
    *_pairing_targets("fp32, online reference", "dpo", "trl"),
    *_pairing_targets("fp32, precomputed reference", "dpo-precomputed", "trl-precomputed"),
    *_pairing_targets("bf16 autocast, online reference", "dpo-bf16", "trl-bf16"),
    Target("KLDPO step ÷ DPO step", "kldpo", "dpo", "median_s", 1.05),
    Target("WDPO finite_difference step ÷ DPO step", "wdpo-finite_difference", "dpo", "median_s", 2.1),
    Target("WDPO exact step ÷ DPO step", "wdpo-exact", "dpo", "median_s", 3.0),
    Target("DPO step ÷ plain PyTorch loop (fp32, online reference)", "dpo", "torch-loop", "median_s"),
    Target(
        "DPO step ÷ plain PyTorch loop (fp32, precomputed)", "dpo-precomputed", "torch-loop-precomputed", "median_s"
    ),
    Target("our default (fp32) ÷ TRL's defaults, tokens/s", "dpo", "trl-defaults", "tokens_per_s"),
    Target("our default (fp32) ÷ TRL's defaults, peak RSS growth", "dpo", "trl-defaults", "peak_growth_mib"),
    Target("our bf16-mixed ÷ TRL's defaults, tokens/s", "dpo-bf16", "trl-defaults", "tokens_per_s"),
    Target("our bf16-mixed ÷ TRL's defaults, peak RSS growth", "dpo-bf16", "trl-defaults", "peak_growth_mib"),
)


def _ratio(rows: dict[str, Row], a: str | None, b: str | None, metric: str) -> str:
    if a not in rows or b not in rows:
        return "—"
    return f"{getattr(rows[a], metric) / getattr(rows[b], metric):.2f}×"


def render(rows: dict[str, Row], header: str) -> str:
    lines = [header, ""]
    lines.append(
        "| config | framework | reference | precision | median step (s) | min–max (s) | tokens/step | tokens/s "
        "| minor faults/step | peak RSS growth (MiB) | live peak (MiB) | step ÷ our DPO "
        "| tokens/s ÷ TRL (like for like) |"
    )
    lines.append("|" + "---|" * 13)
    for name, row in rows.items():
        c = row.config
        lines.append(
            f"| {name} | {c.framework} | {c.reference} | {c.precision} | {row.median_s:.4f} "
            f"| {row.min_s:.4f}–{row.max_s:.4f} | {row.tokens_per_step:.0f} | {row.tokens_per_s:,.0f} "
            f"| {row.faults_per_step:,.0f} | {row.peak_growth_mib:.0f} | {row.live_peak_mib:.0f} "
            f"| {_ratio(rows, name, 'dpo', 'median_s')} | {_ratio(rows, name, c.pair, 'tokens_per_s')} |"
        )
    lines += ["", "| comparison | measured | target | met |", "|---|---|---|---|"]
    for target in TARGETS:
        measured = target.measure(rows)
        if measured is None:
            continue
        ratio, met = measured
        if met is None:
            lines.append(f"| {target.what} | {ratio:.2f}× | (reported) | — |")
            continue
        bound = ("≥ " if target.at_least else "≤ ") + f"{target.bound:g}×"
        lines.append(f"| {target.what} | {ratio:.2f}× | {bound} | {'yes' if met else '**no**'} |")
    return "\n".join(lines)


# --- command line ----------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = Settings()
    parser.add_argument("--steps", type=int, default=None, help=f"timed steps (default {defaults.steps})")
    parser.add_argument("--warmup", type=int, default=None, help=f"untimed first steps (default {defaults.warmup})")
    parser.add_argument("--batch-size", type=int, default=None, help=f"pairs per step (default {defaults.batch_size})")
    parser.add_argument("--seq-len", type=int, default=None, help=f"tokens per sequence (default {defaults.seq_len})")
    parser.add_argument("--layers", type=int, default=None, help=f"GPT-2 layers (default {defaults.layers})")
    parser.add_argument("--hidden", type=int, default=None, help=f"GPT-2 width (default {defaults.hidden})")
    parser.add_argument("--lr", type=float, default=None, help=f"AdamW learning rate (default {defaults.lr})")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved timed runs per configuration (default 1)")
    parser.add_argument(
        "--methods",
        default=",".join(CONFIGS),
        help=f"comma-separated configurations, of: {', '.join(CONFIGS)} (wdpo-fd = wdpo-finite_difference)",
    )
    parser.add_argument("--skip-trl", action="store_true", help="leave out TRL's rows (e.g. trl not installed)")
    parser.add_argument("--tiny", action="store_true", help="a size that runs in seconds (smoke test)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table (markdown) to this file")
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    base = Settings(steps=2, warmup=1, batch_size=2, seq_len=16, layers=1, hidden=32) if args.tiny else Settings()
    given = {
        "steps": args.steps,
        "warmup": args.warmup,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "layers": args.layers,
        "hidden": args.hidden,
        "lr": args.lr,
    }
    settings = dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})
    if min(settings.steps, settings.batch_size, settings.layers, args.repeats) < 1 or settings.warmup < 0:
        raise SystemExit("--steps, --batch-size, --layers and --repeats must be >= 1, and --warmup >= 0")
    if settings.seq_len < 4:
        raise SystemExit(f"--seq-len must be >= 4, got {settings.seq_len}")
    if settings.hidden < 1 or (settings.hidden >= 64 and settings.hidden % 64):
        raise SystemExit(f"--hidden must be below 64 or a multiple of 64 (one head per 64), got {settings.hidden}")
    return settings


def chosen_configs(args: argparse.Namespace) -> list[str]:
    names = []
    for raw in args.methods.split(","):
        name = ALIASES.get(raw.strip(), raw.strip())
        if not name:
            continue
        if name not in CONFIGS:
            raise SystemExit(f"--methods: unknown configuration {raw!r}; choose from {', '.join(CONFIGS)}")
        if not (args.skip_trl and CONFIGS[name].framework == "trl"):
            names.append(name)
    if not names:
        raise SystemExit("--methods left no configuration to run")
    if any(CONFIGS[n].framework == "trl" for n in names) and importlib.util.find_spec("trl") is None:
        raise SystemExit("trl is not installed (pip install -e '.[bench]'); or leave TRL's rows out with --skip-trl")
    return list(dict.fromkeys(names))


def versions(names: list[str]) -> str:
    import lightning
    import torch
    import transformers

    parts = [
        f"torch {torch.__version__}",
        f"lightning {lightning.__version__}",
        f"transformers {transformers.__version__}",
    ]
    if any(CONFIGS[n].framework == "trl" for n in names):
        import trl

        parts.append(f"trl {trl.__version__}")
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    settings = settings_from(args)
    names = chosen_configs(args)
    with tempfile.TemporaryDirectory(prefix="rdpo-throughput-") as tmp:
        paths = prepare(Path(tmp), settings)
        timed, live = run_configs(names, settings, paths, args.repeats)
    digests = {f"{name}#{i}": r["digest"] for name, runs in timed.items() for i, r in enumerate(runs)}
    digests.update({f"{name}#live": r["digest"] for name, r in live.items()})
    if len(set(digests.values())) > 1:
        raise RuntimeError(f"the configurations trained on different token ids: {digests}")
    for name, runs in timed.items():
        medians = ", ".join(f"{statistics.median(r['times'][settings.warmup :]):.4f}" for r in runs)
        print(f"  {name}: median step of each repeat (s): {medians}", file=sys.stderr)
        if "trl" in runs[0]:
            print(f"  {name}: TRL ran with {runs[0]['trl']}", file=sys.stderr)
    rows = {name: summarise(name, timed[name], live[name], settings) for name in names}
    for name, row in rows.items():
        if not (math.isfinite(row.median_s) and row.median_s > 0):
            raise RuntimeError(f"{name}: step time {row.median_s} is not a finite positive number")
    loads = [v for runs in timed.values() for r in runs for v in r["load"]]
    header = (
        f"GPT-2 ({settings.layers} layers, d={settings.hidden}, {settings.heads} heads, vocabulary {paths['vocab']}); "
        f"batch {settings.batch_size} pairs (= {2 * settings.batch_size} sequences) × {settings.seq_len} tokens; "
        f"AdamW lr {settings.lr:g}; median of {settings.steps} steps after {settings.warmup} warm-up"
        f"{f', median over {args.repeats} interleaved repeats' if args.repeats > 1 else ''}; "
        f"{THREADS} torch threads; {os.cpu_count()}-CPU {platform.machine()}; {versions(names)}; "
        f"1-min load average {min(loads):.1f}–{max(loads):.1f} during the timed runs."
    )
    table = render(rows, header)
    print(table)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")
    return table


if __name__ == "__main__":
    main()
