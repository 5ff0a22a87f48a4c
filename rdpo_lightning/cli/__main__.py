"""``python -m rdpo_lightning.cli ...``: the ``rdpo`` command (Lightning's multi-process launchers re-run it so)."""

from rdpo_lightning.cli import run

run()
