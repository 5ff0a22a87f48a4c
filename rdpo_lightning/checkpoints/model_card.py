"""The model card (``README.md``) of an exported model: how it was trained and how it did across mixtures."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

METRIC_ORDER = ("loss", "accuracy", "margin", "reward")


def model_card(record: dict[str, Any], meta: dict[str, Any], checkpoint: Path, adapter_only: bool) -> str:
    """Markdown with Hub metadata: objective, β, strategy, mixtures, the checkpoint's validation metrics, config."""
    hparams = meta.get("hyper_parameters") or {}
    objective = record.get("objective") or {}
    robust = objective.get("robust") or {}
    pair_loss = objective.get("pair_loss") or {}
    base = hparams.get("model")
    lines = ["---", "library_name: " + ("peft" if adapter_only else "transformers")]
    if base and not Path(str(base)).expanduser().exists():
        lines.append(f"base_model: {base}")  # a Hub name; a local path means nothing on the Hub
    lines += ["tags:", "- rdpo-lightning", "- dpo", "- robust-dpo"]
    if record.get("adapter_config"):
        lines.append("- lora" if record["adapter_config"].get("peft_type") == "LORA" else "- peft")
    lines += ["---", "", f"# {_short(robust.get('class_path', 'RobustDPO'))} model trained with rdpo-lightning", ""]
    form = (
        "a PEFT adapter"
        if adapter_only
        else "full weights" + (" (adapters merged)" if record["adapter_config"] else "")
    )
    lines += [f"Exported from `{checkpoint.name}` (step {record.get('global_step')}) as {form}.", ""]
    lines += ["## Objective", ""]
    lines.append(f"- robust strategy: `{robust.get('class_path')}` {_args(robust)}")
    lines.append(f"- pair loss: `{pair_loss.get('class_path')}` {_args(pair_loss)}")
    lines.append(f"- beta: {objective.get('beta')}")
    lines.append(f"- base model: `{base if base else 'built from model.model_config'}`")
    if record.get("adapter_config"):
        adapter = record["adapter_config"]
        keys = ("peft_type", "r", "lora_alpha", "lora_dropout", "target_modules", "modules_to_save")
        lines.append("- adapter: " + ", ".join(f"{k}={adapter.get(k)}" for k in keys if k in adapter))
    lines.append("")
    strategy = record.get("strategy") or {}
    lines += ["## Training", ""]
    lines += [f"- {k.replace('_', ' ')}: {v}" for k, v in strategy.items()]
    shown = ("lr", "warmup_steps", "min_lr_ratio", "gradient_clip_val", "torch_dtype", "precompute_reference")
    lines += [f"- {k}: {hparams[k]}" for k in shown if k in hparams]
    lines.append("")
    data = record.get("data")
    if data:
        lines += ["## Data: training and validation mixtures", ""]
        lines.append(f"- DataModule: `{data.get('class_path')}` {_args(data)}")
        lines.append(f"- validation sets: {', '.join(data.get('validation_sets') or []) or 'none'}")
        lines.append("")
    lines += _validation(record.get("validation"))
    if record.get("config_yaml"):
        lines += ["## Configuration", "", "<details><summary>the run's YAML (rdpo fit)</summary>", "", "```yaml"]
        lines += [record["config_yaml"].rstrip(), "```", "", "</details>", ""]
    lines += _usage(adapter_only, base)
    return "\n".join(lines) + "\n"


def _short(class_path: str) -> str:
    return class_path.rsplit(".", 1)[-1]


def _args(spec: dict[str, Any]) -> str:
    arguments = spec.get("init_args") or {}
    return "(" + ", ".join(f"{k}={json.dumps(v)}" for k, v in arguments.items()) + ")" if arguments else ""


def _validation(validation: dict[str, Any] | None) -> list[str]:
    lines = ["## Validation metrics of this checkpoint", ""]
    if not validation:
        return lines + ["No validation pass preceded this checkpoint (or no WorstCaseEvaluation callback ran).", ""]
    mixtures = validation["mixtures"]
    metrics = [m for m in METRIC_ORDER if any(m in row for row in mixtures)]
    lines.append(f"From the validation pass at step {validation['step']}; the first row is the training distribution.")
    lines += ["", "| mixture | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for row in mixtures:
        cells = [_number(row.get(m)) for m in metrics]
        lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    worst = validation.get("worst_case") or {}
    if worst:
        lines.append("")
        for metric, found in worst.items():
            lines.append(f"- worst-case {metric}: {_number(found['value'])} (at {found['mixture']})")
    return lines + [""]


def _number(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.4f}"


def _usage(adapter_only: bool, base: Any) -> list[str]:
    lines = ["## Use", "", "```python"]
    if adapter_only:
        lines += [
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f'base = AutoModelForCausalLM.from_pretrained("{base}")',
            'model = PeftModel.from_pretrained(base, "path/to/this/directory")',
        ]
    else:
        lines += [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            'model = AutoModelForCausalLM.from_pretrained("path/to/this/directory")',
        ]
    lines += ['tokenizer = AutoTokenizer.from_pretrained("path/to/this/directory")', "```", ""]
    lines += ["Publish with `huggingface-cli upload <user>/<name> path/to/this/directory`.", ""]
    return lines
