"""DDP and FSDP2 on 2 gloo processes give the parameter update of a single-process full-batch step.

One SGD step (lr=1, float64, no momentum) so the parameter delta is exactly −(gradient of the objective). The
distributed cases run in one subprocess launch of ``_strategy_steps.py`` (Lightning re-executes it for rank 1); each
rank sees half of the 8-pair batch. The single-process runs see all 8 pairs in one batch. Tolerance: 1e-12 absolute on
every parameter delta (float64; the deltas are O(0.1-1), observed errors ~1e-16, ~1e-14 for the small-ε finite
difference). The reference model differs from the initial policy so pair losses, hence KL weights, are not uniform.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
SCRIPT = HERE / "_strategy_steps.py"

DISTRIBUTED_CASES = [
    "fsdp2:none",
    "fsdp2:kl",
    "fsdp2:kl+clip",
    "fsdp2:wdpo_fd",
    "fsdp2:wdpo_fd_eps",
    "fsdp2:wdpo_fd+ac",
    "fsdp2:wdpo_fd+pf",
    "ddp:none",
    "ddp:kl",
    "ddp:wdpo_fd",
    "ddp:wdpo_exact",
    "ddp:wdpo_exact+pf",
    "fsdp2:mixture_dro",
    "ddp:mixture_dro",
]
#: LoRA adapters, every objective the issue names: the reference is the policy's base, computed through the strategy
#: (cached, or every step); GroupDRO draws its pairs from two training mixtures (its groups)
LORA_CASES = [
    "fsdp2:none+lora+save",
    "fsdp2:wdpo_fd+lora+resident",
    "fsdp2:dr_dpo+lora",
    "fsdp2:group_dro+lora+resident",
    "ddp:kl+lora",
    "ddp:wdpo_exact+lora+resident",
    "ddp:dr_dpo+lora+resident",
    "ddp:group_dro+lora",
]
#: the same 8-pair optimizer batch as 2 micro-batches of 2 per rank (model.accumulate_grad_batches: 2), every
#: strategy once under each of DDP and FSDP2 between them, with LoRA and padding-free batches
ACCUMULATION_CASES = [
    "fsdp2:kl+acc2",
    "fsdp2:cvar+acc2",
    "fsdp2:group_dro+acc2+pf",
    "fsdp2:wdpo_fd+acc2",
    "fsdp2:dr_dpo+lora+acc2",
    "ddp:none+acc2+pf",
    "ddp:kl_clamped+acc2",
    "ddp:chi_square+acc2",
    "ddp:dr_dpo+acc2",
    "ddp:group_dro+lora+acc2",
    "ddp:wdpo_exact+acc2",
    # 1 pair per micro-batch: the one-pass route's running maximum grows within the window, and its rescaling must
    # reach FSDP2's root group (embeddings, final norm), whose sharded gradients the module hides after its forward
    "fsdp2:kl+acc4",
    "ddp:mixture_dro+acc2",
    "fsdp2:mixture_dro+acc2+pf",
]
REFUSED = "fsdp2:wdpo_exact"  # refused: last, so a failing rank cannot disturb the others
DISTRIBUTED_CASES = [*DISTRIBUTED_CASES, *LORA_CASES, *ACCUMULATION_CASES, REFUSED]

ATOL = 1e-12
OBJECTIVES = ("none", "kl", "wdpo_fd", "wdpo_exact")
LORA_OBJECTIVES = (*OBJECTIVES, "dr_dpo", "group_dro")  # GroupDRO's groups: two training mixtures
SINGLE_CASES = [
    *OBJECTIVES,
    "kl+clip",
    "wdpo_fd_eps",
    *(f"{r}+lora" for r in LORA_OBJECTIVES),
    *("kl_clamped", "cvar", "chi_square", "dr_dpo", "group_dro", "mixture_dro"),  # the accumulation cases' full batches
]


def _load_script():
    spec = importlib.util.spec_from_file_location("_strategy_steps", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def distributed_runs(tmp_path_factory, tiny_model_dir: Path, tiny_reference_dir: Path) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("distributed_steps")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(SCRIPT), str(tiny_model_dir), str(tiny_reference_dir), str(out), *DISTRIBUTED_CASES]
    done = subprocess.run(command, env=env, cwd=out, capture_output=True, text=True, timeout=300)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    return out, log


@pytest.fixture(scope="module")
def single_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("single_cache")


@pytest.fixture(scope="module")
def single_runs(single_cache, tiny_model_dir: Path, tiny_reference_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    import datasets

    datasets.disable_progress_bars()
    script = _load_script()
    runs = SingleRuns()
    for robust in SINGLE_CASES:
        case = f"single:{robust}" + ("+save" if robust == "none+lora" else "")
        params, refusal = script.run_case(case, str(tiny_model_dir), str(tiny_reference_dir), str(single_cache))
        assert refusal is None, refusal
        runs[robust], runs.logged[robust] = params, script.LOGGED[case]
    return runs


class SingleRuns(dict):
    """Parameters after the step by case; ``logged``: what each fit logged."""

    def __init__(self) -> None:
        super().__init__()
        self.logged: dict[str, dict[str, float]] = {}


def _deltas(params: dict[str, torch.Tensor], model_dir: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    initial = dict(AutoModelForCausalLM.from_pretrained(model_dir).named_parameters())
    assert params.keys() == initial.keys()
    return {name: params[name] - initial[name].detach().double() for name in params}


@pytest.mark.parametrize(
    "case", [c for c in DISTRIBUTED_CASES if c != REFUSED and c not in LORA_CASES + ACCUMULATION_CASES]
)
def test_distributed_step_equals_single_process_full_batch(case, distributed_runs, single_runs, tiny_model_dir):
    out, _ = distributed_runs
    # activation checkpointing and padding-free batches must not change the update
    robust = case.split(":")[1].replace("+ac", "").replace("+pf", "")
    got = _deltas(torch.load(out / f"{case}.pt"), tiny_model_dir)
    want = _deltas(single_runs[robust], tiny_model_dir)
    size = sum(d.pow(2).sum() for d in want.values()).sqrt()
    assert size > 0.04  # a real update (0.05 is the clipped norm)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=ATOL, msg=f"{case}: {name}")


@pytest.mark.parametrize("case", ["none+full", "wdpo_exact+full", "wdpo_fd+pf", "wdpo_exact+pf", "kl+pf"])
def test_full_logits_and_padding_free_single_steps_equal_the_default(
    case, single_runs, tiny_model_dir, tiny_reference_dir, tmp_path
):
    """The default (fused log-probs, padded batches) against the full-logits path and against packed batches."""
    script = _load_script()
    params, refusal = script.run_case(f"single:{case}", str(tiny_model_dir), str(tiny_reference_dir), str(tmp_path))
    assert refusal is None, refusal
    got = _deltas(params, tiny_model_dir)
    want = _deltas(single_runs[case.split("+")[0]], tiny_model_dir)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=ATOL, msg=f"{case}: {name}")


@pytest.mark.parametrize("case", ACCUMULATION_CASES)
def test_distributed_accumulation_equals_single_process_full_batch(case, distributed_runs, single_runs):
    """Micro-batches × ranks form the objective over the optimizer's batch: the update (and the logged robust
    metrics) of the single process's one batch of 8."""
    import json

    out, _ = distributed_runs
    flags = [f for f in case.split(":")[1].split("+") if not f.startswith("acc") and f != "pf"]
    got, want = torch.load(out / f"{case}.pt"), single_runs["+".join(flags)]
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=ATOL, msg=f"{case}: {name}")
    logged = json.loads((out / f"{case}.json").read_text())
    assert any(name.startswith("train/robust/") for name in logged) or flags[0] in ("none",)
    assert logged["train/loss"] == pytest.approx(single_runs.logged["+".join(flags)]["train/loss"], rel=1e-9)


def test_the_fused_path_ran_under_every_strategy(distributed_runs):
    _, log = distributed_runs
    assert "full-logits path" not in log


@pytest.mark.parametrize("case", LORA_CASES)
def test_distributed_lora_step_equals_single_process_full_batch(case, distributed_runs, single_runs, tiny_model_dir):
    """Adapters only train (the base stays bitwise at its initial value), and their update is the single-process one;
    a resident reference (the base, every step, through the sharded or wrapped policy) changes nothing."""
    from transformers import AutoModelForCausalLM

    out, _ = distributed_runs
    flags = [f for f in case.split(":")[1].split("+") if f not in ("resident", "save")]
    got, want = torch.load(out / f"{case}.pt"), single_runs["+".join(flags)]
    assert got.keys() == want.keys()
    base = dict(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64).named_parameters())
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=ATOL, msg=f"{case}: {name}")
        if "lora_" not in name:
            assert torch.equal(got[name], base[name.replace("base_model.model.", "").replace(".base_layer", "")])


def test_lora_updates_differ_between_objectives(single_runs):
    """Guards the LoRA comparisons above: the step moved the adapters, differently for each objective."""
    plain = single_runs["none+lora"]
    for robust in LORA_OBJECTIVES[1:]:
        other = single_runs[f"{robust}+lora"]
        # GroupDRO's first step is close to the plain mean (its weights start uniform): ~3e-4, still 1e8 x ATOL
        assert max((other[n] - plain[n]).abs().max() for n in plain if "lora_" in n) > 1e-4, robust


def test_fsdp2_distributed_checkpoint_exports_like_a_single_file_checkpoint(
    distributed_runs, single_runs, single_cache, tmp_path
):
    """The FSDP2 run's checkpoint is a distributed-checkpoint directory; its export (merged) equals the export of the
    single-process run's file checkpoint, whose round trip tests/checkpoints/test_export.py checks."""
    from safetensors.torch import load_file

    from rdpo_lightning.checkpoints.export import export_checkpoint

    out, _ = distributed_runs
    sharded = out / "cache-fsdp2" / "fsdp2:none+lora+save.ckpt"
    assert sharded.is_dir() and (sharded / "meta.pt").is_file()
    exported = export_checkpoint(sharded, tmp_path / "from_fsdp2")
    single = export_checkpoint(single_cache / "single:none+lora+save.ckpt", tmp_path / "from_single")
    got, want = load_file(exported / "model.safetensors"), load_file(single / "model.safetensors")
    assert got.keys() == want.keys() and not any("lora" in k for k in got)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=ATOL, msg=name)
    assert "FSDP2Strategy" in (exported / "README.md").read_text()


def test_robust_strategies_change_the_update(single_runs, tiny_model_dir):
    """Guards the comparisons above: each robust objective moves the parameters differently from plain DPO."""
    plain = _deltas(single_runs["none"], tiny_model_dir)
    for robust in ("kl", "wdpo_fd", "wdpo_exact", "mixture_dro"):
        other = _deltas(single_runs[robust], tiny_model_dir)
        assert max((other[n] - plain[n]).abs().max() for n in plain) > 1e-3, robust


def test_exact_wasserstein_is_refused_under_fsdp2(distributed_runs):
    out, _ = distributed_runs
    assert not (out / "fsdp2:wdpo_exact.pt").exists()
    message = (out / "fsdp2:wdpo_exact.err").read_text()
    assert "mode='exact' cannot run under FSDP" in message
    assert "double backward" in message and "finite_difference" in message and "FSDP2Strategy" in message


def test_reference_logps_precomputed_once_per_strategy_then_reused(distributed_runs):
    """Each strategy's first case computes the reference log-probs (rows sharded over both ranks, through the FSDP2
    policy or the DDP wrapper); every later case loads them. The updates above show the values are right."""
    _, log = distributed_runs
    train = r"reference log-probs of split 'train' \(8 rows\) of (the initial policy|the reference model \S+|the base"
    train += r" model \(adapters off\)) \(weights [0-9a-f]{12}\): "
    computed = len(re.findall(train + "computed and saved", log))
    loaded = len(re.findall(train + "loaded from cache", log))
    # the reference model, and the LoRA runs' base, once per strategy; GroupDRO's pairs (other mixtures) once more
    # per strategy
    cached = [c for c in DISTRIBUTED_CASES if "resident" not in c and c != REFUSED]
    firsts = {"fsdp2:none", "ddp:none", "fsdp2:none+lora+save", "ddp:kl+lora", "ddp:group_dro+lora"}
    firsts.add("fsdp2:group_dro+acc2+pf")  # GroupDRO's pairs under FSDP2 with a precomputed reference
    assert computed == len(firsts)
    assert loaded == len(cached) - len(firsts)
