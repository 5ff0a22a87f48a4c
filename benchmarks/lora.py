"""LoRA against full fine-tuning, and against TRL's ``DPOTrainer(peft_config=...)``: step time and peak memory.

One Llama-style model (default: 8 layers, d=768, 12 heads, MLP 2048, vocabulary 32,000, untied output layer: 106 M
parameters) with random weights, saved once with ``save_pretrained`` and loaded by every configuration with
``from_pretrained``; the same pairs (fixed-length prompts and responses over a 32k word-level tokenizer, so nobody
pads or truncates; token ids compared by digest); the same LoRA adapters (r=16, alpha 32, every linear layer but the
output layer: PEFT's ``all-linear``); AdamW, same lr, no weight decay, gradient clipping 1.0, fp32, no gradient
checkpointing. The reference is computed every step on both sides (ours: ``precompute_reference: false``, TRL:
``precompute_ref_log_probs=False``): with LoRA it is the base model with its adapters disabled, without LoRA a frozen
copy of the initial model.

    configurations: ours-lora, trl-lora, ours-full (and trl-full with --with-trl-full)
    targets: step time ours-lora <= 1.0x trl-lora; peak memory ours-lora <= 1.0x trl-lora;
             peak memory ours-lora <= 0.5x ours-full (the same batch)

Timing and memory are measured as in ``benchmarks/throughput.py`` (whose helpers this reuses): every configuration
in its own fresh process forked from a server that has only imported the libraries, the step windows from the
frameworks' own step callbacks, peak memory as the growth of the peak RSS (VmHWM) over the RSS after imports (the
"peak growth"); the peak RSS itself (imports included) is reported too.

    python benchmarks/lora.py                       # default size: about 1 minute on 2 idle CPU cores
    python benchmarks/lora.py --tiny --out t.md     # seconds; what the test runs (never writes benchmarks/results/)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `benchmarks.throughput`

from benchmarks.throughput import (  # noqa: E402
    PRELOAD,
    THREADS,
    TRL_PRELOAD,
    StepClock,
    peak_rss,
    quiet_worker,
    reset_peak_rss,
    run_forked,
    save_pairs,
    time_our_fit,
    token_digest,
    train_trl,
    trl_args,
)

RESULTS = Path(__file__).parent / "results" / "lora.md"
CONFIGS = ("ours-lora", "trl-lora", "ours-full", "trl-full")


@dataclass(frozen=True)
class Settings:
    steps: int = 6
    warmup: int = 1
    batch_size: int = 2
    seq_len: int = 128
    layers: int = 8
    hidden: int = 768
    heads: int = 12
    intermediate: int = 2048
    vocab: int = 32000
    lr: float = 1e-4
    rank: int = 16
    seed: int = 0
    threads: int = THREADS

    @property
    def total_steps(self) -> int:
        return self.warmup + self.steps


#: a smoke run, on one thread as scale.py's TINY
TINY = Settings(steps=2, warmup=1, batch_size=2, seq_len=16, layers=2, hidden=64, heads=2, intermediate=128, vocab=512,
                threads=1)  # fmt: skip


def lora_config(settings: Settings):
    from peft import LoraConfig

    return LoraConfig(r=settings.rank, lora_alpha=2 * settings.rank, lora_dropout=0.0, target_modules="all-linear")


def prepare(workdir: Path, settings: Settings) -> dict[str, str]:
    """The tokenizer (``vocab`` words), the model and the pairs every configuration loads."""
    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from rdpo_lightning.data.tokenizer import load_tokenizer, save_word_tokenizer

    words = [f"w{i}" for i in range(settings.vocab - 4)]  # + pad, bos, eos, unk
    tokenizer_dir = save_word_tokenizer(words, workdir / "tokenizer")
    tokenizer = load_tokenizer(tokenizer_dir)
    torch.manual_seed(settings.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings.hidden,
        intermediate_size=settings.intermediate,
        num_hidden_layers=settings.layers,
        num_attention_heads=settings.heads,
        num_key_value_heads=settings.heads,
        max_position_embeddings=2 * settings.seq_len,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    parameters = sum(p.numel() for p in model.parameters())
    model_dir = workdir / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    del model

    rng = np.random.default_rng(settings.seed)
    prompt_words = max(1, settings.seq_len // 4)
    response_words = settings.seq_len - prompt_words - 1  # + <eos>
    n = settings.total_steps * settings.batch_size

    def text(count: int) -> list[str]:
        return [" ".join(rng.choice(words, count)) for _ in range(n)]

    prompts = text(prompt_words)
    chosen, rejected = text(response_words), text(response_words)  # the rng draws the chosen responses first
    return {
        "tokenizer": str(tokenizer_dir),
        "model": str(model_dir),
        "pairs": save_pairs(workdir, tokenizer, settings.seq_len, prompts, chosen, rejected),
        "work": str(workdir),
        "parameters": str(parameters),
    }


def run_ours(lora: bool, settings: Settings, paths: dict[str, str]) -> dict[str, Any]:
    result, module = time_our_fit(
        settings, paths, peft=lora_config(settings) if lora else None, precompute_reference=False
    )
    trainable = sum(p.numel() for p in module.policy.parameters() if p.requires_grad)
    return {**result, "trainable": trainable}


def run_trl(lora: bool, settings: Settings, paths: dict[str, str]) -> dict[str, Any]:
    clock = StepClock()
    args = trl_args(settings, str(Path(paths["work"]) / f"trl-{'lora' if lora else 'full'}"))
    trainer = train_trl(args, paths, clock, peft_config=lora_config(settings) if lora else None)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return {**clock.result(), "digest": token_digest(trainer.train_dataset), "trainable": trainable}


def worker(name: str, settings: Settings, paths: dict[str, str], result_path: str) -> None:
    """One configuration in a fresh process: threads, peak-RSS reset after imports, run, write JSON."""
    quiet_worker(settings.threads)
    framework, kind = name.split("-")
    baseline = reset_peak_rss()
    load_before = os.getloadavg()[0]
    with contextlib.redirect_stdout(sys.stderr):
        result = (run_ours if framework == "ours" else run_trl)(kind == "lora", settings, paths)
    result.update(peak_rss_kib=peak_rss(), baseline_rss_kib=baseline, load=[load_before, os.getloadavg()[0]])
    Path(result_path).write_text(json.dumps(result))


def run_configs(names: list[str], settings: Settings, paths: dict[str, str]) -> dict[str, dict[str, Any]]:
    context = multiprocessing.get_context("forkserver")
    preload = PRELOAD + ["transformers.models.llama.modeling_llama", "peft"]
    context.set_forkserver_preload(preload + (TRL_PRELOAD if any(n.startswith("trl") for n in names) else []))
    results = {}
    for name in names:
        result_path = Path(paths["work"]) / f"result-{name}.json"
        results[name] = run_forked(context, worker, (name, settings, paths, str(result_path)), result_path, name)
    return results


@dataclass
class Row:
    name: str
    step_s: float
    peak_growth_mib: float
    peak_rss_mib: float
    trainable: int


def summarise(name: str, result: dict[str, Any], settings: Settings) -> Row:
    if len(result["times"]) != settings.total_steps:
        raise RuntimeError(f"{name}: timed {len(result['times'])} steps, expected {settings.total_steps}")
    return Row(
        name,
        statistics.median(result["times"][settings.warmup :]),
        (result["peak_rss_kib"] - result["baseline_rss_kib"]) / 1024,
        result["peak_rss_kib"] / 1024,
        result["trainable"],
    )


#: (label, numerator row, denominator row, metric, target): every ratio the issue sets
TARGETS = (
    ("step time, ours LoRA / TRL LoRA", "ours-lora", "trl-lora", "step_s", 1.0),
    ("peak memory growth, ours LoRA / TRL LoRA", "ours-lora", "trl-lora", "peak_growth_mib", 1.0),
    ("peak memory growth, ours LoRA / ours full fine-tuning", "ours-lora", "ours-full", "peak_growth_mib", 0.5),
    ("peak RSS (imports included), ours LoRA / TRL LoRA", "ours-lora", "trl-lora", "peak_rss_mib", 1.0),
    ("peak RSS (imports included), ours LoRA / ours full", "ours-lora", "ours-full", "peak_rss_mib", 0.5),
    ("step time, ours full / TRL full", "ours-full", "trl-full", "step_s", None),
    ("peak memory growth, ours full / TRL full", "ours-full", "trl-full", "peak_growth_mib", None),
)


def render(rows: dict[str, Row], header: str) -> str:
    columns = ["configuration", "trainable parameters", "median step (s)", "peak RSS growth (MiB)", "peak RSS (MiB)"]
    lines = [header, "", "| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for row in rows.values():
        cells = [row.name, f"{row.trainable:,}", f"{row.step_s:.2f}", f"{row.peak_growth_mib:.0f}"]
        lines.append("| " + " | ".join([*cells, f"{row.peak_rss_mib:.0f}"]) + " |")
    lines += ["", "| ratio | measured | target | met |", "|---|---|---|---|"]
    for label, numerator, denominator, metric, target in TARGETS:
        if numerator not in rows or denominator not in rows:
            continue
        ratio = getattr(rows[numerator], metric) / getattr(rows[denominator], metric)
        met = "–" if target is None else ("yes" if ratio <= target else "**no**")
        lines.append(f"| {label} | {ratio:.2f}x | {'–' if target is None else f'<= {target}x'} | {met} |")
    return "\n".join(lines)


def cpu_name() -> str:
    """The CPU's model name and whether it has native bf16 (/proc/cpuinfo), else the machine type."""
    with contextlib.suppress(OSError):
        info = Path("/proc/cpuinfo").read_text()
        name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
        if name:
            return name + (" with AVX512-BF16" if "avx512_bf16" in info else "")
    return platform.machine()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a size that runs in seconds (smoke test)")
    parser.add_argument("--with-trl-full", action="store_true", help="also TRL full fine-tuning (slow)")
    parser.add_argument("--skip-trl", action="store_true", help="leave out TRL's rows (trl not installed)")
    parser.add_argument("--out", type=Path, default=None, help=f"write the table here (default run: {RESULTS})")
    parser.add_argument("--steps", type=int, default=None, help="timed steps")
    parser.add_argument("--batch-size", type=int, default=None, help="pairs per step")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    settings = TINY if args.tiny else Settings()
    given = {"steps": args.steps, "batch_size": args.batch_size}
    settings = dataclasses.replace(settings, **{k: v for k, v in given.items() if v is not None})
    names = [n for n in CONFIGS if (n != "trl-full" or args.with_trl_full) and not (args.skip_trl and "trl" in n)]
    if any("trl" in n for n in names) and importlib.util.find_spec("trl") is None:
        raise SystemExit("trl is not installed (pip install -e '.[bench]'); or leave TRL's rows out with --skip-trl")
    out = args.out if args.out is not None else (None if args.tiny else RESULTS)
    with tempfile.TemporaryDirectory(prefix="rdpo-lora-") as tmp:
        paths = prepare(Path(tmp), settings)
        results = run_configs(names, settings, paths)
    digests = {name: r["digest"] for name, r in results.items()}
    if len(set(digests.values())) > 1:
        raise RuntimeError(f"the configurations trained on different token ids: {digests}")
    rows = {name: summarise(name, results[name], settings) for name in names}
    loads = [v for r in results.values() for v in r["load"]]
    import peft
    import torch
    import transformers

    versions = f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}"
    if any("trl" in n for n in names):
        import trl

        versions += f", trl {trl.__version__}"
    header = (
        f"Llama-style model, {int(paths['parameters']) / 1e6:.0f} M parameters ({settings.layers} layers, "
        f"d={settings.hidden}, {settings.heads} heads, MLP {settings.intermediate}, vocabulary {settings.vocab}, "
        f"untied); LoRA r={settings.rank}, alpha {2 * settings.rank}, all-linear; batch {settings.batch_size} pairs "
        f"(= {2 * settings.batch_size} sequences) x {settings.seq_len} tokens; fp32, AdamW lr {settings.lr:g}, "
        f"reference every step; median of {settings.steps} steps after {settings.warmup} warm-up; {settings.threads} "
        f"torch threads; {os.cpu_count()}-CPU {cpu_name()}; {versions}; 1-min load "
        f"average {min(loads):.1f}-{max(loads):.1f} during the runs."
    )
    table = render(rows, header)
    print(table)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(table + "\n")
    return table


if __name__ == "__main__":
    main()
