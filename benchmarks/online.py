"""Online against offline preference optimisation, at equal optimizer steps and equal generated tokens.

Why this exists
---------------
Issue 35 made the online loop real (``rdpo_lightning.online``): the policy's own completions, scored per attribute,
paired under α₀ each round, and trained with any strategy, the mixture strategies included. Does it pay, and for
which method? Both modes here start from the same initial policy (a tiny GPT-2 saved with ``save_pretrained``) and
the same prompts, and write the same number of completions of the same length:

* ``offline``: the paper's recipe. The initial policy samples ``--completions`` completions for each training prompt
  once, before training (``AttributeWorldDataModule(response_policy=...)``); the best against the worst under α₀
  makes the pair.
* ``online``: the current policy samples them each round (``OnlineWorldDataModule``, a round per optimizer step), the
  same rule makes the pair.

Methods: DPO at α₀ (TRL's OnlineDPOTrainer with ``reward_weights`` fixed at α₀, when online), Mean and MixtureDRO
(``aggregate: max``) over the ball of radius ``--radius`` around α₀, hard labels. Scenarios: ``pair`` (the anger/fear
line, α₀ = 0.1, judged at α ∈ {0, 0.25, 0.5, 0.75, 1}) and ``simplex`` (anger, fear, joy, α₀ = (0.8, 0.1, 0.1), judged
at the corners, edge midpoints and centre). The validation sets are the same held-out prompts' completions by the
initial policy in both modes. The figure of merit is the final policy's worst-case generation reward over the
judged mixtures (``val/reward/worst_case``, sampled completions scored by the world), with the worst-case loss and
the in-distribution reward beside it; each method's online−offline difference is paired by seed (same world, same
initial weights) with the package's t-interval (``rdpo_lightning.pareto.interval``): "pays" only when it clears 0.

    PYTHONPATH=$PWD python benchmarks/online.py                 # default size: see benchmarks/README.md
    PYTHONPATH=$PWD python benchmarks/online.py --tiny          # smoke test; writes to $TMPDIR/rdpo_lightning_tiny
    PYTHONPATH=$PWD python benchmarks/online.py --trl --completions 2   # adds DPO by TRL's OnlineDPOTrainer

A long run can be split over processes sharing ``--runs`` (``--train-seeds``; a fit already done there is kept).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: shift.py's helpers sit beside it

import shift  # noqa: E402

SCENARIOS = ("pair", "simplex")
MODES = ("offline", "online")
#: ``--trl``: DPO at α₀ trained by TRL's OnlineDPOTrainer (benchmarks/online_trl.py), evaluated as ours are
TRL = ("DPO", "trl")
METHODS = ("DPO", "Mean", "MixtureDRO")
#: what each run reports at its end: (name, logged tag, higher is better)
MEASURES = (
    ("worst-case reward", "val/reward/worst_case", True),
    ("in-distribution reward", "val/reward/{train}", True),
    ("worst-case loss", "val/worst_case/loss", False),
)


# --- the world of a scenario ---------------------------------------------------------------------------------------
def world_arguments(scenario: str) -> dict:
    """The DataModule's world and mixtures for a scenario."""
    from rdpo_lightning.data import AttributeWorld

    if scenario == "pair":
        return dict(world=AttributeWorld(), attribute_a="anger", attribute_b="fear", train_alpha=0.1,
                    val_alphas=[0.0, 0.25, 0.5, 0.75, 1.0])  # fmt: skip
    judged = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.5, 0.5, 0.0], [0.5, 0.0, 0.5], [0.0, 0.5, 0.5],
              [1 / 3, 1 / 3, 1 / 3]]  # fmt: skip
    return dict(world=AttributeWorld(attributes=("anger", "fear", "joy")), attribute_a=None, attribute_b=None,
                train_alpha=None, val_alphas=None, train_mixtures=[[0.8, 0.1, 0.1]], val_mixtures=judged)  # fmt: skip


def initial_policy(args: argparse.Namespace, scenario: str, seed: int, root: Path) -> Path:
    """The tokenizer of the scenario's world and a GPT-2 drawn at ``seed``, saved: both modes load this one."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from rdpo_lightning.data.tokenizer import load_tokenizer, save_word_tokenizer

    directory = root / "models" / f"{scenario}_seed{seed}"
    if not (directory / "config.json").exists():
        tokenizer = load_tokenizer(save_word_tokenizer(world_arguments(scenario)["world"].vocabulary(), directory))
        torch.manual_seed(seed)
        config = GPT2Config(
            vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, n_layer=args.layers, n_head=max(1, args.hidden // 16),
            n_embd=args.hidden, n_positions=64,
        )  # fmt: skip
        GPT2LMHeadModel(config).save_pretrained(directory)
        tokenizer.save_pretrained(directory)
    return directory


def make_robust(method: str, scenario: str, radius: float):
    import rdpo_lightning.robust as robust

    if method == "DPO":
        return robust.NoRobust()
    family = "simplex" if scenario == "simplex" else None
    aggregate = "mean" if method == "Mean" else "max"
    return robust.MixtureDRO(radius=radius, steps=4, family=family, label_temperature=None, aggregate=aggregate)


def make_datamodule(args: argparse.Namespace, scenario: str, mode: str, seed: int, model_dir: Path, cache: Path):
    from rdpo_lightning.data import AttributeWorldDataModule
    from rdpo_lightning.data.generate import SamplingConfig
    from rdpo_lightning.online import OnlineSampling, OnlineWorldDataModule

    common = dict(
        **world_arguments(scenario), num_train=args.num_train, num_val=args.num_val, seed=seed,
        batch_size=args.batch_size, val_batch_size=256, max_length=48, tokenizer_dir=str(model_dir),
        cache_dir=str(cache), label_temperature=None, pairing="best_vs_worst", responses_per_prompt=args.completions,
        response_policy=str(model_dir), sampling=SamplingConfig(max_new_tokens=args.gen_tokens, batch_size=64,
                                                                device="cuda" if args.accelerator == "gpu" else "cpu"),
    )  # fmt: skip
    if mode == "offline":
        return AttributeWorldDataModule(**common)
    generation = OnlineSampling(completions=args.completions, max_new_tokens=args.gen_tokens, batch_size=64)
    return OnlineWorldDataModule(**common, steps_per_round=1, generation=generation)


class Capture:
    """A Lightning logger that keeps what was logged in memory (the online rounds' seconds and the validation)."""

    def __new__(cls):
        from lightning.pytorch.loggers.logger import Logger

        class _Capture(Logger):
            def __init__(self) -> None:
                super().__init__()
                self.values: dict[str, list[tuple[int, float]]] = {}

            name = property(lambda self: "capture")
            version = property(lambda self: 0)

            def log_hyperparams(self, params, *args, **kwargs) -> None:
                pass

            def log_metrics(self, metrics, step=None) -> None:
                for key, value in metrics.items():
                    self.values.setdefault(key, []).append((step, float(value)))

        return _Capture()


def optimizer_steps(args: argparse.Namespace) -> int:
    """Every mode's optimizer steps: offline loses its tied pairs, so steps, not epochs, are made equal."""
    return args.epochs * args.num_train // args.batch_size


def evaluation(args: argparse.Namespace, seed: int) -> list:
    """The callbacks that judge a final policy (worst case over the judged mixtures, with generation)."""
    from rdpo_lightning.callbacks import GenerationEvaluation, WorstCaseEvaluation

    generation = GenerationEvaluation(
        num_prompts=args.gen_prompts, batch_size=args.gen_prompts, max_new_tokens=args.gen_tokens, seed=seed
    )
    return [WorstCaseEvaluation(generation=generation, plot_name=None, print_table=False)]


def measured(trainer, datamodule) -> dict:
    """:data:`MEASURES` as the last validation logged them."""
    train = datamodule.train_mixtures[0].name
    return {name: float(trainer.callback_metrics[tag.format(train=train)]) for name, tag, _ in MEASURES}


def fit_one(args: argparse.Namespace, scenario: str, method: str, mode: str, seed: int, root: Path) -> dict:
    """One fit, validated (with generation) at its end; returns what it measured and how long each part took."""
    import lightning as L
    import torch

    from rdpo_lightning.training.module import RobustDPO
    from rdpo_lightning.training.quiet import quiet_trainer

    model_dir = initial_policy(args, scenario, seed, root)
    cache = root / "cache"
    L.seed_everything(seed, verbose=False)
    datamodule = make_datamodule(args, scenario, mode, seed, model_dir, cache)
    started = time.perf_counter()
    datamodule.prepare_data()  # offline: the initial policy samples every training prompt's completions (cached)
    prepared = time.perf_counter() - started
    lr = args.lr
    module = RobustDPO(
        model=str(model_dir), beta=args.beta, warmup_steps=args.warmup_steps,
        optimizer=lambda params: torch.optim.AdamW(params, lr=lr, weight_decay=0.0),
        robust=make_robust(method, scenario, args.radius), reference_cache_dir=str(cache / "reference"),
    )  # fmt: skip
    logger = Capture()
    trainer = quiet_trainer(
        accelerator=args.accelerator, devices=1, max_steps=optimizer_steps(args), limit_val_batches=0, logger=logger,
        callbacks=evaluation(args, seed),
    )  # fmt: skip
    started = time.perf_counter()
    trainer.fit(module, datamodule)
    seconds = time.perf_counter() - started
    trainer.limit_val_batches = 1.0
    trainer.validate(module, datamodule, verbose=False)  # the final policy, with generation
    out = {"scenario": scenario, "method": method, "mode": mode, "seed": seed, "steps": trainer.global_step,
           "fit_seconds": seconds, "prepare_seconds": prepared, **measured(trainer, datamodule)}  # fmt: skip
    rounds = logger.values
    out["generation_seconds"] = sum(v for _, v in rounds.get("online/generation_seconds", []))
    out["generated_tokens"] = sum(v for _, v in rounds.get("online/generated_tokens", []))
    out["pairs"] = (
        sum(v for _, v in rounds.get("online/pairs", [])) if mode == "online" else len(datamodule.train_dataset)
    )
    out["ties"] = sum(v for _, v in rounds.get("online/ties", []))
    return out


def fit_trl(args: argparse.Namespace, scenario: str, seed: int, root: Path) -> dict:
    """DPO at α₀ by TRL's OnlineDPOTrainer from the same initial policy, prompts and steps as ``fit_one``'s online
    DPO; the saved policy judged by the same validation (against the initial policy as the loss's reference)."""
    import inspect

    import lightning as L
    from online_trl import train_trl  # beside this script; imported here: TRL is needed only with --trl

    from rdpo_lightning.rewards import AttributeWorldReward
    from rdpo_lightning.training.module import RobustDPO
    from rdpo_lightning.training.quiet import quiet_trainer

    model_dir = initial_policy(args, scenario, seed, root)
    cache = root / "cache"
    L.seed_everything(seed, verbose=False)
    datamodule = make_datamodule(args, scenario, "online", seed, model_dir, cache)
    started = time.perf_counter()
    datamodule.prepare_data()
    datamodule.setup("fit")  # the training prompts, and the validation sets ours are judged on
    prepared = time.perf_counter() - started
    trained = root / "models" / f"{scenario}_seed{seed}_trl"
    min_lr_ratio = inspect.signature(RobustDPO).parameters["min_lr_ratio"].default  # ours: fit_one leaves it
    run = train_trl(
        model_dir, trained, datamodule.train_prompts, AttributeWorldReward(datamodule.world),
        datamodule.train_mixtures[0], steps=optimizer_steps(args), batch_size=args.batch_size, lr=args.lr,
        beta=args.beta, warmup_steps=args.warmup_steps, min_lr_ratio=min_lr_ratio,
        max_new_tokens=args.gen_tokens, temperature=1.0, seed=seed,
    )  # fmt: skip
    module = RobustDPO(
        model=str(trained), reference=str(model_dir), beta=args.beta, robust=make_robust("DPO", scenario, 0)
    )
    trainer = quiet_trainer(accelerator=args.accelerator, devices=1, logger=False, callbacks=evaluation(args, seed))
    trainer.validate(module, datamodule, verbose=False)
    out = {"scenario": scenario, "method": "DPO", "mode": "trl", "seed": seed, "steps": run.steps,
           "fit_seconds": run.fit_seconds, "prepare_seconds": prepared, **measured(trainer, datamodule),
           "generation_seconds": run.generation_seconds, "generated_tokens": run.generated_tokens,
           "pairs": run.pairs, "ties": run.ties}  # fmt: skip
    return out


# --- judging -----------------------------------------------------------------------------------------------------
def difference(results: list[dict], scenario: str, method: str, measure: str, higher: bool, baseline: tuple) -> tuple:
    """Per seed, ``method`` online minus ``baseline`` (method, mode) on ``measure`` (sign: positive = better)."""
    from rdpo_lightning.pareto.interval import t_interval

    def value(m: str, mode: str, seed: int) -> float:
        found = [r[measure] for r in results if (r["scenario"], r["method"], r["mode"], r["seed"]) ==
                 (scenario, m, mode, seed)]  # fmt: skip
        return found[0] if found else math.nan

    seeds = sorted({r["seed"] for r in results if r["scenario"] == scenario})
    sign = 1 if higher else -1
    gaps = [sign * (value(method, "online", s) - value(*baseline, s)) for s in seeds]
    return gaps, t_interval(gaps)


def report(args: argparse.Namespace, results: list[dict], seconds: float) -> str:
    from rdpo_lightning.pareto.verdict import judge  # the package's rule: pays, loses, within seed noise, too few

    lines = [
        f"Online against offline{' (TINY smoke-test size)' if args.tiny else ''}: {args.seeds} seeds; "
        f"{args.num_train} training prompts x {args.completions} completions of up to {args.gen_tokens} tokens, "
        f"{args.epochs} epoch(s), batch {args.batch_size} pairs (online: a round per optimizer step), "
        f"{args.num_val} held-out prompts per mixture; GPT-2 {args.layers} layers d={args.hidden}, lr {args.lr:g}, "
        f"beta {args.beta:g}; Mean/MixtureDRO radius {args.radius:g}, hard labels; wall time {seconds / 60:.1f} min on "
        + (
            args.gpu_name
            if args.accelerator == "gpu"
            else f"{platform.machine()} with {os.cpu_count()} CPUs ({args.cpu_name})"
        )
    ]
    if args.trl:
        lines.append(
            f"DPO trl: TRL's OnlineDPOTrainer on CPU, same initial policy, prompts, steps, batch, lr schedule and beta;"
            f" it samples 2 completions per prompt (ours {args.completions}: --completions 2 for a like-for-like row)"
            f" and keeps tied pairs (the first sample chosen), where ours drops them"
        )
    for scenario in args.scenarios:
        rows = [r for r in results if r["scenario"] == scenario]
        if not rows:
            continue
        lines += ["", f"Scenario '{scenario}': final values (mean ± std over seeds)"]
        header = f"{'method':<12}{'mode':<9}" + "".join(f"{name:>26}" for name, _, _ in MEASURES)
        header += f"{'steps':>7}{'fit s':>9}{'gen s':>8}{'gen tok/s':>10}{'prep s':>8}"
        lines += [header, "-" * len(header)]
        for method, mode in fits(args):
            runs = [r for r in rows if (r["method"], r["mode"]) == (method, mode)]
            if not runs:
                continue
            row = f"{method:<12}{mode:<9}" + "".join(f"{shift.cell([r[n] for r in runs]):>26}" for n, _, _ in MEASURES)
            row += f"{runs[0]['steps']:>7}{sum(r['fit_seconds'] for r in runs) / len(runs):>9.1f}"
            row += f"{sum(r['generation_seconds'] for r in runs) / len(runs):>8.1f}"
            generated = sum(r["generated_tokens"] for r in runs)
            rate = generated / max(sum(r["generation_seconds"] for r in runs), 1e-9) if generated else math.nan
            row += f"{rate:>10.0f}"
            row += f"{sum(r['prepare_seconds'] for r in runs) / len(runs):>8.1f}"
            lines.append(row)
        comparisons = [(m, (m, "offline"), f"{m} online - {m} offline") for m in args.methods]
        if "DPO" in args.methods:
            comparisons += [(m, ("DPO", "online"), f"{m} online - DPO online") for m in args.methods if m != "DPO"]
            comparisons += [("DPO", TRL, "DPO online - DPO trl")] if args.trl else []
        for name, _, higher in MEASURES:
            lines += ["", f"Scenario '{scenario}', {name}: paired by seed (positive = better), 95% t-interval"]
            for method, baseline, label in comparisons:
                gaps, interval = difference(results, scenario, method, name, higher, baseline)
                per_seed = " ".join(f"{g:+.4f}" for g in gaps)
                lines.append(f"  {label:<40} {per_seed:<40} {interval.mean:+.4f} [{interval.low:+.4f}, "
                             f"{interval.high:+.4f}]  {judge(interval)}")  # fmt: skip
    return "\n".join(lines)


# --- command line --------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--scenarios", type=lambda t: [s for s in t.split(",") if s], default=list(SCENARIOS))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--methods", type=lambda t: [m for m in t.split(",") if m], default=list(METHODS))
    p.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--radius", type=float, default=0.9, help="Mean and MixtureDRO radius (0.9: every judged mixture)")
    p.add_argument("--num-train", type=int, default=2048, help="training prompts")
    p.add_argument("--num-val", type=int, default=128)
    p.add_argument("--completions", type=int, default=4, help="completions per prompt (both modes)")
    p.add_argument("--gen-tokens", type=int, default=12, help="new tokens per completion (both modes, and evaluation)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=10)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--gen-prompts", type=int, default=64, help="held-out prompts completed at the end")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cpu-name", default=None, help="named in the report (default: /proc/cpuinfo's model name)")
    p.add_argument("--out", type=Path, default=None, help="default benchmarks/results; --tiny: $TMPDIR/...")
    p.add_argument("--runs", type=Path, default=None, help="keep each fit's result here (default: temporary)")
    p.add_argument("--train-seeds", type=lambda t: [int(x) for x in t.split(",") if x], default=None,
                   help="fit only these seeds (default: all); fits in --runs are kept; '' only judges")  # fmt: skip
    p.add_argument("--trl", action="store_true", help="add DPO by TRL's OnlineDPOTrainer (it samples 2 completions a"
                   " prompt: --completions 2 to match)")  # fmt: skip
    p.add_argument("--tiny", action="store_true", help="smoke-test size: seconds per run; never writes results/")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        p.error(f"--scenarios: unknown {unknown}; choose from {SCENARIOS}")
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        p.error(f"--methods: unknown {unknown}; choose from {METHODS}")
    if args.cpu_name is None:
        from scale import machine  # beside this script

        args.cpu_name = machine()
    args.gpu_name = ""
    if args.accelerator == "gpu":
        import torch

        args.gpu_name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU found"
    if args.tiny:
        args.seeds, args.num_train, args.num_val, args.epochs, args.batch_size = 2, 16, 8, 1, 4
        args.layers, args.hidden, args.warmup_steps, args.gen_prompts, args.gen_tokens = 1, 32, 1, 4, 4
        args.completions = 2
    if args.seeds < 1 or args.completions < 2:
        p.error("--seeds must be >= 1 and --completions >= 2")
    if args.train_seeds is not None and args.runs is None:
        p.error("--train-seeds splits a run over processes that share --runs: give --runs")
    return args


def fits(args: argparse.Namespace) -> list[tuple[str, str]]:
    """Each (method, mode) a seed fits, in the report's order: every method in both modes, TRL's DPO after ours."""
    out = []
    for method in args.methods:
        out += [(method, mode) for mode in MODES] + ([TRL] if args.trl and method == TRL[0] else [])
    return out


def main(argv: list[str] | None = None) -> str:
    import torch

    args = parse_args(argv)
    args.out = shift.output_dir(args.out, args.tiny)
    torch.set_num_threads(args.threads)
    shift.silence_libraries()
    seeds = range(args.seeds) if args.train_seeds is None else args.train_seeds
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rdpo-online-") as scratch:
        root = args.runs or Path(scratch)
        plan = [(sc, m, mode, s) for s in seeds for sc in args.scenarios for m, mode in fits(args)]
        for done, (scenario, method, mode, seed) in enumerate(plan, start=1):
            path = root / "results" / f"{scenario}_{method}_{mode}_seed{seed}.json"
            if path.exists():
                continue
            if mode == "trl":
                result = fit_trl(args, scenario, seed, root)
            else:
                result = fit_one(args, scenario, method, mode, seed, root)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(result) + "\n")
            if not args.quiet:
                elapsed = time.perf_counter() - started
                print(f"[{done:>3}/{len(plan)}] {scenario} {method} {mode}, seed {seed}: {result['fit_seconds']:.1f} s"
                      f" (generation {result['generation_seconds']:.1f} s); elapsed {elapsed / 60:.1f} min",
                      file=sys.stderr, flush=True)  # fmt: skip
        wanted = [(sc, m, mode, s) for s in range(args.seeds) for sc in args.scenarios for m, mode in fits(args)]
        paths = [root / "results" / f"{sc}_{m}_{mode}_seed{s}.json" for sc, m, mode, s in wanted]
        missing = [p for p in paths if not p.exists()]
        if missing:
            print(f"{len(missing)} fits not yet done in {root}: judge when all are", file=sys.stderr)
            return ""
        results = [json.loads(p.read_text()) for p in paths]
    seconds = time.perf_counter() - started
    text = report(args, results, seconds)
    print(text, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "online.txt").write_text(text + "\n")
    (args.out / "online.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                      "runs": results}, indent=1) + "\n")  # fmt: skip
    if not args.quiet:
        print(f"wrote {args.out}/online.txt/.json", file=sys.stderr)
    return text


if __name__ == "__main__":
    main()
