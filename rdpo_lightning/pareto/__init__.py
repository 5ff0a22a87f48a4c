"""Pareto fronts of (in-distribution, worst-case) quality and whether a robust method's front beats DPO's."""

from rdpo_lightning.pareto.events import Axis, read_scalars, run_directories, run_points
from rdpo_lightning.pareto.front import Point, dominates, mean_gap, pareto_front, staircase
from rdpo_lightning.pareto.interval import MeanInterval, t_interval, t_quantile
from rdpo_lightning.pareto.verdict import LOSES, NOISE, PAYS, TOO_FEW, Verdict, compare, judge

__all__ = [
    "Axis",
    "LOSES",
    "MeanInterval",
    "NOISE",
    "PAYS",
    "Point",
    "TOO_FEW",
    "Verdict",
    "compare",
    "dominates",
    "judge",
    "mean_gap",
    "pareto_front",
    "read_scalars",
    "run_directories",
    "run_points",
    "staircase",
    "t_interval",
    "t_quantile",
]
