"""rdpo-lightning: distributionally robust preference optimisation (WDPO, KLDPO) on PyTorch Lightning.

Where things live (the layers, top to bottom; each imports only from below it, checked by import-linter):

* ``cli``: the ``rdpo`` command (LightningCLI, one-line errors, aliases, ``export``)
* ``callbacks``: worst-case and generation evaluation during fit, checkpoint layout, export at the end
* ``training``: the LightningModule ``RobustDPO``, accumulation over the optimizer batch, reference log-probs
* ``checkpoints``: what a checkpoint records, adapter-only checkpoints, export, the model card
* ``rewards`` and ``pareto``: reward functions; fronts and verdicts against early-stopped DPO
* ``data``, ``models``, ``robust``: DataModules and formats; loading and scoring models; robust strategies
* ``losses``: pair losses
* leaves: ``errors``, ``checks``, ``pair_scores``, ``batch_layout``, ``mixtures``, ``known_warnings``

The flat 0.1 layout's import paths keep working (:mod:`rdpo_lightning.legacy_paths`).
"""

from rdpo_lightning.legacy_paths import install as _install_legacy_paths

__version__ = "0.1.0"

_install_legacy_paths()
