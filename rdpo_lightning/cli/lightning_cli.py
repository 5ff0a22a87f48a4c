"""``rdpo fit`` and ``rdpo validate``: Lightning's CLI over :class:`RobustDPO` and any :class:`PreferenceDataModule`.

Imported only by the commands that train or evaluate (``rdpo_lightning.cli`` dispatches): Lightning and torch take
seconds to import. What it adds to Lightning's CLI:

* every configuration mistake is one line, ``rdpo: error: <key>: <what is wrong>`` (:mod:`rdpo_lightning.cli.errors`),
  the paper's names work as class paths (:mod:`rdpo_lightning.cli.aliases`);
* ``validate`` prints the project's per-mixture table only (Lightning's result tables off), and ``validate
  --ckpt_path X`` without ``-c`` runs from the configuration the checkpoint records.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

from jsonargparse import ActionYesNo, Namespace
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from rdpo_lightning.callbacks import MetricsProgressBar
from rdpo_lightning.checkpoints.run_record import KEY
from rdpo_lightning.checks import constructor_parameters
from rdpo_lightning.cli import aliases, yaml_config
from rdpo_lightning.cli.errors import explain
from rdpo_lightning.cli.sources import value_sources, with_sources
from rdpo_lightning.data import PreferenceDataModule
from rdpo_lightning.errors import InputError
from rdpo_lightning.known_warnings import silence_library_noise, validating_a_checkpoint
from rdpo_lightning.training.guards import NonFiniteError
from rdpo_lightning.training.module import RobustDPO
from rdpo_lightning.training.resume import LIGHTNING_BOOKKEEPING

COMMANDS = ("fit", "validate")


class ConfigError(SystemExit):
    """A bad configuration value, reported as one line naming its YAML key instead of a traceback."""


def fail(line: str) -> NoReturn:
    print(f"rdpo: error: {line}", file=sys.stderr)
    raise ConfigError(2)


class RDPOParser(LightningArgumentParser):
    """Lightning's parser, reading YAML through :mod:`rdpo_lightning.cli.yaml_config` and reporting a mistake in one
    line (the usage only on ``--help``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("parser_mode", yaml_config.MODE)
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:  # jsonargparse parsing a nested value: it catches this itself
            super().error(message, ex)
        print(f"rdpo: error: {explain(message, self)}", file=sys.stderr)
        self.exit(2)


class RDPOCLI(LightningCLI):
    """``rdpo fit|validate -c config.yaml``; robust strategies and pair losses are chosen by ``class_path``."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """``fit`` and ``validate`` only: the module has no test or predict data of its own to run on."""
        return {name: commands for name, commands in LightningCLI.subcommands().items() if name in COMMANDS}

    def setup_parser(self, add_subcommands: bool, main_kwargs: dict[str, Any], subparser_kwargs: dict[str, Any]):
        main_kwargs.setdefault("prog", "rdpo")
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        if add_subcommands:  # the project's table replaces Lightning's (WorstCaseEvaluation prints it)
            self._subcommand_parsers["validate"].set_defaults(verbose=False)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """As Lightning's, with the paper's names resolved and ``validate --ckpt_path X`` completed from ``X``."""
        if isinstance(args, (dict, Namespace)):
            self.config = parser.parse_object(args)
            return
        argv = list(sys.argv[1:] if args is None else args)
        self._argv = config_from_checkpoint(aliases.resolve_argv(argv))
        self.config = parser.parse_args(self._argv)

    def _parse_ckpt_path(self) -> None:
        """With ``--ckpt_path``, the checkpoint's ``model.*`` hyper-parameters fill only what the command line and the
        ``-c`` files did not give.

        Lightning parses them *over* the configuration, so a moved base, a lower learning rate or a changed radius
        typed for the rest of a run was silently replaced by the checkpoint's. Here the keys the user gave (parsed
        without defaults) keep their values, the checkpoint fills the others, and the module says each difference
        from the checkpoint in one line (:class:`~rdpo_lightning.training.resume.ResumeCheck`)."""
        subcommand = self.config.get("subcommand")
        argv = getattr(self, "_argv", None)
        if not subcommand or argv is None:  # the CLI was given a dict or a Namespace: nothing was typed
            super()._parse_ckpt_path()
            return
        path = self.config[subcommand].get("ckpt_path")
        if not path or not Path(path).is_file():
            return
        hparams = checkpoint_hyperparameters(path)
        given = (self.parser.parse_args(argv, defaults=False).get(subcommand) or Namespace()).get("model")
        typed = {key.split(".", 1)[0] for key in given.keys()} if isinstance(given, Namespace) else set()
        fill = {key: value for key, value in hparams.items() if key not in typed}
        if fill:
            self.config = self.parser.parse_object({subcommand: {"model": fill}}, self.config)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--print_set",
            action=ActionYesNo,
            default=False,
            help="Print the robust strategy's uncertainty set (MixtureDRO's mixtures, built from the data's training"
            " mixture) and stop: nothing is trained, validated or written.",
        )

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        leave_loftq_unset(config.get("model"))
        self.print_set = bool(config.pop("print_set", False))  # a request, not part of the run's recorded config

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        """Lightning's Trainer, with :class:`MetricsProgressBar` as its progress bar unless the configuration
        names one or turns the bar off."""
        trainer = self._get(self.config_init, "trainer", default={})
        callbacks = trainer.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
        if trainer.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            trainer["callbacks"] = [*callbacks, MetricsProgressBar()]
        return super().instantiate_trainer(**kwargs)

    def validate(self, **kwargs: Any) -> Any:
        """``Trainer.validate``; the checkpoint callbacks, restored from the checkpoint, do not warn that this run
        logs to a new directory (validate writes no checkpoint)."""
        with validating_a_checkpoint():
            return self.trainer.validate(**kwargs)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, TypeError) as error:
            root = innermost_cause(error)
            config = self.config.get(self.subcommand) if self.subcommand else self.config
            line = key_and_message(*config_key_of(root, config), str(root))
            if "null clears" in line and getattr(self, "_argv", None):  # a stacked value: say which file set it
                line = with_sources(line, value_sources(self._argv))
            fail(line)
        if self.subcommand is not None:  # recorded in checkpoints, for the exported model's card
            self.model.run_config_yaml = self._parser(self.subcommand).dump(self.config[self.subcommand])

    def _run_subcommand(self, subcommand: str) -> None:
        """Bad input found once files are read (a missing model, adapter or data path, a missing column) and a
        configuration the Trainer's strategy cannot run are one line naming the YAML key, as bad configuration
        values are: printed once, by global rank 0, however many processes found it."""
        try:
            if getattr(self, "print_set", False):
                print(uncertainty_set_text(self.model.robust, self.datamodule))
                return
            super()._run_subcommand(subcommand)
        except ValueError as error:
            if not isinstance(error, InputError):
                raise
            if self.trainer.is_global_zero:
                print(f"rdpo: error: {error}", file=sys.stderr)
            raise ConfigError(2) from error


def uncertainty_set_text(robust: Any, datamodule: Any) -> str:
    """``--print_set``: the strategy's set, every member, resolved from the DataModule as the fit would resolve it."""
    robust.setup_data(datamodule)
    text = robust.uncertainty_set(full=True)
    if text is None:
        raise InputError(
            f"--print_set: model.robust ({type(robust).__name__}) takes its worst case over no list of mixtures to"
            " print; MixtureDRO (model.robust=MixtureDRO) has one"
        )
    return text


def leave_loftq_unset(model: Any) -> None:
    """jsonargparse fills a ``LoraConfig``'s ``loftq_config`` with LoftQ's defaults, which PEFT then warns it
    ignores (``loftq_config specified but will be ignored``): leave it out (PEFT's default, empty) unless LoftQ
    initialises the adapters."""
    peft = model.get("peft") if isinstance(model, Namespace) else None
    init_args = peft.get("init_args") if isinstance(peft, Namespace) else None
    if isinstance(init_args, Namespace) and init_args.get("init_lora_weights") != "loftq":
        if "loftq_config" in init_args:
            del init_args["loftq_config"]


def key_and_message(key: str | None, cls: type | None, message: str) -> str:
    """The message naming its full key: as it is where it starts with the key already (``model.beta must ...``),
    ``model.robust.tau must ...`` where it starts with an argument of the class at ``key``, else ``<key>: ...``."""
    if key is None or message.startswith((f"{key} ", f"{key}.", f"{key}:", f"{key}=", f"{key}[")):
        return message
    first = message.split(" ", 1)[0]
    if cls is not None and first in constructor_parameters(cls):
        return f"{key}.{message}"
    return f"{key}: {message}"


def config_from_checkpoint(argv: list[str]) -> list[str]:
    """``validate --ckpt_path X`` with no ``-c``: the run's YAML recorded in the checkpoint comes first, so the
    command needs nothing else; later arguments still override it."""
    if argv[:1] != ["validate"] or any(a in ("-c", "--config") or a.startswith("--config=") for a in argv):
        return argv
    if any(a in ("-h", "--help") or a.startswith("--print_config") for a in argv):
        return argv
    path = checkpoint_path(argv)
    if path is None:
        return argv
    if not Path(path).exists():
        fail(f"ckpt_path={path}: no such file or directory")
    recorded = recorded_config(path)
    if recorded is None:
        fail(f"ckpt_path={path}: the checkpoint records no configuration (not written by `rdpo fit`): give one with -c")
    return ["validate", "--config", recorded, *argv[1:]]


def read_checkpoint(path: str) -> dict[str, Any]:
    """The checkpoint's metadata (file or distributed-checkpoint directory), memory-mapped: its tensors are not read."""
    import torch

    file = Path(path) / "meta.pt" if Path(path).is_dir() else Path(path)
    try:
        return torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # not a checkpoint torch can read: the user's input, said in one line
        fail(f"ckpt_path={path}: not a readable checkpoint ({type(error).__name__}: {str(error).splitlines()[0]})")


def recorded_config(path: str) -> str | None:
    """The YAML configuration of the run that wrote the checkpoint."""
    return (read_checkpoint(path).get(KEY) or {}).get("config_yaml")


def checkpoint_hyperparameters(path: str) -> dict[str, Any]:
    """The module's hyper-parameters a checkpoint file holds (none of Lightning's bookkeeping keys)."""
    hparams = dict(read_checkpoint(path).get("hyper_parameters") or {})
    for bookkeeping in LIGHTNING_BOOKKEEPING:
        hparams.pop(bookkeeping, None)
    return hparams


def checkpoint_path(argv: list[str]) -> str | None:
    for i, argument in enumerate(argv):
        if argument.startswith("--ckpt_path="):
            return argument.split("=", 1)[1]
        if argument == "--ckpt_path" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def innermost_cause(error: BaseException) -> BaseException:
    """The error to report: the innermost cause, unless an :class:`InputError` comes first (its message is already
    written for the user, naming the key; what it wraps is the detail it explains)."""
    while error.__cause__ is not None and not isinstance(error, InputError):
        error = error.__cause__
    return error


def _class_paths(config: Any) -> Iterator[tuple[str, str]]:
    """(YAML key, class_path) for every ``class_path`` entry of a parsed (flattened-key) config."""
    items = config.items() if hasattr(config, "items") else []
    for key, value in items:
        key = str(key)
        if isinstance(value, str) and (key == "class_path" or key.endswith(".class_path")):
            yield key[: -len("class_path")].rstrip("."), value


def config_key_of(error: BaseException, config: Any) -> tuple[str | None, type | None]:
    """The YAML key whose class raised ``error`` in its ``__init__`` (``model`` for the module itself), and the
    class."""
    raising = None
    for frame, _ in traceback.walk_tb(error.__traceback__):
        if frame.f_code.co_name == "__init__" and "self" in frame.f_locals:
            raising = type(frame.f_locals["self"])
    if raising is None:
        return None, None
    if issubclass(raising, RobustDPO):
        return "model", raising
    wanted = f"{raising.__module__}.{raising.__qualname__}"
    for key, class_path in _class_paths(config):
        if class_path == wanted or class_path.rsplit(".", 1)[-1] == raising.__qualname__:
            return key.replace(".init_args", "") or None, raising
    return None, raising


def main(args: list[str] | dict | Namespace | None = None) -> RDPOCLI:
    import torch

    torch.set_float32_matmul_precision("high")
    silence_library_noise()
    try:
        return RDPOCLI(
            RobustDPO,
            PreferenceDataModule,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            parser_class=RDPOParser,
            args=args,
        )
    except NonFiniteError as error:  # a diverged run: say what happened and where the last good state is
        print(f"rdpo: error: {error}", file=sys.stderr)
        raise SystemExit(1) from error
