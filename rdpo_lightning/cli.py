"""The ``rdpo`` command: Lightning's CLI over :class:`RobustDPO` and any :class:`PreferenceDataModule`, plus
``rdpo export`` (a checkpoint to a Hugging Face model directory)."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Iterator
from typing import Any

from lightning.pytorch.cli import LightningCLI

from rdpo_lightning.data import PreferenceDataModule
from rdpo_lightning.errors import InputError
from rdpo_lightning.guards import NonFiniteError
from rdpo_lightning.module import RobustDPO


class ConfigError(SystemExit):
    """A bad configuration value, reported as one line naming its YAML key instead of a traceback."""


class RDPOCLI(LightningCLI):
    """``rdpo fit|validate|test -c config.yaml``; robust strategies and pair losses are chosen by ``class_path``."""

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, TypeError) as error:
            root = innermost_cause(error)
            config = self.config.get(self.subcommand) if self.subcommand else self.config
            where = config_key_of(root, config)
            message = f"rdpo: error: invalid configuration{f' at {where}' if where else ''}: {root}"
            print(message, file=sys.stderr)
            raise ConfigError(2) from error
        if self.subcommand is not None:  # recorded in checkpoints, for the exported model's card
            self.model.run_config_yaml = self._parser(self.subcommand).dump(self.config[self.subcommand])

    def _run_subcommand(self, subcommand: str) -> None:
        """Bad input found once files are read (a missing model, adapter or data path, a missing column) and a
        configuration the Trainer's strategy cannot run are one line naming the YAML key, as bad configuration
        values are: printed once, by global rank 0, however many processes found it."""
        try:
            super()._run_subcommand(subcommand)
        except ValueError as error:
            if not isinstance(error, InputError):
                raise
            if self.trainer.is_global_zero:
                print(f"rdpo: error: {error}", file=sys.stderr)
            raise ConfigError(2) from error


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


def config_key_of(error: BaseException, config: Any) -> str | None:
    """The YAML key whose class raised ``error`` in its ``__init__`` (``model`` for the module itself)."""
    raising = None
    for frame, _ in traceback.walk_tb(error.__traceback__):
        if frame.f_code.co_name == "__init__" and "self" in frame.f_locals:
            raising = type(frame.f_locals["self"])
    if raising is None:
        return None
    if issubclass(raising, RobustDPO):
        return "model"
    wanted = f"{raising.__module__}.{raising.__qualname__}"
    for key, class_path in _class_paths(config):
        if class_path == wanted or class_path.rsplit(".", 1)[-1] == raising.__qualname__:
            return key.replace(".init_args", "") or None
    return None


def main(args: list[str] | None = None) -> RDPOCLI:
    import torch

    torch.set_float32_matmul_precision("high")
    try:
        return RDPOCLI(
            RobustDPO,
            PreferenceDataModule,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            args=args,
        )
    except NonFiniteError as error:  # a diverged run: say what happened and where the last good state is
        print(f"rdpo: error: {error}", file=sys.stderr)
        raise SystemExit(1) from error


def run() -> None:
    """The ``rdpo`` console script: exit status 0 on success (``main`` returns the CLI object for Python callers).
    ``rdpo pareto ...`` is not a Lightning subcommand: it reads finished runs (:mod:`rdpo_lightning.pareto.report`);
    nor is ``rdpo export CHECKPOINT OUTPUT``, which writes a checkpoint as a Hugging Face model
    (:mod:`rdpo_lightning.export`)."""
    if sys.argv[1:2] == ["pareto"]:
        from rdpo_lightning.pareto.report import main as pareto

        pareto(sys.argv[2:])
        return
    if sys.argv[1:2] == ["export"]:
        from rdpo_lightning.export import main as export

        export(sys.argv[2:])
        return
    main()


if __name__ == "__main__":
    run()
