"""The flat layout's import paths (0.1: ``rdpo_lightning.module``, ``rdpo_lightning.distributed``, ...), kept working.

Class paths are an API: YAML files, checkpoints and scripts name them. When the package was grouped into
subpackages by job, every module of the flat root moved; :data:`MOVED` says where each one's contents live now, and
importing an old name gives a module that reads its attributes from there (the same objects, so ``isinstance`` and
unpickling agree). Nothing else in the package imports through these names.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types

PACKAGE = "rdpo_lightning"

#: old module (under the package) -> the modules its names moved to, searched in order
MOVED: dict[str, tuple[str, ...]] = {
    "accumulation": ("training.accumulation",),
    "adapter_checkpoints": ("checkpoints.adapter_only",),
    "adapters": ("models.adapters",),
    "aliases": ("cli.aliases",),
    "cli_errors": ("cli.errors",),
    "cli_yaml": ("cli.yaml_config",),
    "context_length": ("data.context_length",),
    "distributed": ("training.strategies", "models.sharding", "data.sampler"),
    "dropout": ("models.dropout",),
    "embeddings": ("models.embeddings",),
    "export": ("checkpoints.export", "cli.export"),
    "export_cli": ("cli.export",),
    "fused_logprobs": ("models.fused_logprobs",),
    "guards": ("training.guards",),
    "lightning_cli": ("cli.lightning_cli",),
    "logprobs": ("models.logprobs",),
    "model_card": ("checkpoints.model_card",),
    "module": ("training.module",),
    "optim_checks": ("training.optim_checks",),
    "quiet": ("training.quiet",),
    "reference_cache": ("training.reference_cache",),
    "reproducibility": ("training.reproducibility",),
    "router_aux": ("models.router_aux",),
    "run_record": ("checkpoints.run_record",),
    "schedules": ("training.schedules",),
}


class MovedModule(types.ModuleType):
    """An old module name whose attributes are read from the modules its contents moved to."""

    def __init__(self, name: str, targets: tuple[str, ...]) -> None:
        super().__init__(name, f"Moved to {', '.join(targets)} (see rdpo_lightning.legacy_paths).")
        self.__moved_to__ = targets

    def __getattr__(self, attribute: str) -> object:
        for target in self.__moved_to__:
            module = importlib.import_module(target)
            if hasattr(module, attribute):
                return getattr(module, attribute)
        raise AttributeError(
            f"module {self.__name__!r} (moved to {', '.join(self.__moved_to__)}) has no attribute {attribute!r}"
        )

    def __dir__(self) -> list[str]:
        names = set(super().__dir__())
        for target in self.__moved_to__:
            names.update(dir(importlib.import_module(target)))
        return sorted(names)


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the old names of :data:`MOVED` (last on ``sys.meta_path``: a real module of that name would win)."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec:
        old = fullname.removeprefix(PACKAGE + ".")
        if fullname.startswith(PACKAGE + ".") and old in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        old = spec.name.removeprefix(PACKAGE + ".")
        return MovedModule(spec.name, tuple(f"{PACKAGE}.{target}" for target in MOVED[old]))

    def exec_module(self, module: types.ModuleType) -> None:
        for target in module.__moved_to__:  # an import error surfaces now, as it did from the old module
            importlib.import_module(target)


def install() -> None:
    """Put the finder on ``sys.meta_path`` once (the package's ``__init__`` calls this)."""
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
