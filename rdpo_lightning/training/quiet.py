"""A Trainer for runs driven by code (tests, benchmarks, notebooks): it prints and writes only what the caller asks for.

Lightning's defaults suit an interactive ``fit``: a progress bar, a model summary, a logger, checkpoints and a sanity
validation pass. A run driven by code checks its own results, so each of these is off unless passed back in.
"""

from __future__ import annotations

from typing import Any

import lightning as L

#: the Trainer arguments a quiet run starts from; any of them can be overridden
QUIET = {
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "num_sanity_val_steps": 0,
}


def quiet_trainer(**arguments: Any) -> L.Trainer:
    """``L.Trainer(**arguments)`` with :data:`QUIET` under them."""
    return L.Trainer(**{**QUIET, **arguments})
