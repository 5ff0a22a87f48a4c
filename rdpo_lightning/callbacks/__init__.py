"""Lightning callbacks: worst-case evaluation across mixtures and generation-based reward evaluation."""

from rdpo_lightning.callbacks.generation import GenerationEvaluation, GenerationResult
from rdpo_lightning.callbacks.report import MixtureResult, ShiftReport
from rdpo_lightning.callbacks.worst_case import WorstCaseEvaluation

__all__ = ["GenerationEvaluation", "GenerationResult", "MixtureResult", "ShiftReport", "WorstCaseEvaluation"]
