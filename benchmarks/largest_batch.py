"""The largest batch that fits a memory budget: our DPO against TRL's ``DPOTrainer``, like for like.

On a GPU this is the question a user with one card asks: how many pairs per step can I train a ~1 B model on? The
model has Llama 3.2 1B's shape (16 layers, hidden 2,048, 32 heads / 8 KV heads, MLP 8,192, vocabulary 128,256, tied
embeddings: 1.24 B parameters), random weights saved and loaded with ``from_pretrained`` by both frameworks; bf16
mixed precision (fp32 weights and AdamW state, as ``bf16-mixed`` and TRL's ``bf16=True`` both keep them), sdpa
attention, precomputed reference log-probs on both sides, long-tailed lengths as in ``scale.py`` (log-normal, median
256, clipped to 64-2,048). Ours runs its defaults plus ``data.padding_free: true``; TRL 1.16 its defaults (fused LM
head, padded batches).

The search: for each framework, k = 1, 2, 4, ... pairs per batch (from ``--start-pairs``) until a trial does not fit,
then bisection between the last k that fitted and the first that did not, down to ``--resolution`` (the gap between them
at most that fraction of the fitting k: 0, the default, is the exact largest k). Each trial is a fresh process that
trains two steps of k pairs (the same pairs for both frameworks at each k). A trial fits when it finishes without
running out of memory and its peak stays within the budget: on a GPU, ``torch.cuda.set_per_process_memory_fraction``
caps the process at the budget (a real out-of-memory error ends the trial) and the peak is
``torch.cuda.max_memory_allocated``; on a CPU (the smoke run) the peak is the live resident high-water mark
(``scale.py``'s live-memory run). The verdict: our largest batch against TRL's, in pairs and in real tokens (target on a
GPU: ≥ 2×).

    python benchmarks/largest_batch.py                # GPU: budget 40 GiB, ~1 B model; minutes per framework
    python benchmarks/largest_batch.py --parallel --start-pairs 4 --resolution 0.125   # both searches at once
    python benchmarks/largest_batch.py --tiny         # CPU smoke run (small model, 2 GiB budget); publishes nothing
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `benchmarks.scale`

from benchmarks.scale import (  # noqa: E402
    LLAMA_1B,
    Settings,
    padded_tokens,
    prepare_model,
    prepare_pairs,
    real_tokens,
    run_fresh,
)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "largest_batch.md"
FRAMEWORKS = ("ours-dpo", "trl-dpo")
#: Llama 3.2 1B's shape, random weights
MODEL_1B = replace(LLAMA_1B, steps=1, device="cuda", bf16=True)
TINY = Settings(vocab=2000, layers=2, hidden=64, heads=4, kv_heads=2, mlp=128, steps=1, min_length=16,
                max_length=256, median_length=64)  # fmt: skip


def trial(name: str, pairs: int, settings: Settings, model: dict[str, str], work: Path, budget_gib: float) -> dict:
    """Two training steps of ``pairs`` pairs in a fresh process; whether they fit the budget, and their peak."""
    sized = replace(settings, batch_size=pairs, memory_budget_gib=budget_gib)
    paths = prepare_pairs(work / f"pairs-{pairs}", sized, "long_tailed", model)
    result = run_fresh(name, sized, paths, live=sized.device == "cpu")
    peak = result["cuda_peak_bytes"] / 2**30 if "cuda_peak_bytes" in result else result["peak_rss_kib"] / 2**20
    shapes = json.loads(paths["shapes"])  # reported: the first of the two batches (both frameworks see it at this k)
    fits = not result.get("out_of_memory", False) and peak <= budget_gib
    print(f"  {name}: {pairs} pairs -> {'fits' if fits else 'does not fit'} (peak {peak:.2f} GiB)", file=sys.stderr)
    return {"pairs": pairs, "fits": fits, "peak_gib": peak, "real_tokens": real_tokens(shapes, 0, pairs),
            "padded_tokens": padded_tokens(shapes, 0, pairs)}  # fmt: skip


def largest(
    name: str,
    settings: Settings,
    model: dict[str, str],
    work: Path,
    budget: float,
    cap: int,
    start: int = 1,
    resolution: float = 0.0,
) -> dict:
    """Doubling from ``start``, then bisection, over pairs per batch, until the gap between the largest k that fitted
    and the smallest that did not is at most ``max(1, resolution × k)``; that k (0 if none) and every trial."""
    trials: dict[int, dict] = {}
    k = min(start, cap)
    while k <= cap:
        trials[k] = trial(name, k, settings, model, work, budget)
        if not trials[k]["fits"]:
            break
        k *= 2
    fitted = [t for t in trials.values() if t["fits"]]
    low = max((t["pairs"] for t in fitted), default=0)
    high = min([t["pairs"] for t in trials.values() if not t["fits"]] + [cap + 1])
    while high - low > max(1, int(resolution * low)):
        middle = (low + high) // 2
        trials[middle] = trial(name, middle, settings, model, work, budget)
        low, high = (middle, high) if trials[middle]["fits"] else (low, middle)
    best = trials.get(low, {"pairs": 0, "real_tokens": 0, "padded_tokens": 0, "peak_gib": 0.0})
    return {"best": best, "trials": [trials[k] for k in sorted(trials)], "capped": low == cap}


def render(
    found: dict[str, dict], settings: Settings, parameters: int, budget: float, tiny: bool, resolution: float = 0.0
) -> str:
    params = f"{parameters / 1e9:.2f} B" if parameters >= 1e8 else f"{parameters:,}"
    lines = [
        "# Largest batch within a memory budget: our DPO against TRL's DPOTrainer",
        "",
        f"Device: {settings.device}; {'bf16 mixed' if settings.bf16 else 'float32'}; budget {budget:g} GiB. Model:"
        f" Llama, {settings.layers} layers, hidden {settings.hidden}, {settings.heads} heads ({settings.kv_heads} KV),"
        f" MLP {settings.mlp}, vocabulary {settings.vocab:,}, {'tied' if settings.tied else 'untied'} ({params}"
        " parameters). Long-tailed lengths; two steps per trial"
        + (f"; bisection stopped within {resolution:.0%} of the largest fitting batch" if resolution else "")
        + ". Written by `benchmarks/largest_batch.py`"
        + (" --tiny (not a published figure)." if tiny else "."),
        "",
        "| framework | largest batch (pairs) | real tokens | padded tokens | peak (GiB) | trials (pairs: fits?) |",
        "|---|---|---|---|---|---|",
    ]
    for name, result in found.items():
        best = result["best"]
        tried = ", ".join(f"{t['pairs']}: {'yes' if t['fits'] else 'no'}" for t in result["trials"])
        capped = " (the cap: more may fit)" if result["capped"] else ""
        lines.append(f"| {name} | {best['pairs']}{capped} | {best['real_tokens']:,} | {best['padded_tokens']:,} |"
                     f" {best['peak_gib']:.2f} | {tried} |")  # fmt: skip
    ours, trl = found.get("ours-dpo"), found.get("trl-dpo")
    if ours and trl and trl["best"]["pairs"] > 0:
        pairs = ours["best"]["pairs"] / trl["best"]["pairs"]
        tokens = ours["best"]["real_tokens"] / trl["best"]["real_tokens"]
        verdict = "met" if pairs >= 2 else "missed"
        if ours["capped"] or trl["capped"]:
            verdict = "undecided: a search stopped at --max-pairs"
        lines += ["", f"Ours / TRL: {pairs:.2f}× the pairs, {tokens:.2f}× the real tokens (target ≥ 2×: {verdict})."]
    return "\n".join([*lines, ""])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run; publishes nothing")
    parser.add_argument("--budget-gib", type=float, default=None, help="memory budget (default: 40 GPU, 2 --tiny)")
    parser.add_argument("--max-pairs", type=int, default=128, help="stop doubling here")
    parser.add_argument("--frameworks", nargs="+", default=list(FRAMEWORKS), choices=FRAMEWORKS)
    parser.add_argument("--output", type=Path, default=None, help="markdown file to write")
    parser.add_argument("--start-pairs", type=int, default=1, help="the first k of the doubling")
    parser.add_argument("--resolution", type=float, default=0.0,
                        help="stop bisecting at a gap of this fraction of the fitting k (0: exact)")  # fmt: skip
    parser.add_argument("--parallel", action="store_true",
                        help="search the frameworks at once (on a GPU each trial is capped at the budget: the card"
                             " must hold one budget per framework)")  # fmt: skip
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    settings = TINY if args.tiny else MODEL_1B
    budget = args.budget_gib or (2.0 if args.tiny else 40.0)
    if settings.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("largest_batch.py: no CUDA GPU visible (use --tiny for the CPU smoke run)")
    with tempfile.TemporaryDirectory(prefix="rdpo-largest-") as tmp:
        model = prepare_model(Path(tmp), settings)

        def search(name: str) -> dict[str, Any]:
            print(f"{name}:", file=sys.stderr)
            work = Path(tmp) / name
            return largest(name, settings, model, work, budget, args.max_pairs, args.start_pairs, args.resolution)

        with ThreadPoolExecutor(len(args.frameworks) if args.parallel else 1) as pool:  # each trial its own process
            searched = pool.map(search, args.frameworks)
            found: dict[str, dict[str, Any]] = dict(zip(args.frameworks, searched, strict=True))
    report = render(found, settings, int(model["parameters"]), budget, args.tiny, args.resolution)
    output = args.output or (None if args.tiny else RESULTS)
    if output is not None:
        output.write_text(report)
    print(report)
    print(json.dumps({"settings": asdict(settings), "found": found}), file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
