"""Lightning callbacks: worst-case evaluation across mixtures, generation-based reward evaluation, export of the
best checkpoint as a Hugging Face model, ``last.ckpt`` at the last step, and a progress bar with full metric names."""

from rdpo_lightning.callbacks.checkpoints import LastCheckpoint
from rdpo_lightning.callbacks.export import ExportBestCheckpoint
from rdpo_lightning.callbacks.generation import GenerationEvaluation, GenerationResult
from rdpo_lightning.callbacks.progress import MetricsProgressBar
from rdpo_lightning.callbacks.report import MixtureResult, ShiftReport
from rdpo_lightning.callbacks.worst_case import WorstCaseEvaluation

__all__ = [
    "ExportBestCheckpoint",
    "GenerationEvaluation",
    "GenerationResult",
    "LastCheckpoint",
    "MetricsProgressBar",
    "MixtureResult",
    "ShiftReport",
    "WorstCaseEvaluation",
]
