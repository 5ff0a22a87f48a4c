"""``python -m rdpo_lightning.pareto``: the same as ``rdpo pareto``."""

from rdpo_lightning.pareto.report import main

main()
