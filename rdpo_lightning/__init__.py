"""rdpo-lightning: distributionally robust preference optimisation (WDPO, KLDPO) on PyTorch Lightning."""

__version__ = "0.1.0"
