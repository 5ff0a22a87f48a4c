"""The ``rdpo`` command: ``fit``, ``validate``, ``export``, ``pareto``.

A light entry point: it imports Lightning and torch (seconds) only for the commands that train or evaluate
(:mod:`rdpo_lightning.cli.lightning_cli`); ``rdpo --help``, ``rdpo export --help`` and ``rdpo pareto`` start at once.
"""

from __future__ import annotations

import sys
from typing import Any

from rdpo_lightning import __version__

HELP = """\
usage: rdpo <command> [options]

Distributionally robust preference optimisation (WDPO, KLDPO) on PyTorch Lightning.

commands:
  fit       train: rdpo fit -c configs/quickstart.yaml [-c configs/robust/kl.yaml] [--key=value ...]
  validate  per-mixture and worst-case metrics of a checkpoint: rdpo validate --ckpt_path X [-c config.yaml]
            (without -c, the configuration recorded in the checkpoint)
  export    a checkpoint as a Hugging Face model directory: rdpo export CHECKPOINT OUTPUT [--adapter-only]
  pareto    judge finished runs on the worst case against the training mixture: rdpo pareto --run NAME=DIR ...

Every command has its own --help (`rdpo fit --help` lists every key). Strategies and losses are chosen by class
path, short class name or the paper's name: --model.robust=KLDPO (KLReweighter), WDPO (WassersteinPenalty), DPO
(NoRobust); --model.pair_loss=DPO (SigmoidLoss), IPO, rDPO, RPO, SimPO.
"""

#: command -> (module, function) it runs; the module is imported only when the command runs
COMMANDS = {
    "fit": ("rdpo_lightning.cli.lightning_cli", "main"),
    "validate": ("rdpo_lightning.cli.lightning_cli", "main"),
    "export": ("rdpo_lightning.cli.export", "main"),
    "pareto": ("rdpo_lightning.pareto.report", "main"),
}
#: what Python callers imported from here before the heavy part moved (resolved lazily, see ``__getattr__``)
HEAVY_NAMES = ("RDPOCLI", "RDPOParser", "ConfigError", "innermost_cause", "config_key_of")


def main(args: list[str] | Any = None) -> Any:
    """``rdpo fit|validate ...`` in-process (``args`` as on the command line, or a config dict); returns the CLI
    object, whose ``trainer``, ``model`` and ``datamodule`` hold the run."""
    from rdpo_lightning.cli.lightning_cli import main as lightning_main  # start-up: Lightning only when it runs

    return lightning_main(args)


def run(argv: list[str] | None = None) -> None:
    """The ``rdpo`` console script: exit status 0 on success, 2 on a usage or configuration error."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else None
    if command in (None, "-h", "--help"):
        print(HELP, end="")
        if command is None:
            raise SystemExit(2)
        return
    if command == "--version":
        print(f"rdpo {__version__}")
        return
    if command not in COMMANDS:
        from rdpo_lightning.cli.errors import did_you_mean  # start-up: only on a mistake

        hint = did_you_mean(command, COMMANDS)
        print(f"rdpo: error: {command}: no such command{hint} (commands: {', '.join(COMMANDS)})", file=sys.stderr)
        raise SystemExit(2)
    if command in ("fit", "validate"):
        main(argv)
        return
    import importlib

    module, function = COMMANDS[command]
    getattr(importlib.import_module(module), function)(argv[1:])


def __getattr__(name: str) -> Any:
    if name in HEAVY_NAMES:
        from rdpo_lightning.cli import lightning_cli  # start-up: Lightning only when asked for

        return getattr(lightning_cli, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
