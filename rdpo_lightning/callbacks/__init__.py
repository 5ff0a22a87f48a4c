"""Lightning callbacks: worst-case evaluation across mixtures, generation-based reward evaluation, and export of the
best checkpoint as a Hugging Face model."""

from rdpo_lightning.callbacks.export import ExportBestCheckpoint
from rdpo_lightning.callbacks.generation import GenerationEvaluation, GenerationResult
from rdpo_lightning.callbacks.report import MixtureResult, ShiftReport
from rdpo_lightning.callbacks.worst_case import WorstCaseEvaluation

__all__ = [
    "ExportBestCheckpoint",
    "GenerationEvaluation",
    "GenerationResult",
    "MixtureResult",
    "ShiftReport",
    "WorstCaseEvaluation",
]
