"""Checkpoint size of a LoRA run: adapter-only (the default) against a checkpoint that holds the frozen base too.

The model and adapters of ``benchmarks/lora.py``: a Llama-style model (default 8 layers, d=768, 12 heads, MLP 2048,
vocabulary 32,000, untied output layer: 106 M parameters) saved with ``save_pretrained`` and loaded by
``from_pretrained``, LoRA r=16 on every linear layer but the output layer (PEFT's ``all-linear``), AdamW. One
training step each way (``model.adapter_only_checkpoints`` default, then ``false``), then
``trainer.save_checkpoint``; reported: the file sizes, the policy tensors each holds, and what the adapters and
their two AdamW moments weigh by count (trainable parameters x 4 bytes x 3), which the adapter-only file should be
close to. Also the time the base's weights digest takes (computed once per LoRA run, before training).

    python benchmarks/checkpoint_size.py                    # default size: about a minute on 2 idle CPU cores
    python benchmarks/checkpoint_size.py --tiny --out t.md  # seconds; what the test runs (never writes results/)
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `benchmarks.lora`

from benchmarks.lora import TINY, Settings, cpu_name, lora_config, prepare  # noqa: E402
from benchmarks.throughput import time_our_fit  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "checkpoint_size.md"
MB = 1e6


def measure(settings: Settings, workdir: Path) -> dict[str, float]:
    import torch

    from rdpo_lightning.models.adapters import base_state
    from rdpo_lightning.models.digest import weights_digest

    paths = prepare(workdir, settings)
    out: dict[str, float] = {"parameters": int(paths["parameters"])}
    for label, setting in (("adapter_only", None), ("full", False)):
        _, module = time_our_fit(settings, paths, peft=lora_config(settings), adapter_only_checkpoints=setting)
        path = workdir / f"{label}.ckpt"
        module.trainer.save_checkpoint(path)
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)["state_dict"]
        out[f"{label}_file"] = path.stat().st_size
        out[f"{label}_tensors"] = sum(t.numel() * t.element_size() for t in state.values())
        out["trainable"] = sum(p.numel() for p in module.policy.parameters() if p.requires_grad)
        if label == "adapter_only":
            start = time.perf_counter()
            weights_digest(base_state(module.policy))
            out["digest_seconds"] = time.perf_counter() - start
        path.unlink()
    return out


def render(result: dict[str, float], settings: Settings) -> str:
    expected = result["trainable"] * 4 * 3  # float32 adapters + AdamW's exp_avg and exp_avg_sq
    rows = [
        ("adapter-only (default)", result["adapter_only_file"], result["adapter_only_tensors"]),
        ("with the frozen base (`adapter_only_checkpoints: false`)", result["full_file"], result["full_tensors"]),
    ]
    lines = [
        f"Llama-style model, {result['parameters']:,} parameters ({settings.layers} layers, d={settings.hidden},"
        f" {settings.heads} heads, MLP {settings.intermediate}, vocabulary {settings.vocab}, untied), LoRA"
        f" r={settings.rank} all-linear: {result['trainable']:,} trainable; float32, AdamW, one step."
        f" CPU: {cpu_name()}.",
        "",
        "| checkpoint | file (MB) | policy tensors (MB) |",
        "|---|---|---|",
        *(f"| {name} | {file / MB:.2f} | {tensors / MB:.2f} |" for name, file, tensors in rows),
        "",
        f"- adapter-only / with base: {result['adapter_only_file'] / result['full_file']:.4f}"
        f" ({result['full_file'] / result['adapter_only_file']:.0f}x smaller)",
        f"- adapters + AdamW moments by count (trainable x 4 B x 3): {expected / MB:.1f} MB",
        f"- weights digest of the base (once per LoRA run, before training): {result['digest_seconds']:.2f} s",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny model: seconds (for the test)")
    parser.add_argument("--out", type=Path, help=f"where to write the table (default {RESULTS}; never with --tiny)")
    args = parser.parse_args(argv)
    settings = TINY if args.tiny else Settings()
    settings = dataclasses.replace(settings, steps=1, warmup=0, batch_size=1)
    with tempfile.TemporaryDirectory() as directory:
        table = render(measure(settings, Path(directory)), settings)
    out = args.out if args.out is not None else (None if args.tiny else RESULTS)
    if out is not None:
        out.write_text(table)
    print(table, end="")
    return table


if __name__ == "__main__":
    main()
