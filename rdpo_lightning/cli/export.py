"""``rdpo export CHECKPOINT OUTPUT``: the command line of
:func:`rdpo_lightning.checkpoints.export.export_checkpoint`, parsed before torch is imported, so ``rdpo export --help``
and a mistyped option answer at once."""

from __future__ import annotations

import argparse
import sys

from rdpo_lightning.errors import InputError


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rdpo export",
        description="Write a RobustDPO checkpoint (any strategy) as a Hugging Face model directory.",
    )
    parser.add_argument("checkpoint", help="a .ckpt file or a distributed-checkpoint directory (FSDP)")
    parser.add_argument("output", help="the directory to write (save_pretrained layout)")
    parser.add_argument("--adapter-only", action="store_true", help="write the adapter only (PEFT), not merged")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    parser.add_argument(
        "--base", help="an adapter-only checkpoint's base model, where it lies now (default: its recorded model.model)"
    )
    return parser


def main(argv: list[str]) -> None:
    """``rdpo export CHECKPOINT OUTPUT [--adapter-only] [--overwrite] [--base DIR]``."""
    args = parser().parse_args(argv)
    # imported after parsing, for start-up: `rdpo export --help` answers before torch is imported
    from rdpo_lightning.checkpoints.export import export_checkpoint

    try:
        written = export_checkpoint(args.checkpoint, args.output, args.adapter_only, args.overwrite, args.base)
    except InputError as error:
        print(f"rdpo export: error: {error}", file=sys.stderr)
        raise SystemExit(2) from error
    print(f"rdpo export: wrote {written}")
