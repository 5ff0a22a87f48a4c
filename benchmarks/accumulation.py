"""The price of exactness: robust objectives over the optimizer's batch against DPO, all with accumulation 8.

Every configuration takes the same optimizer steps over the same pairs in the same order: ``--micro-batch`` pairs per
loader batch × ``model.accumulate_grad_batches: 8``, float32 on CPU, precomputed reference log-probs, padding-free
batches, AdamW. The shape is ``scale.py``'s realistic one, cut in depth so that the whole run fits about a quarter of
an hour: a Llama-style model with an untied 128,256 vocabulary (2 layers by default instead of 8), long-tailed lengths
(log-normal, median 256, clipped to [64, 2,048]). DPO, the one-pass strategies (KLDPO normalised, Dr. DPO) and the
scoring-pass ones (CVaR, χ², Group DRO; :mod:`rdpo_lightning.training.accumulation`) each run in a fresh process: step
time (wall, and CPU seconds of the process, steadier on a loaded machine) over the measured steps after one warm-up, and
peak memory as the process's resident high-water mark (``VmHWM``). A first process tokenises the pairs and computes
the reference log-probs that every run then loads from the cache (so no measured peak holds the reference pass).
``--parallel K`` runs K configurations at once (a loaded machine: they then share its load alike; CPU seconds per step
stay comparable, wall times do not).

On a GPU (``--gpu``: bf16 mixed precision, CUDA-synchronised step times, peak ``torch.cuda.max_memory_allocated``),
typically at ``--shape llama-1b`` (Llama 3.2 1B's shape, all 16 layers unless ``--layers``). WDPO
(``finite_difference``: two forward-backward passes per micro-batch) runs the additive route.

    python benchmarks/accumulation.py          # writes results/accumulation.md (minutes on 2 idle cores)
    python benchmarks/accumulation.py --tiny   # a short smoke run (small model and vocabulary); publishes nothing
    python benchmarks/accumulation.py --gpu --shape llama-1b --strategies kldpo wdpo_fd cvar --output x.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.scale import (  # noqa: E402
    TINY,
    Settings,
    StepClock,
    add_common_arguments,
    add_gpu_arguments,
    fixed_pairs,
    gpu_settings,
    launch_worker,
    machine,
    peak_rss_kib,
    prepare,
    publish,
    real_tokens,
)

RESULTS = HERE / "results" / "accumulation.md"
ACCUMULATE = 8
#: name: (robust class path, init args, route)
STRATEGIES = {
    "dpo": ("NoRobust", {}, "additive"),
    "kldpo": ("KLReweighter", {"tau": 1.0}, "one pass"),
    "dr_dpo": ("DrDPO", {"beta_prime": 1.0}, "one pass"),
    "cvar": ("CVaR", {"worst_fraction": 0.5}, "scoring pass"),
    "chi_square": ("ChiSquareDRO", {"rho": 0.5}, "scoring pass"),
    "group_dro": ("GroupDRO", {"num_groups": 2, "eta": 0.01}, "scoring pass"),
    "wdpo_fd": ("WassersteinPenalty", {"rho": 0.01, "mode": "finite_difference"}, "two passes"),
    # the worst of the mixtures in a simplex ball around the pairs' training mixture, hard labels (SCORES below)
    "mixture_dro": ("MixtureDRO", {"radius": 0.3, "steps": 2, "label_temperature": None}, "scoring pass"),
}
#: MixtureDRO's data: three attribute scores behind every pair, labelled at TRAIN_MIXTURE (the other strategies
#: ignore the column)
SCORES = ("helpfulness", "correctness", "verbosity")
TRAIN_MIXTURE = (0.6, 0.3, 0.1)
#: step time ≤ x DPO's; peak memory ≤ 1.05x. "two passes": WDPO's additive route with two forward-backward passes
#: per micro-batch (finite difference), at most twice DPO's step
TARGETS = {"additive": 1.0, "one pass": 1.05, "scoring pass": 1.35, "two passes": 2.0}


@dataclass
class Run:
    micro_batch: int = 1
    steps: int = 1  # measured optimizer steps, after one warm-up step (each is 8 micro-batches)
    layers: int = 2


def run_strategy(name: str, settings: Settings, micro_batch: int, paths: dict[str, str]) -> dict[str, Any]:
    import functools

    import lightning as L
    import torch

    from rdpo_lightning import robust as strategies
    from rdpo_lightning.training.module import RobustDPO
    from rdpo_lightning.training.quiet import quiet_trainer

    shapes = json.loads(paths["shapes"])
    clock, seen = StepClock(cuda=settings.device == "cuda"), {"step": 0}

    class StepTimer(L.Callback):
        """One optimizer step: from the first micro-batch of its window to the end of the last."""

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if batch_idx % ACCUMULATE == 0:
                clock.start()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.global_step != seen["step"]:
                seen["step"] = trainer.global_step
                first = batch_idx - ACCUMULATE + 1
                clock.stop(sum(real_tokens(shapes, b, micro_batch) for b in range(first, batch_idx + 1)))

    class_name, init_args, _ = STRATEGIES["dpo" if name == "reference" else name]
    L.seed_everything(settings.seed, verbose=False)
    data = scored_pairs(paths)(batch_size=micro_batch, max_length=settings.max_length, padding_free=True,
                               cache_dir=str(Path(paths["work"]) / "cache"))  # fmt: skip
    module = RobustDPO(
        model=paths["model"], beta=0.1, robust=getattr(strategies, class_name)(**init_args),
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-6, weight_decay=0.0), min_lr_ratio=1.0,
        precompute_reference=True, reference_cache_dir=str(Path(paths["work"]) / "reference"),
        accumulate_grad_batches=ACCUMULATE,
    )  # fmt: skip
    steps = 0 if name == "reference" else settings.steps + 1  # 0: only the reference pass (configure_optimizers)
    trainer = quiet_trainer(accelerator="gpu" if settings.device == "cuda" else "cpu", devices=1, max_steps=steps,
                            precision="bf16-mixed" if settings.bf16 else "32-true", limit_val_batches=0,
                            callbacks=[StepTimer()])  # fmt: skip
    trainer.fit(module, datamodule=data)
    return clock.result()


def scored_pairs(paths: dict[str, str]) -> type:
    """scale.py's pairs, which also say what their ``score_margins`` column is: three attributes, labelled at
    :data:`TRAIN_MIXTURE` (what MixtureDRO builds its set around)."""
    from rdpo_lightning.mixtures import SCORE_MARGINS, Mixture, MixtureSpace

    class ScoredPairs(fixed_pairs(paths)):
        @property
        def pair_columns(self) -> tuple[str, ...]:
            return ("group", SCORE_MARGINS)

        def mixture_space(self) -> MixtureSpace:
            return MixtureSpace(SCORES, "convex", (Mixture(TRAIN_MIXTURE, "alpha0"),), train_keys="the pairs' mixture")

    return ScoredPairs


def add_groups(paths: dict[str, str]) -> None:
    """Two groups, alternating: Group DRO's ``group`` column; and each pair's margins of :data:`SCORES`, drawn so
    that the chosen response is preferred at :data:`TRAIN_MIXTURE` (MixtureDRO's ``score_margins``). The other
    strategies ignore both."""
    import datasets
    import numpy as np

    from rdpo_lightning.mixtures import SCORE_MARGINS

    pairs = datasets.load_from_disk(paths["pairs"])
    rng = np.random.default_rng(0)
    margins = rng.normal(size=(len(pairs), len(SCORES)))
    margins[margins @ np.asarray(TRAIN_MIXTURE) < 0] *= -1  # preferred at alpha0: alpha0 . margin > 0
    pairs = pairs.add_column("group", [i % 2 for i in range(len(pairs))])
    pairs = pairs.add_column(SCORE_MARGINS, margins.tolist())
    grouped = str(Path(paths["work"]) / "grouped_pairs")
    pairs.save_to_disk(grouped)
    paths["pairs"] = grouped


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    import logging
    import warnings

    import torch

    settings = Settings(**spec["settings"])
    torch.set_num_threads(settings.threads)
    warnings.filterwarnings("ignore")
    for logger in ("lightning", "lightning.pytorch", "lightning.fabric", "transformers", "datasets"):
        logging.getLogger(logger).setLevel(logging.ERROR)
    start, load = time.perf_counter(), os.getloadavg()[0]
    result = run_strategy(spec["name"], settings, spec["micro_batch"], spec["paths"])
    load = [load, os.getloadavg()[0]]
    if settings.device == "cuda":
        result.update(cuda_peak_bytes=torch.cuda.max_memory_allocated(), device_name=torch.cuda.get_device_name(0))
    return {**result, "peak_rss_kib": peak_rss_kib(), "wall": time.perf_counter() - start, "load": load}


def run_fresh(name: str, settings: Settings, micro_batch: int, paths: dict[str, str]) -> dict[str, Any]:
    out = Path(paths["work"]) / f"{name}.json"
    spec = {"name": name, "settings": asdict(settings), "micro_batch": micro_batch, "paths": paths, "out": str(out)}
    result = launch_worker(__file__, spec, settings.threads)
    print(f"  {name}: {result['wall']:.0f} s, peak {result['peak_rss_kib'] / 2**20:.2f} GiB, steps"
          f" {[round(t, 1) for t in result['times']]} s, cpu {[round(t, 1) for t in result['cpu']]} s, load"
          f" {result['load']}", file=sys.stderr, flush=True)  # fmt: skip
    if not result["times"]:  # the reference pass alone
        return {}
    measured = slice(1, None) if len(result["times"]) > 1 else slice(None)
    times, cpu = result["times"][measured], result["cpu"][measured]
    peak = result["cuda_peak_bytes"] / 2**30 if "cuda_peak_bytes" in result else result["peak_rss_kib"] / 2**20
    return {"step_s": sum(times) / len(times), "cpu_s": sum(cpu) / len(cpu), "peak_gib": peak,
            "load": max(result["load"]), "device_name": result.get("device_name")}  # fmt: skip


def render(
    rows: dict[str, dict[str, float]], settings: Settings, run: Run, tiny: bool, uptime: list[str], parallel: int
) -> str:
    dpo = rows["dpo"]
    where = f"{machine()}, {settings.threads} threads, float32"
    if settings.device == "cuda":
        where = f"{dpo.get('device_name') or 'a CUDA GPU'}, bf16 mixed precision"
    lines = [
        "# The price of exactness: robust objectives over the optimizer's batch (accumulation 8)",
        "",
        f"Machine: {where}. Written by `benchmarks/accumulation.py`"
        + (" --tiny (not a published figure)." if tiny else ".")
        + f" `uptime` before and after: {uptime[0]} / {uptime[1]} (the machine is shared: loads above the core"
        " count stretch wall times, CPU seconds less so).",
        "",
        f"Model: Llama, {settings.layers} layers, hidden {settings.hidden}, MLP {settings.mlp}, {settings.heads} heads"
        f" ({settings.kv_heads} KV), untied vocabulary {settings.vocab:,}. Optimizer batch: {run.micro_batch} pair(s)"
        f" per micro-batch × {ACCUMULATE} (`model.accumulate_grad_batches`), long-tailed lengths, padding-free,"
        f" precomputed reference log-probs; {run.steps} measured step(s) after one warm-up;"
        f" {parallel} configuration(s) at a time. Peak memory: "
        + ("the GPU's `max_memory_allocated`" if settings.device == "cuda" else "resident high-water mark")
        + " of the run's own process (loading, reference pass, training).",
        "",
        "| strategy | route | s/step (wall) | × DPO | CPU s/step | × DPO | peak memory (GiB) | × DPO | load |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    for name, row in rows.items():
        route = STRATEGIES[name][2]
        wall, cpu, memory = (row[k] / dpo[k] for k in ("step_s", "cpu_s", "peak_gib"))
        lines.append(f"| {name} | {route} | {row['step_s']:.3g} | {wall:.2f} | {row['cpu_s']:.3g} | {cpu:.2f} |"
                     f" {row['peak_gib']:.2f} | {memory:.2f} | {row['load']:.1f} |")  # fmt: skip
        if name != "dpo":
            target = TARGETS[route]
            verdicts.append(
                f"- {name} ({route}): step {wall:.2f}× DPO's wall, {cpu:.2f}× CPU (target ≤ {target}×:"
                f" {'met' if cpu <= target else 'missed'} on CPU seconds, {'met' if wall <= target else 'missed'}"
                f" on wall time); peak memory {memory:.2f}× (target ≤ 1.05×: {'met' if memory <= 1.05 else 'missed'})"
            )
    return "\n".join([*lines, "", "Targets:", *verdicts, ""])


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    parser.add_argument("--steps", type=int, default=None, help="measured optimizer steps (after one warm-up)")
    parser.add_argument("--micro-batch", type=int, default=None, help="pairs per micro-batch (default 1)")
    parser.add_argument("--layers", type=int, default=None, help="transformer layers (default 2)")
    parser.add_argument("--parallel", type=int, default=1, help="configurations run at once (each its own process)")
    add_gpu_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    if args.worker is not None:
        spec = json.loads(args.worker)
        Path(spec["out"]).write_text(json.dumps(worker(spec)))
        return ""
    base, _ = gpu_settings(args, TINY if args.tiny else Settings())
    run = Run(steps=1, layers=1) if args.tiny else Run()
    if args.shape == "llama-1b" and not args.tiny:  # the whole 1 B model, unless --layers says otherwise
        run = replace(run, layers=base.layers)
    run = replace(run, **{k: v for k, v in {"steps": args.steps, "micro_batch": args.micro_batch,
                                              "layers": args.layers}.items() if v is not None})  # fmt: skip
    # prepare() writes batch_size × (steps + 1) pairs: one optimizer batch per step
    settings = replace(base, layers=run.layers, steps=run.steps, batch_size=run.micro_batch * ACCUMULATE)
    names = ["dpo", *(n for n in args.strategies if n != "dpo")]
    before = uptime()
    with tempfile.TemporaryDirectory(prefix="rdpo-accumulation-") as tmp:
        paths = prepare(Path(tmp), settings, "long_tailed")
        add_groups(paths)
        # a first process tokenises the pairs and computes the reference log-probs every run then loads (so no
        # measured peak holds the reference pass)
        run_fresh("reference", settings, run.micro_batch, paths)
        with ThreadPoolExecutor(args.parallel) as pool:  # each configuration is its own process
            done = pool.map(lambda name: run_fresh(name, settings, run.micro_batch, paths), names)
            rows = dict(zip(names, done, strict=True))
    report = render(rows, settings, run, args.tiny, [before, uptime()], args.parallel)
    return publish(report, args.output or (None if args.tiny or args.gpu or args.shape != "default" else RESULTS))


if __name__ == "__main__":
    main()
