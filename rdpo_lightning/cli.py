"""The ``rdpo`` command: Lightning's CLI over :class:`RobustDPO` and any :class:`PreferenceDataModule`."""

from __future__ import annotations

from lightning.pytorch.cli import LightningCLI

from rdpo_lightning.data import PreferenceDataModule
from rdpo_lightning.module import RobustDPO


class RDPOCLI(LightningCLI):
    """``rdpo fit|validate|test -c config.yaml``; robust strategies and pair losses are chosen by ``class_path``."""


def main(args: list[str] | None = None) -> RDPOCLI:
    import torch

    torch.set_float32_matmul_precision("high")
    return RDPOCLI(
        RobustDPO,
        PreferenceDataModule,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":
    main()
