"""The Lightning strategy RobustDPO adds: FSDP2 sized for pure data parallelism.

How each strategy wants the models prepared (wrapped, sharded, checkpointed by block) is
:mod:`rdpo_lightning.models.sharding`; this is the strategy object a YAML names
(``trainer.strategy.class_path: rdpo_lightning.training.FSDP2Strategy``, or the old
``rdpo_lightning.training.FSDP2Strategy``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.strategies import ModelParallelStrategy

from rdpo_lightning.checkpoints.adapter_only import load_adapter_only_distributed


class FSDP2Strategy(ModelParallelStrategy):
    """FSDP2 (``fully_shard``) over every process: ``ModelParallelStrategy`` sized for pure data parallelism.

    ``ModelParallelStrategy`` defaults to data-parallel across nodes and tensor-parallel within a node; RobustDPO
    shards by data parallelism only, so here ``data_parallel_size`` defaults to the world size (num_nodes × devices)
    and ``tensor_parallel_size`` to 1. Runs on CPU (gloo) as well as GPU (nccl).
    """

    def __init__(self, data_parallel_size: int | str = "auto", tensor_parallel_size: int = 1, **kwargs: Any) -> None:
        super().__init__(data_parallel_size=data_parallel_size, tensor_parallel_size=tensor_parallel_size, **kwargs)

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        """Lightning's loader, except for an adapter-only distributed checkpoint, which holds no base weights to load
        (:func:`~rdpo_lightning.checkpoints.adapter_only.load_adapter_only_distributed`)."""
        path = Path(self.broadcast(checkpoint_path))
        loaded = load_adapter_only_distributed(self.model, self.optimizers, path, weights_only)
        return loaded if loaded is not None else super().load_checkpoint(path, weights_only)

    def adapter_only_refusal(self) -> str | None:
        """Why this strategy cannot write adapter-only checkpoints (None: it can, and loads them itself)."""
        if self._save_distributed_checkpoint:
            return None
        return "FSDP2Strategy(save_distributed_checkpoint=False) writes full-state files, which it loads itself"

    def setup_environment(self) -> None:
        if self._data_parallel_size == "auto":
            self._data_parallel_size = self.num_nodes * self.num_processes // int(self._tensor_parallel_size)
        super().setup_environment()
