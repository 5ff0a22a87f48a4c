"""Messages from the libraries underneath that a user of ``rdpo`` cannot act on, each silenced where it arises and
nowhere else: a filter names the exact message, its category and the module that raises it, so every other warning
(and the same warning from the user's own code) still shows.

Each entry says why it is noise here. Remove an entry when the library that causes it is fixed; the
``tests/test_quiet_runs.py`` fits show whether any comes back.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

#: (message regex, category, module regex, why) for :func:`warnings.filterwarnings`
LIBRARY_DEPRECATIONS = [
    (
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        FutureWarning,
        r"lightning\.pytorch\.utilities\._pytree",
        "Lightning 2.6's CombinedLoader builds torch's deprecated LeafSpec on every fit (torch >= 2.10)",
    ),
    (
        r"`is_gradient_checkpointing` is deprecated",
        FutureWarning,
        r"transformers\.modeling_utils",
        "PEFT's PeftModel reads transformers' deprecated property when it wraps any model (transformers 5)",
    ),
]

#: (logger, message start, why): log records dropped from one logger
LIBRARY_NOTICES = [
    (
        "lightning.pytorch.utilities.rank_zero",
        "💡 Tip: For seamless cloud logging",
        "an advertisement Lightning prints on every Trainer without its cloud logger",
    ),
]


class DropMessage(logging.Filter):
    """Drops the records of one logger whose message starts with ``start``."""

    def __init__(self, start: str) -> None:
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.start)


def silence_library_noise() -> None:
    """Install the filters of :data:`LIBRARY_DEPRECATIONS` and :data:`LIBRARY_NOTICES` (idempotent); ``rdpo`` does
    this at start-up."""
    for message, category, module, _ in LIBRARY_DEPRECATIONS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name, start, _ in LIBRARY_NOTICES:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropMessage) and f.start == start for f in logger.filters):
            logger.addFilter(DropMessage(start))


@contextmanager
def validating_a_checkpoint() -> Iterator[None]:
    """Inside ``validate``: ``ModelCheckpoint`` restores its state from the checkpoint and warns that its directory
    changed (the new run logs to a new version directory) so its fit-time state is not reloaded; validate writes no
    checkpoint, so nothing is lost."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", "The dirpath has changed from", category=UserWarning, module=r"lightning\.pytorch\.callbacks"
        )
        yield


@contextmanager
def dropped_log_message(logger_name: str, start: str) -> Iterator[None]:
    """Drop one logger's records that start with ``start`` inside the block only."""
    logger = logging.getLogger(logger_name)
    drop = DropMessage(start)
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)
