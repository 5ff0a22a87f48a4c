"""Memory and speed at a realistic scale: our DPO / KLDPO / WDPO against TRL's ``DPOTrainer`` on a Llama-style model.

The model: Llama architecture, 8 layers, hidden 512, 8 heads (4 key/value heads), MLP 1,376, an untied vocabulary of
128,256 (Llama 3's size) — 155 M parameters, two thirds of them in the embedding and the output layer, as in small
real models. Random weights, saved with ``save_pretrained`` and loaded with ``from_pretrained`` by both frameworks.
A word-level tokenizer of 128,256 words makes every text exactly as many tokens as it has words.

The pairs: ``--lengths long_tailed`` draws each sequence length (prompt + longer response) from a log-normal with
median 256 and σ = 0.9, clipped to [64, 2,048] (about 5 % of sequences above 1,000 tokens: most are short, a few are
very long, as in real preference data); the prompt takes a uniform 10-50 % of it and the two responses differ by up
to 30 %. ``--lengths equal``: every sequence has the long-tailed mean length, prompt 25 %, equal responses.

Like for like: float32 on CPU, precomputed reference log-probs on both sides (``precompute_reference`` /
``precompute_ref_log_probs``), AdamW with the same learning rate (fused on both sides with ``--gpu``), no gradient
checkpointing, the same pairs in the same order (sequential sampling on both sides), the same batch. Ours runs with
its defaults (fused output-layer log-probs) and, unless ``--no-padding-free``, ``data.padding_free: true``. TRL 1.16
runs its fused LM head (its default) and pads each batch to its longest sequence (its padding-free mode is disabled
in 1.16).

Every configuration runs in a fresh process; its peak memory is the process's resident high-water mark (``VmHWM``,
whole run: loading, reference pass, training). That counts what glibc keeps of freed blocks as much as what is alive,
so the configurations in ``--live-configs`` (default: TRL's and our DPO) also run a second, short time with
``mallopt(M_MMAP_THRESHOLD, 64 KiB)``, as ``throughput.py`` does: every block above 64 KiB is then its own mapping,
unmapped when freed, and the high-water mark ("live peak") tracks the memory actually alive, the quantity a GPU's
allocator would report. That run stops after the batch with the most tokens (padded or real), and after at least two
steps, so the optimizer state exists during a forward and backward pass. Speed: real (non-padding) tokens of the
measured steps (all but the first) over their wall time, each framework timed between its own step-boundary callbacks.

On a GPU (``--gpu``: bf16 mixed precision on both sides) the peak is ``torch.cuda.max_memory_allocated`` (live
tensors: no second run), step times are CUDA-synchronised, and the report adds model FLOPs utilisation: the model
FLOPs of each measured step's real tokens (``benchmarks/model_flops.py``: 6·N per token plus attention) per second,
against ``--peak-tflops`` (default on ``--gpu``: an H200's measured 790 TFLOP/s dense bf16). ``--shape llama-1b``
runs Llama 3.2 1B's shape (``largest_batch.py``'s) instead of the 155 M one.

    python benchmarks/scale.py          # published run: about 17 min on 2 idle cores; results/scale.md
    python benchmarks/scale.py --tiny   # a short smoke run (small vocabulary); writes nothing published
    python benchmarks/scale.py --gpu --shape llama-1b --batch-size 8 --configs trl-dpo ours-dpo --output x.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "scale.md"
BETA = 0.1
LR = 1e-6
CONFIGS = ("trl-dpo", "ours-dpo", "ours-kldpo", "ours-wdpo")
#: ours without padding-free (what packing adds to the fused log-probs), and without both (the path before issue 12)
EXTRA = ("ours-dpo-padded", "ours-dpo-full")


@dataclass
class Settings:
    vocab: int = 128_256
    layers: int = 8
    hidden: int = 512
    heads: int = 8
    kv_heads: int = 4
    mlp: int = 1376
    batch_size: int = 4
    steps: int = 3  # measured steps, after one warm-up step
    min_length: int = 64
    max_length: int = 2048
    median_length: int = 256
    seed: int = 0
    threads: int = 2
    tied: bool = False  # tie the output layer to the input embeddings (Llama 3.2 1B's shape; largest_batch.py)
    device: str = "cpu"  # "cuda": bf16 and a memory budget become meaningful (largest_batch.py)
    bf16: bool = False  # bf16 mixed precision on both sides (ours "bf16-mixed", TRL's bf16=True)
    memory_budget_gib: float | None = None  # on a GPU: the process's memory cap (set_per_process_memory_fraction)


#: a smoke run: one thread (on a shared 2-core machine a second OpenMP thread of a tiny model mostly spins, and its
#: steps took ten times as long)
TINY = Settings(vocab=2000, layers=2, hidden=64, heads=4, kv_heads=2, mlp=128, batch_size=2, steps=1,
                min_length=16, max_length=128, median_length=32, threads=1)  # fmt: skip
#: Llama 3.2 1B's shape: 16 layers, hidden 2,048, 32 / 8 heads, MLP 8,192, tied vocabulary 128,256 (1.24 B parameters)
LLAMA_1B = Settings(layers=16, hidden=2048, heads=32, kv_heads=8, mlp=8192, tied=True)


# --- shared inputs ----------------------------------------------------------------------------------------------------
def sequence_shapes(settings: Settings, lengths: str) -> list[tuple[int, int, int]]:
    """(prompt, chosen, rejected) token counts per pair (responses include the end-of-sequence token)."""
    import numpy as np

    rng = np.random.default_rng(settings.seed)
    pairs = settings.batch_size * (settings.steps + 1)
    total = np.exp(rng.normal(np.log(settings.median_length), 0.9, size=pairs))
    total = [int(x) for x in np.clip(total, settings.min_length, settings.max_length)]
    if lengths == "equal":
        total = [int(np.mean(total))] * pairs
        fractions, shrink = np.full(pairs, 0.25), np.ones(pairs)
    else:
        fractions, shrink = rng.uniform(0.1, 0.5, pairs), rng.uniform(0.7, 1.0, pairs)
    shapes = []
    for length, fraction, factor in zip(total, fractions, shrink, strict=True):
        prompt = max(1, int(length * fraction))
        longer = length - prompt
        shorter = max(1, int(longer * factor))
        shapes.append((prompt, longer, shorter) if rng.random() < 0.5 else (prompt, shorter, longer))
    return shapes


def vocabulary(settings: Settings) -> list[str]:
    return [f"w{i}" for i in range(settings.vocab - 4)]  # + <pad> <unk> <bos> <eos>


def prepare(workdir: Path, settings: Settings, lengths: str) -> dict[str, str]:
    """Tokenizer, model weights and pairs, written once and loaded by every configuration."""
    return prepare_pairs(workdir, settings, lengths, prepare_model(workdir, settings))


def prepare_model(workdir: Path, settings: Settings) -> dict[str, str]:
    """The word-level tokenizer and the random Llama-style model, saved with ``save_pretrained``. With
    ``$RDPO_BENCH_MODELS`` set, saved once there per shape and reused (a session that runs several benchmarks at
    the 1 B shape writes its 5 GB of weights once)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from benchmarks.model_flops import matmul_parameters
    from rdpo_lightning.data.tokenizer import load_tokenizer, save_word_tokenizer

    if os.environ.get("RDPO_BENCH_MODELS"):
        shape = (settings.vocab, settings.layers, settings.hidden, settings.heads, settings.kv_heads, settings.mlp,
                 settings.max_length, settings.tied, settings.seed)  # fmt: skip
        workdir = Path(os.environ["RDPO_BENCH_MODELS"]) / "-".join(str(x) for x in shape)
        if (workdir / "model.json").is_file():
            return json.loads((workdir / "model.json").read_text())
    tokenizer_dir = save_word_tokenizer(vocabulary(settings), workdir / "tokenizer")
    tokenizer = load_tokenizer(tokenizer_dir)
    torch.manual_seed(settings.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=settings.hidden, intermediate_size=settings.mlp,
        num_hidden_layers=settings.layers, num_attention_heads=settings.heads, num_key_value_heads=settings.kv_heads,
        max_position_embeddings=settings.max_length, tie_word_embeddings=settings.tied,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    model_dir = workdir / "model"
    model = LlamaForCausalLM(config)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    parameters = sum(p.numel() for p in model.parameters())
    saved = {"tokenizer": str(tokenizer_dir), "model": str(model_dir), "parameters": str(parameters),
             "matmul_parameters": str(matmul_parameters(model))}  # fmt: skip
    (workdir / "model.json").write_text(json.dumps(saved))
    return saved


def prepare_pairs(workdir: Path, settings: Settings, lengths: str, model: dict[str, str]) -> dict[str, str]:
    """The pairs (``settings.batch_size`` × (``steps`` + 1) of them), for the model ``prepare_model`` wrote."""
    import datasets
    import numpy as np

    words = vocabulary(settings)
    rng = np.random.default_rng(settings.seed + 1)

    def text(n: int) -> str:
        return " ".join(words[i] for i in rng.integers(0, len(words), n))

    shapes = sequence_shapes(settings, lengths)
    # each response gets an <eos> from both frameworks (the word-level tokenizer adds no <bos>)
    pairs = datasets.Dataset.from_dict(
        {
            "prompt": [text(p) for p, _, _ in shapes],
            "chosen": [" " + text(c - 1) for _, c, _ in shapes],
            "rejected": [" " + text(r - 1) for _, _, r in shapes],
        }
    )
    pairs.save_to_disk(workdir / "pairs")
    return {**model, "pairs": str(workdir / "pairs"), "work": str(workdir), "shapes": json.dumps(shapes)}


class StepClock:
    """Wall time, process CPU time and real tokens of each step, from the frameworks' own step-boundary callbacks.

    CPU time (all threads of the process) is the fairer measure on a shared machine: another job's load stretches a
    step's wall time but not the CPU seconds the step itself needs. ``cuda``: wait for the GPU at both ends."""

    def __init__(self, cuda: bool = False) -> None:
        self.times: list[float] = []
        self.cpu: list[float] = []
        self.tokens: list[int] = []
        self.rss_in_fit_kib = 0  # the resident high-water mark at the last step's end: before any end-of-fit copy
        self._start = self._cpu = 0.0
        self.cuda = cuda

    def synchronize(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def start(self) -> None:
        self.synchronize()
        self._start, self._cpu = time.perf_counter(), time.process_time()

    def stop(self, tokens: int) -> None:
        self.synchronize()
        self.times.append(time.perf_counter() - self._start)
        self.cpu.append(time.process_time() - self._cpu)
        self.tokens.append(tokens)
        self.rss_in_fit_kib = peak_rss_kib()

    def result(self) -> dict[str, Any]:
        return {"times": self.times, "cpu": self.cpu, "tokens": self.tokens, "peak_rss_fit_kib": self.rss_in_fit_kib}


def real_tokens(shapes: list[tuple[int, int, int]], batch_index: int, batch_size: int) -> int:
    """Non-padding tokens of batch ``batch_index`` in dataset order: both sequences of each of its pairs."""
    pairs = shapes[batch_index * batch_size : (batch_index + 1) * batch_size]
    return sum(2 * p + c + r for p, c, r in pairs)


def padded_tokens(shapes: list[tuple[int, int, int]], batch_index: int, batch_size: int) -> int:
    """Tokens of batch ``batch_index`` padded to its longest sequence, as TRL pads it (both sequences of each pair)."""
    pairs = shapes[batch_index * batch_size : (batch_index + 1) * batch_size]
    return 2 * len(pairs) * max(p + max(c, r) for p, c, r in pairs)


# --- ours -------------------------------------------------------------------------------------------------------------
def fixed_pairs(paths: dict[str, str]) -> type:
    """A DataModule class yielding the benchmark's pairs through the package's own tokenisation, collator and loader,
    in dataset order."""
    import datasets

    from rdpo_lightning.data.datamodule import PreferenceDataModule
    from rdpo_lightning.data.sampler import ResumableSampler
    from rdpo_lightning.data.tokenizer import load_tokenizer

    class FixedPairs(PreferenceDataModule):
        templated = False

        def build_tokenizer(self):
            return load_tokenizer(paths["tokenizer"])

        def build_splits(self):
            train = datasets.load_from_disk(paths["pairs"])
            return train, {"held_out": train.select(range(1))}

        def _train_sampler(self):
            return ResumableSampler(self.train_dataset, shuffle=False)

    return FixedPairs


def run_ours(
    name: str, settings: Settings, paths: dict[str, str], padding_free: bool, fused: bool = True, callbacks=()
) -> dict[str, Any]:
    """Our fit of the benchmark's pairs, its steps timed; ``callbacks`` (Lightning's) join the timer's
    (profile_step.py's profiler)."""
    import functools

    import lightning as L
    import torch

    from rdpo_lightning.robust import KLReweighter, NoRobust, WassersteinPenalty
    from rdpo_lightning.training.module import RobustDPO
    from rdpo_lightning.training.quiet import quiet_trainer

    robust = {"dpo": NoRobust, "kldpo": lambda: KLReweighter(tau=1.0), "wdpo": lambda: WassersteinPenalty(rho=0.01)}
    shapes = json.loads(paths["shapes"])
    FixedPairs = fixed_pairs(paths)
    clock = StepClock(cuda=settings.device == "cuda")

    class StepTimer(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            clock.start()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            clock.stop(real_tokens(shapes, batch_idx, settings.batch_size))

    L.seed_everything(settings.seed, verbose=False)
    data = FixedPairs(batch_size=settings.batch_size, max_length=settings.max_length, padding_free=padding_free,
                      cache_dir=str(Path(paths["work"]) / f"cache-{name}"))  # fmt: skip
    module = RobustDPO(
        model=paths["model"], beta=BETA, robust=robust[name.split("-")[1]](),
        optimizer=functools.partial(torch.optim.AdamW, lr=LR, weight_decay=0.0), min_lr_ratio=1.0,
        precompute_reference=True, reference_cache_dir=str(Path(paths["work"]) / f"reference-{name}"),
        fused_logprobs=fused,
    )  # fmt: skip
    trainer = quiet_trainer(
        accelerator="gpu" if settings.device == "cuda" else "cpu", devices=1,
        precision="bf16-mixed" if settings.bf16 else "32-true", max_steps=settings.steps + 1, limit_val_batches=0,
        callbacks=[StepTimer(), *callbacks],
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    return clock.result()


# --- TRL --------------------------------------------------------------------------------------------------------------
def run_trl(settings: Settings, paths: dict[str, str], callbacks=()) -> dict[str, Any]:
    """TRL's fit of the same pairs, its steps timed; ``callbacks`` (transformers') join the timer's."""
    import datasets
    from torch.utils.data import SequentialSampler
    from transformers import AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    shapes = json.loads(paths["shapes"])
    clock = StepClock(cuda=settings.device == "cuda")

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs) -> None:
            clock.start()

        def on_step_end(self, args, state, control, **kwargs) -> None:
            clock.stop(real_tokens(shapes, state.global_step - 1, settings.batch_size))

    class InOrder(DPOTrainer):
        def _get_train_sampler(self, *args, **kwargs):
            return SequentialSampler(self.train_dataset)

    args = DPOConfig(
        output_dir=str(Path(paths["work"]) / "trl"), per_device_train_batch_size=settings.batch_size,
        max_length=settings.max_length, max_steps=settings.steps + 1, learning_rate=LR, weight_decay=0.0,
        beta=BETA, seed=settings.seed, report_to=[], save_strategy="no", disable_tqdm=True,
        use_cpu=settings.device == "cpu", bf16=settings.bf16,
        gradient_checkpointing=False, dataloader_num_workers=0, logging_strategy="no",
        # like for like: ours builds torch's AdamW fused on CUDA (training/optimizers.py), so TRL gets its fused one
        optim="adamw_torch_fused" if settings.device == "cuda" else "adamw_torch",
        lr_scheduler_type="constant", precompute_ref_log_probs=True,
    )  # fmt: skip
    trainer = InOrder(
        model=paths["model"], args=args, train_dataset=datasets.load_from_disk(paths["pairs"]),
        processing_class=AutoTokenizer.from_pretrained(paths["tokenizer"]), callbacks=[StepTimer(), *callbacks],
    )  # fmt: skip
    trainer.train()
    return clock.result()


def peak_rss_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


def live_steps(shapes: list[tuple[int, int, int]], batch_size: int) -> int:
    """Measured steps (after the warm-up) of a live-memory run: through the batch with the most padded or real tokens,
    and at least one (the warm-up step creates the optimizer state after its backward pass)."""
    batches = range(-(-len(shapes) // batch_size))
    padded = [padded_tokens(shapes, i, batch_size) for i in batches]
    real = [real_tokens(shapes, i, batch_size) for i in batches]
    return max(1, padded.index(max(padded)), real.index(max(real)))


def worker(name: str, settings: Settings, paths: dict[str, str], live: bool = False) -> dict[str, Any]:
    import logging
    import warnings

    if live:
        from benchmarks.throughput import return_freed_blocks_to_kernel

        return_freed_blocks_to_kernel()

    import torch

    torch.set_num_threads(settings.threads)
    warnings.filterwarnings("ignore")
    for logger in ("lightning", "lightning.pytorch", "lightning.fabric", "transformers", "datasets", "trl"):
        logging.getLogger(logger).setLevel(logging.ERROR)
    cuda = settings.device == "cuda"
    if cuda and settings.memory_budget_gib is not None:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, settings.memory_budget_gib * 2**30 / total))
    start, load = time.perf_counter(), os.getloadavg()[0]
    try:
        if name == "trl-dpo":
            result = run_trl(settings, paths)
        else:
            plain = not name.endswith(("-padded", "-full"))  # each name its own caches: nothing shared between runs
            caches = name + ("-live" if live else "")  # the live run computes its reference log-probs again, as TRL's
            result = run_ours(caches, settings, paths, padding_free=plain, fused=not name.endswith("-full"))
    except torch.OutOfMemoryError:  # a GPU budget search (largest_batch.py): this batch does not fit
        result = {"times": [], "cpu": [], "tokens": [], "out_of_memory": True}
    load = [load, os.getloadavg()[0]]
    if cuda:
        result["cuda_peak_bytes"] = torch.cuda.max_memory_allocated()
        result["device_name"] = torch.cuda.get_device_name(0)
    return {**result, "peak_rss_kib": peak_rss_kib(), "wall": time.perf_counter() - start, "load": load}


def worker_env(threads: int) -> dict[str, str]:
    """The environment of a configuration's fresh process: its thread count, and this repository importable."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}  # fmt: skip


def launch_worker(script: str, spec: dict[str, Any], threads: int) -> dict[str, Any]:
    """``python <script> --worker <spec>``: one configuration in a fresh interpreter (its own resident high-water
    mark) on ``threads`` threads; the result it wrote to ``spec["out"]`` (this script's runs, accumulation.py's)."""
    done = subprocess.run([sys.executable, script, "--worker", json.dumps(spec)], env=worker_env(threads),
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"{spec['name']} failed:\n{done.stderr[-4000:]}")
    return json.loads(Path(spec["out"]).read_text())


def run_fresh(name: str, settings: Settings, paths: dict[str, str], live: bool = False) -> dict[str, Any]:
    """One configuration in a fresh interpreter (its own resident high-water mark); ``live``: the live-memory run."""
    out = Path(paths["work"]) / f"{name}{'-live' if live else ''}.json"
    spec = {"name": name, "settings": asdict(settings), "paths": paths, "out": str(out), "live": live}
    result = launch_worker(__file__, spec, settings.threads)
    cuda = f" (GPU {result['cuda_peak_bytes'] / 2**30:.2f} GiB)" if "cuda_peak_bytes" in result else ""
    print(f"  {name}{' (live memory)' if live else ''}: {result['wall']:.0f} s, peak"
          f" {result['peak_rss_kib'] / 2**20:.2f} GiB{cuda}, steps {result['times']} s, cpu {result['cpu']} s, load"
          f" {result['load']}", file=sys.stderr, flush=True)  # fmt: skip
    return result


def run_lengths(settings: Settings, paths: dict[str, str], names: list[str], live_names: list[str]) -> dict:
    """Every configuration's timed run, then the live-memory runs, at one length distribution."""
    rows = {name: summarise(run_fresh(name, settings, paths), batch_flops(settings, paths)) for name in names}
    short = replace(settings, steps=live_steps(json.loads(paths["shapes"]), settings.batch_size))
    for name in live_names:
        rows[name]["live_gib"] = run_fresh(name, short, paths, live=True)["peak_rss_kib"] / 2**20
    return rows


# --- report -----------------------------------------------------------------------------------------------------------
def batch_flops(settings: Settings, paths: dict[str, str]) -> list[int]:
    """The model FLOPs of each batch in dataset order (``benchmarks/model_flops.py``: its real tokens only)."""
    from benchmarks.model_flops import pairs_flops

    shapes, size = json.loads(paths["shapes"]), settings.batch_size
    batches = [shapes[i : i + size] for i in range(0, len(shapes), size)]
    return [pairs_flops(b, int(paths["matmul_parameters"]), settings.layers, settings.hidden) for b in batches]


def summarise(result: dict[str, Any], flops: list[int] | None = None) -> dict[str, float]:
    """Peak memory (the GPU's ``max_memory_allocated`` where there is one, else the resident high-water mark), and
    real tokens and model FLOPs per wall second and per CPU second over the measured steps (all but the first)."""
    measured = slice(1, None) if len(result["times"]) > 1 else slice(None)
    times, cpu, tokens = (result[k][measured] for k in ("times", "cpu", "tokens"))
    peak = result["cuda_peak_bytes"] / 2**30 if "cuda_peak_bytes" in result else result["peak_rss_kib"] / 2**20
    row = {"peak_gib": peak, "tokens_per_s": sum(tokens) / sum(times),
           "tokens_per_cpu_s": sum(tokens) / sum(cpu), "step_s": sum(times) / len(times),
           "load": max(result["load"])}  # fmt: skip
    if flops is not None:  # step i trained batch i (both frameworks take the pairs in dataset order)
        row["flops_per_s"] = sum(flops[: len(result["times"])][measured]) / sum(times)
    if "device_name" in result:
        row["device_name"] = result["device_name"]
    if result.get("peak_rss_fit_kib"):  # the host's high-water mark during the fit, and after it returned
        row["host_fit_gib"], row["host_after_gib"] = result["peak_rss_fit_kib"] / 2**20, result["peak_rss_kib"] / 2**20
    return row


TARGETS = {"long_tailed": (0.5, 1.5), "equal": (1.0, 1.0)}  # (peak memory <= x TRL, real tokens/s >= y TRL)


def live_ratio(row: dict[str, float], trl: dict[str, float]) -> float | None:
    """Live peak against TRL's, where both were measured."""
    return row["live_gib"] / trl["live_gib"] if "live_gib" in row and "live_gib" in trl else None


def machine_line(settings: Settings, device_name: str | None) -> str:
    if settings.device == "cuda":
        return f"Machine: {device_name or 'a CUDA GPU'}, bf16 mixed precision on both sides."
    return f"Machine: {machine()}, {settings.threads} threads, float32."


def machine() -> str:
    """The CPU's model name and whether it has native bf16 (which decides TRL's CPU autocast's cost), read from
    ``/proc/cpuinfo``: the machine a figure came from, not the one a literal once named."""
    try:
        lines = open("/proc/cpuinfo").read().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    bf16 = "native bf16" if {"avx512_bf16", "amx_bf16"} & set(flags) else "no native bf16"
    return f"{names[0] if names else platform.machine()} ({bf16})"


def render(
    cases: dict[str, dict[str, dict[str, float]]], settings: Settings, tiny: bool, peak_tflops: float | None = None
) -> str:
    cuda = settings.device == "cuda"
    device_name = next((r["device_name"] for rows in cases.values() for r in rows.values() if "device_name" in r), None)
    memory = (
        "Peak memory: the GPU's `max_memory_allocated` in the run's own process (live tensors)."
        if cuda
        else "Peak memory: resident high-water mark of the run's own process."
    )
    mfu = (
        f" MFU: model FLOPs (6·N per real token plus attention, `benchmarks/model_flops.py`) per second against"
        f" {peak_tflops:g} TFLOP/s."
        if peak_tflops
        else " Model TFLOP/s: model FLOPs (6·N per real token plus attention, `benchmarks/model_flops.py`) per second."
    )
    lines = [
        f"# Scale: our DPO / KLDPO / WDPO against TRL's DPOTrainer (Llama-style, vocabulary {settings.vocab:,})",
        "",
        machine_line(settings, device_name)
        + " Written by `benchmarks/scale.py`"
        + (" --tiny (not a published figure)." if tiny else "."),
        "",
        f"Model: Llama, {settings.layers} layers, hidden {settings.hidden}, MLP {settings.mlp}, {settings.heads} heads"
        f" ({settings.kv_heads} KV), {'tied' if settings.tied else 'untied'} vocabulary {settings.vocab:,}. Batch:"
        f" {settings.batch_size} pairs; {settings.steps} measured steps after one warm-up. {memory} Speed: real"
        " (non-padding) tokens per wall second of the measured steps, and per CPU second of the"
        " process (all threads; robust to other jobs' load, which the load column gives: the 1-minute load average)."
        " Live peak: the high-water mark of a second, short run in which glibc unmaps every freed block above 64 KiB,"
        " so it tracks the memory actually alive (— where not run)." + mfu,
        "",
        "| lengths | configuration | peak memory (GiB) | × TRL | live peak (GiB) | × TRL | real tokens/s | × TRL"
        " | real tokens/CPU-s | × TRL | s/step | load | model TFLOP/s | MFU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    for lengths, rows in cases.items():
        trl = rows["trl-dpo"]
        for name, row in rows.items():
            memory, speed = row["peak_gib"] / trl["peak_gib"], row["tokens_per_s"] / trl["tokens_per_s"]
            per_cpu = row["tokens_per_cpu_s"] / trl["tokens_per_cpu_s"]
            live = live_ratio(row, trl)
            live_cells = "— | —" if live is None else f"{row['live_gib']:.2f} | {live:.2f}"
            lines.append(f"| {lengths} | {name} | {row['peak_gib']:.2f} | {memory:.2f} | {live_cells} |"
                         f" {row['tokens_per_s']:.0f} |"
                         f" {speed:.2f} | {row['tokens_per_cpu_s']:.0f} | {per_cpu:.2f} | {row['step_s']:.3g} |"
                         f" {row['load']:.1f} | {flops_cells(row, peak_tflops)} |")  # fmt: skip
            if name == "ours-dpo":
                max_memory, min_speed = TARGETS[lengths]
                live_verdict = "" if live is None else (
                    f"; live peak {live:.2f}×: {'met' if live <= max_memory else 'missed'}")  # fmt: skip
                verdicts.append(
                    f"- {lengths}: peak memory {memory:.2f}× TRL (target ≤ {max_memory}×:"
                    f" {'met' if memory <= max_memory else 'missed'}{live_verdict}), real tokens/s {speed:.2f}× TRL"
                    f" (target ≥ {min_speed}×: {'met' if speed >= min_speed else 'missed'}; per CPU second"
                    f" {per_cpu:.2f}×)" + mfu_verdict(row, trl, peak_tflops)
                )
    host = host_table(cases)
    return "\n".join([*lines, "", "Targets (our DPO against TRL's):", *verdicts, "", *host])


def host_table(cases: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    """Host memory during the fit and after it returned: the gap is what the end of a fit copied to the host
    (Lightning's teardown moves the module, and whatever gradients and optimizer state it still holds, to the CPU)."""
    rows = [(lengths, name, row) for lengths, named in cases.items() for name, row in named.items()]
    if not any("host_fit_gib" in row for _, _, row in rows):
        return []
    lines = ["Host memory (resident high-water mark, GiB): during the fit (read at the end of its last step) and after"
             " `fit` returned.", "", "| lengths | configuration | during the fit | after the fit | × TRL after |",
             "|---|---|---|---|---|"]  # fmt: skip
    for lengths, name, row in rows:
        if "host_fit_gib" in row:
            trl = cases[lengths]["trl-dpo"].get("host_after_gib")
            ratio = f"{row['host_after_gib'] / trl:.2f}" if trl else "—"
            lines.append(f"| {lengths} | {name} | {row['host_fit_gib']:.2f} | {row['host_after_gib']:.2f} | {ratio} |")
    return [*lines, ""]


def mfu_verdict(row: dict[str, float], trl: dict[str, float], peak_tflops: float | None) -> str:
    if not peak_tflops or "flops_per_s" not in row:
        return ""
    ours, theirs = (r["flops_per_s"] / (peak_tflops * 1e12) for r in (row, trl))
    return f"; MFU {ours:.1%} against TRL's {theirs:.1%}"


def flops_cells(row: dict[str, float], peak_tflops: float | None) -> str:
    """The model TFLOP/s and MFU cells of a row (— where not known)."""
    if "flops_per_s" not in row:
        return "— | —"
    mfu = f"{row['flops_per_s'] / (peak_tflops * 1e12):.1%}" if peak_tflops else "—"
    return f"{row['flops_per_s'] / 1e12:.3g} | {mfu}"


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """``--tiny``, ``--output`` and the hidden ``--worker`` (one configuration's fresh process) of a benchmark that
    runs each configuration in its own process (this one, accumulation.py)."""
    parser.add_argument("--tiny", action="store_true", help="seconds-long smoke run; publishes nothing")
    parser.add_argument("--output", type=Path, default=None, help="markdown file to write")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--lengths", nargs="+", default=["long_tailed", "equal"], choices=["long_tailed", "equal"])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=[*CONFIGS, *EXTRA])
    parser.add_argument("--steps", type=int, default=None, help="measured steps (after one warm-up)")
    parser.add_argument("--batch-size", type=int, default=None, help="pairs per step (default 4)")
    parser.add_argument(
        "--live-configs",
        nargs="*",
        default=["trl-dpo", "ours-dpo"],
        choices=[*CONFIGS, *EXTRA],
        help="configurations that also get a live-memory run (none: leave it out; never on a GPU)",
    )
    add_gpu_arguments(parser)
    return parser.parse_args(argv)


def add_gpu_arguments(parser: argparse.ArgumentParser) -> None:
    """``--gpu``, ``--shape`` and ``--peak-tflops`` (this benchmark's and accumulation.py's)."""
    parser.add_argument("--gpu", action="store_true", help="one CUDA GPU, bf16 mixed precision on both sides")
    parser.add_argument(
        "--shape",
        choices=["default", "llama-1b"],
        default="default",
        help="the model: this benchmark's default, or Llama 3.2 1B's shape (1.24 B parameters)",
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the device's peak for MFU (default with --gpu: an H200's measured 790 bf16)",
    )


def gpu_settings(args: argparse.Namespace, base: Settings) -> tuple[Settings, float | None]:
    """``base`` with ``--shape`` and ``--gpu`` applied (not with ``--tiny``: that stays a CPU smoke run), and the
    peak FLOP/s for MFU."""
    from benchmarks.model_flops import H200_BF16_TFLOPS

    settings = base
    if args.shape == "llama-1b" and not args.tiny:
        settings = replace(LLAMA_1B, batch_size=base.batch_size, steps=base.steps)
    if args.gpu:
        settings = replace(settings, device="cuda", bf16=True)
        import torch

        if not torch.cuda.is_available():
            raise SystemExit(f"{Path(sys.argv[0]).name}: --gpu: no CUDA GPU visible")
    return settings, args.peak_tflops or (H200_BF16_TFLOPS if args.gpu else None)


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    if args.worker is not None:
        spec = json.loads(args.worker)
        result = worker(spec["name"], Settings(**spec["settings"]), spec["paths"], spec["live"])
        Path(spec["out"]).write_text(json.dumps(result))
        return ""
    settings, peak_tflops = gpu_settings(args, TINY if args.tiny else Settings())
    if args.steps is not None:
        settings.steps = args.steps
    if args.batch_size is not None:
        settings.batch_size = args.batch_size
    cases: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="rdpo-scale-") as tmp:
        for lengths in args.lengths:
            print(f"{lengths}:", file=sys.stderr)
            paths = prepare(Path(tmp) / lengths, settings, lengths)
            names = ["trl-dpo", *(n for n in args.configs if n != "trl-dpo")]
            # on a GPU max_memory_allocated counts live tensors already: no live-memory run
            live_names = [name for name in names if name in args.live_configs and settings.device == "cpu"]
            cases[lengths] = run_lengths(settings, paths, names, live_names)
    default = None if args.tiny or args.gpu or args.shape != "default" else RESULTS  # publish the CPU run alone
    return publish(render(cases, settings, args.tiny, peak_tflops), args.output or default)


def publish(report: str, output: Path | None) -> str:
    """Print the report and write it to ``output`` (None: a --tiny run without --output writes nothing)."""
    if output is not None:
        output.write_text(report)
    print(report)
    return report


if __name__ == "__main__":
    main()
