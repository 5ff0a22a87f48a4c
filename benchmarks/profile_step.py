"""Where a training step's time goes, ours against TRL's ``DPOTrainer``: ``torch.profiler`` over measured steps.

The issue that asked for it ("Fast where users train") measured our GPU step at 0.90x TRL's tokens/s with about two
thirds of it a fixed cost the code does not explain; this part of a GPU session comes first, and the rest is decided
from its table. Same model, pairs, order and settings as ``scale.py`` (whose preparation and fits it reuses: reference
log-probs precomputed on both sides, AdamW, padding-free batches on ours), each framework in a fresh process. Step 0
warms up; steps 1..``--steps`` are profiled (CPU activities, and CUDA's on a GPU), each inside a ``profiled step N``
range, and on a GPU under ``torch.cuda.set_sync_debug_mode("warn")``, so every host synchronisation is a warning
with the line that caused it. The report, per framework:

* wall time against GPU-busy time per step (the union of the step's kernel intervals): the fixed cost in plain view;
* the top kernels (on CPU: operators) by self time, which names the attention kernel that ran;
* time in the optimizer step (the profiler's own ``Optimizer.step`` range; on ours Lightning runs the forward and
  backward inside it, as its closure, so the update alone is the step less the closure), and on ours in the output
  layer, the non-finite guard and the clipping (ranges this script puts around the package's functions:
  :data:`REGIONS`);
* every host synchronisation, with its file and line, and how often it fired.

    python benchmarks/profile_step.py --gpu --shape llama-1b --batch-size 8 --output profile.md   # a GPU session
    python benchmarks/profile_step.py --tiny                                                     # CPU smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks import scale  # noqa: E402

CONFIGS = ("trl-dpo", "ours-dpo")
#: the package's functions timed as named ranges on our side: (module, attribute path, range name); a name that the
#: package no longer has is reported as not found, never silently dropped
REGIONS = (
    # looked up where they are called (a name imported into another module keeps the original)
    ("rdpo_lightning.models.fused_logprobs", "head_token_logps", "rdpo.output_layer"),
    ("rdpo_lightning.training.guards", "NonFiniteGuard.before_optimizer_step", "rdpo.nonfinite_guard"),
    ("rdpo_lightning.training.module", "clip_grad_norm", "rdpo.clip_grad_norm"),
    # Lightning runs the forward and backward inside ``optimizer.step(closure)``: the update alone is the difference
    ("lightning.pytorch.loops.optimization.automatic", "Closure.__call__", "rdpo.closure"),
)
TOP = 15


# --- the profiler, driven from either framework's step callbacks --------------------------------------------------
class StepProfiler:
    """Starts ``torch.profiler`` at step ``first``, stops it after step ``last``; wraps each step in a named range
    and, on a GPU, turns host-sync warnings on for the profiled steps and records them."""

    def __init__(self, cuda: bool, first: int, last: int) -> None:
        self.cuda, self.first, self.last = cuda, first, last
        self.step = -1
        self.walls: dict[int, float] = {}
        self.syncs: Counter[str] = Counter()
        self._profiler = None
        self._range = None
        self._warnings = None
        self._caught: list[warnings.WarningMessage] = []
        self._start = 0.0

    def _synchronize(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def begin(self) -> None:
        import torch

        self.step += 1
        if self.step == self.first:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if self.cuda:
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self._profiler = torch.profiler.profile(activities=activities)
            self._profiler.__enter__()
            if self.cuda:
                self._warnings = warnings.catch_warnings(record=True)
                self._caught = self._warnings.__enter__()
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
        if self.first <= self.step <= self.last:
            self._synchronize()
            self._range = torch.profiler.record_function(f"profiled step {self.step}")
            self._range.__enter__()
            self._start = time.perf_counter()

    def end(self) -> None:
        import torch

        if self._range is None:
            return
        self._synchronize()
        self.walls[self.step] = time.perf_counter() - self._start
        self._range.__exit__(None, None, None)
        self._range = None
        if self.step == self.last:
            if self.cuda:
                torch.cuda.set_sync_debug_mode("default")
                self._warnings.__exit__(None, None, None)
                self.syncs = Counter(
                    f"{Path(w.filename).name}:{w.lineno}" for w in self._caught if "synchroniz" in str(w.message)
                )
            self._profiler.__exit__(None, None, None)

    def lightning_callback(self):
        import lightning as L

        profiler = self

        class Profile(L.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
                profiler.begin()

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
                profiler.end()

        return Profile()

    def transformers_callback(self):
        from transformers import TrainerCallback

        profiler = self

        class Profile(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs) -> None:
                profiler.begin()

            def on_step_end(self, args, state, control, **kwargs) -> None:
                profiler.end()

        return Profile()

    # --- reading the trace ------------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        events = list(self._profiler.events()) if self._profiler is not None else []
        steps = {e.name: e for e in events if e.name.startswith("profiled step ")}
        device = [e for e in events if _on_device(e)]
        per_step = []
        for step, wall in sorted(self.walls.items()):
            window = steps.get(f"profiled step {step}")
            busy = None
            if self.cuda and window is not None:
                start, end = window.time_range.start, window.time_range.end
                busy = _union([(e.time_range.start, e.time_range.end) for e in device
                               if start <= e.time_range.start < end]) / 1e3  # fmt: skip
            per_step.append({"step": step, "wall_ms": wall * 1e3, "busy_ms": busy})
        return {
            "steps": per_step,
            "top": _top(self._profiler, self.cuda) if self._profiler is not None else [],
            "regions": _regions(events, len(self.walls)),
            "syncs": dict(self.syncs.most_common()),
            "cuda": self.cuda,
        }


def _on_device(event) -> bool:
    from torch.autograd import DeviceType

    return getattr(event, "device_type", None) == DeviceType.CUDA


def _union(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by the intervals (overlapping kernels on several streams count once)."""
    total, reach = 0.0, None
    for start, end in sorted(intervals):
        if reach is None or start > reach:
            total += end - start
            reach = end
        elif end > reach:
            total += end - reach
            reach = end
    return total


def _self_time(average, cuda: bool) -> float:
    """Self time in microseconds on the device (CUDA) or the CPU; named as this torch names it."""
    names = ("self_device_time_total", "self_cuda_time_total") if cuda else ("self_cpu_time_total",)
    return next(float(getattr(average, n)) for n in names if hasattr(average, n))


def _top(profiler, cuda: bool) -> list[dict[str, Any]]:
    averages = [a for a in profiler.key_averages() if not a.key.startswith("profiled step ")]
    if cuda:
        averages = [a for a in averages if _self_time(a, True) > 0]
    ranked = sorted(averages, key=lambda a: _self_time(a, cuda), reverse=True)[:TOP]
    total = sum(_self_time(a, cuda) for a in averages) or 1.0
    return [{"name": a.key, "calls": a.count, "ms": _self_time(a, cuda) / 1e3,
             "share": _self_time(a, cuda) / total} for a in ranked]  # fmt: skip


def _regions(events, steps: int) -> dict[str, dict[str, float]]:
    """Per step: CPU time (inclusive) and device time inside the optimizer step and the labelled ranges."""
    regions: dict[str, dict[str, float]] = {}
    for event in events:
        name = "optimizer step" if event.name.startswith("Optimizer.step#") else event.name
        if name != "optimizer step" and not name.startswith("rdpo."):
            continue
        entry = regions.setdefault(name, {"calls": 0, "cpu_ms": 0.0, "device_ms": 0.0})
        entry["calls"] += 1
        entry["cpu_ms"] += event.cpu_time_total / 1e3
        entry["device_ms"] += float(getattr(event, "device_time_total", 0.0) or 0.0) / 1e3
    for entry in regions.values():
        for key in ("calls", "cpu_ms", "device_ms"):
            entry[key] /= max(steps, 1)
    return regions


@contextlib.contextmanager
def labelled_regions():
    """The package's functions in :data:`REGIONS` wrapped in named ranges for the duration; yields the names not
    found (the package moved them: the report says so)."""
    import functools

    import torch

    undo, missing = [], []
    for module_name, path, label in REGIONS:
        owner = importlib.import_module(module_name)
        *parents, attribute = path.split(".")
        for parent in parents:
            owner = getattr(owner, parent, None)
        original = getattr(owner, attribute, None) if owner is not None else None
        if original is None:
            missing.append(f"{module_name}.{path}")
            continue

        def wrapped(*args, __original=original, __label=label, **kwargs):
            with torch.profiler.record_function(__label):
                return __original(*args, **kwargs)

        setattr(owner, attribute, functools.wraps(original)(wrapped))
        undo.append((owner, attribute, original))
    try:
        yield missing
    finally:
        for owner, attribute, original in reversed(undo):
            setattr(owner, attribute, original)


# --- one framework in its own process -----------------------------------------------------------------------------
def worker(name: str, settings: scale.Settings, paths: dict[str, str]) -> dict[str, Any]:
    from benchmarks.throughput import quiet_worker

    quiet_worker(settings.threads)
    profiler = StepProfiler(settings.device == "cuda", first=1, last=settings.steps)
    if name == "trl-dpo":
        scale.run_trl(settings, paths, callbacks=[profiler.transformers_callback()])
        missing: list[str] = []
    else:
        with labelled_regions() as missing:
            scale.run_ours(name, settings, paths, padding_free=True, callbacks=[profiler.lightning_callback()])
    return {**profiler.summary(), "missing_regions": missing}


# --- the report ---------------------------------------------------------------------------------------------------
def render(results: dict[str, dict[str, Any]], settings: scale.Settings, tiny: bool) -> str:
    cuda = settings.device == "cuda"
    lines = [
        "# Where a step's time goes: ours against TRL (torch.profiler)",
        "",
        scale.machine_line(settings, None),
        f"Shape: {settings.layers} layers, hidden {settings.hidden}, vocabulary {settings.vocab:,},"
        f" {settings.batch_size} pairs a step; steps 1..{settings.steps} profiled after a warm-up step.",
    ]
    if tiny:
        lines.append("A --tiny smoke run on CPU: not a published figure.")
    for name, result in results.items():
        lines += ["", f"## {name}", "", "| step | wall ms | GPU busy ms | busy % |", "| --- | --- | --- | --- |"]
        for row in result["steps"]:
            busy = "n/a (CPU)" if row["busy_ms"] is None else f"{row['busy_ms']:.1f}"
            share = "—" if row["busy_ms"] is None else f"{100 * row['busy_ms'] / row['wall_ms']:.0f}"
            lines.append(f"| {row['step']} | {row['wall_ms']:.1f} | {busy} | {share} |")
        kind = "kernels" if cuda else "operators"
        lines += ["", f"Top {kind} by self time (all profiled steps):", "", f"| {kind[:-1]} | calls | ms | share |",
                  "| --- | --- | --- | --- |"]  # fmt: skip
        for top in result["top"]:
            lines.append(f"| `{top['name'][:90]}` | {top['calls']} | {top['ms']:.2f} | {100 * top['share']:.1f} % |")
        lines += ["", "Regions, per step:", "", "| region | calls | CPU ms (inclusive) | device ms |",
                  "| --- | --- | --- | --- |"]  # fmt: skip
        regions = dict(result["regions"])
        if "rdpo.closure" in regions and "optimizer step" in regions:  # the update without forward and backward
            step, closure = regions["optimizer step"], regions["rdpo.closure"]
            regions["optimizer update alone (step - closure)"] = {
                "calls": step["calls"],
                **{k: step[k] - closure[k] for k in ("cpu_ms", "device_ms")},
            }
        for region, entry in sorted(regions.items()):
            lines.append(f"| {region} | {entry['calls']:.1f} | {entry['cpu_ms']:.2f} | {entry['device_ms']:.2f} |")
        if result["missing_regions"]:
            lines.append(f"\nNot found in the package (not timed): {', '.join(result['missing_regions'])}.")
        if not cuda:
            lines.append("\nHost synchronisations: counted on a GPU only (`set_sync_debug_mode`).")
        elif result["syncs"]:
            lines += ["", "Host synchronisations in the profiled steps:", "", "| where | count |", "| --- | --- |"]
            lines += [f"| `{where}` | {count} |" for where, count in result["syncs"].items()]
        else:
            lines.append("\nHost synchronisations in the profiled steps: none.")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    scale.add_common_arguments(parser)
    parser.add_argument("--lengths", default="long_tailed", choices=["long_tailed", "equal"])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=2, help="profiled steps (after one warm-up)")
    parser.add_argument("--batch-size", type=int, default=None, help="pairs per step")
    scale.add_gpu_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    if args.worker is not None:
        spec = json.loads(args.worker)
        result = worker(spec["name"], scale.Settings(**spec["settings"]), spec["paths"])
        Path(spec["out"]).write_text(json.dumps(result))
        return ""
    settings, _ = scale.gpu_settings(args, scale.TINY if args.tiny else scale.Settings())
    settings = replace(settings, steps=args.steps)
    if args.batch_size is not None:
        settings = replace(settings, batch_size=args.batch_size)
    results = {}
    with tempfile.TemporaryDirectory(prefix="rdpo-profile-") as tmp:
        paths = scale.prepare(Path(tmp), settings, args.lengths)
        for name in args.configs:
            out = Path(tmp) / f"{name}.json"
            spec = {"name": name, "settings": asdict(settings), "paths": paths, "out": str(out)}
            results[name] = scale.launch_worker(__file__, spec, settings.threads)
            print(f"  {name}: profiled {len(results[name]['steps'])} steps", file=sys.stderr, flush=True)
    return scale.publish(render(results, settings, args.tiny), args.output)


if __name__ == "__main__":
    main()
