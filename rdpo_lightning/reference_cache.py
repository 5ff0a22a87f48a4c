"""Reference log-probs computed once, cached on disk, and carried by the data set: no reference model in training.

DPO's reference term log π_ref(y|x) never changes during training, so it is computed in one pass before the first
step and stored as two dataset columns (``reference_chosen_logps`` / ``reference_rejected_logps``) that the collator
puts into every batch. The cache file is keyed by

* the tokenised split's ``datasets`` fingerprint (the data, its tokenisation and truncation),
* a digest of the reference weights (blake2b over every parameter's name, dtype, shape and bytes),
* the settings that change the numbers: trainer precision, attention implementation, model dtype,

so a later run with the same data and reference loads it, and a change of either recomputes it. The file stores
per-row *sums* of response-token log-probs and the token counts, so a length-normalised pair loss (IPO) reuses it too.

Under data parallelism every rank computes the rows ``rank, rank + W, ...`` (padded so all ranks run the same number
of forwards, as FSDP requires), the results are all-gathered, and rank 0 writes the file; on a hit rank 0 reads it
and broadcasts it, so only rank 0's filesystem needs the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from rdpo_lightning.data.collate import REFERENCE_COLUMNS
from rdpo_lightning.logprobs import token_logprobs
from rdpo_lightning.models import batch_logits

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CHOSEN_COLUMN, REJECTED_COLUMN = REFERENCE_COLUMNS


def default_reference_cache_dir() -> Path:
    return Path(os.environ.get("RDPO_CACHE", Path.home() / ".cache" / "rdpo_lightning")) / "reference_logps"


def weights_digest(model: nn.Module | Mapping[str, Tensor]) -> str:
    """A digest of the model's weights (or of a state dict): blake2b over each tensor's name, dtype, shape and
    bytes."""
    digest = hashlib.blake2b(digest_size=16)
    state = model.state_dict() if isinstance(model, nn.Module) else model
    for name, tensor in state.items():
        tensor = tensor.detach()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass
class ReferenceLogps:
    """Per-row reference sums of response-token log-probs and token counts, each (N,)."""

    chosen_sum: Tensor
    rejected_sum: Tensor
    chosen_tokens: Tensor
    rejected_tokens: Tensor

    def columns(self, length_normalized: bool) -> tuple[list[float], list[float]]:
        """The chosen / rejected reference log-probs the pair loss wants (sums, or per-token means)."""
        if not length_normalized:
            return self.chosen_sum.tolist(), self.rejected_sum.tolist()
        chosen = self.chosen_sum / self.chosen_tokens.clamp(min=1)
        rejected = self.rejected_sum / self.rejected_tokens.clamp(min=1)
        return chosen.tolist(), rejected.tolist()

    def to_dict(self) -> dict[str, Tensor]:
        return {k: getattr(self, k) for k in ("chosen_sum", "rejected_sum", "chosen_tokens", "rejected_tokens")}


class ReferenceCache:
    """Files ``<directory>/<key>.pt``, one per (split fingerprint, reference weights, settings)."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_reference_cache_dir()

    @staticmethod
    def key(fingerprint: str, reference_digest: str, settings: dict[str, str | None]) -> str:
        blob = json.dumps(
            {"v": FORMAT_VERSION, "data": fingerprint, "reference": reference_digest, **settings}, sort_keys=True
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.pt"

    def load(self, key: str, rows: int) -> ReferenceLogps | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
            logps = ReferenceLogps(**{k: stored[k] for k in ReferenceLogps.__dataclass_fields__})
        except Exception as error:  # a truncated or foreign file: recompute rather than fail
            log.warning("reference log-prob cache %s is unreadable (%s); recomputing", path, error)
            return None
        if logps.chosen_sum.shape != (rows,):
            held = len(logps.chosen_sum)
            log.warning("reference log-prob cache %s holds %d rows, the split has %d; recomputing", path, held, rows)
            return None
        return logps

    def save(self, key: str, logps: ReferenceLogps) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        partial = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(logps.to_dict(), partial)
        partial.replace(path)  # atomic: a crashed run never leaves a half-written cache behind
        return path


def shard_indices(rows: int, rank: int, world_size: int) -> list[int]:
    """Rows ``rank, rank + W, ...``, padded (with the last row) so every rank gets ceil(rows / W) of them."""
    per_rank = math.ceil(rows / world_size)
    return [min(rank + j * world_size, rows - 1) for j in range(per_rank)]


def unshard(gathered: Tensor, rows: int) -> Tensor:
    """Inverse of :func:`shard_indices` for all-gathered (W, per_rank, ...) results: (rows, ...) in row order."""
    return gathered.transpose(0, 1).reshape(-1, *gathered.shape[2:])[:rows]


@torch.no_grad()
def compute_reference_logps(
    model: nn.Module,
    dataset,
    collate: Callable[[list[dict]], dict[str, Tensor]],
    batch_size: int,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    gather: Callable[[Tensor], Tensor] | None = None,
    forward: Callable[[nn.Module, dict[str, Tensor]], Tensor] | None = None,
    chunk_rows: int | None = None,
    progress: bool = False,
    description: str = "reference log-probs",
) -> ReferenceLogps:
    """Sums and counts of response-token log-probs of every row of ``dataset`` under ``model``.

    ``forward(model, batch)`` returns the logits (default: ``model(input_ids, attention_mask).logits``); pass one that
    routes through the strategy's wrapper when the model is sharded. ``gather`` all-gathers a (per_rank, 4) tensor to
    (W, per_rank, 4) across ranks. ``progress`` shows a bar on rank 0 (a real model over a real data set takes
    minutes here).
    """
    forward = forward or batch_logits
    rows = len(dataset)
    indices = shard_indices(rows, rank, world_size)
    pieces = []
    starts = range(0, len(indices), batch_size)
    for start in tqdm(starts, desc=description, unit="batch", disable=not progress or rank != 0, leave=False):
        batch = collate([dataset[i] for i in indices[start : start + batch_size]])
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = forward(model, batch)
        logps, mask = token_logprobs(logits, batch["labels"], chunk_rows)
        sums, counts = logps.double().sum(-1), mask.sum(-1).double()
        half = sums.shape[0] // 2
        pieces.append(torch.stack([sums[:half], sums[half:], counts[:half], counts[half:]], dim=1))
    local = torch.cat(pieces).to(device) if pieces else torch.zeros(0, 4, dtype=torch.float64, device=device)
    table = unshard(gather(local), rows) if world_size > 1 and gather is not None else local[:rows]
    table = table.cpu()
    return ReferenceLogps(table[:, 0].clone(), table[:, 1].clone(), table[:, 2].clone(), table[:, 3].clone())


def without_reference(dataset):
    """``dataset`` without earlier reference columns (itself when it has none, keeping its fingerprint)."""
    present = [c for c in REFERENCE_COLUMNS if c in dataset.column_names]
    return dataset.remove_columns(present) if present else dataset


def attach(dataset, logps: ReferenceLogps, length_normalized: bool):
    """``dataset`` with the reference columns (replacing any earlier ones)."""
    dataset = without_reference(dataset)
    chosen, rejected = logps.columns(length_normalized)
    return dataset.add_column(CHOSEN_COLUMN, chosen).add_column(REJECTED_COLUMN, rejected)


def fingerprint_of(dataset) -> str | None:
    """The ``datasets`` fingerprint of a split, or None when it is not a ``datasets.Dataset``."""
    return getattr(dataset, "_fingerprint", None)


@dataclass
class SplitPlan:
    """One split of the DataModule to equip with reference log-probs: ``train`` or a validation set's name."""

    name: str
    key: str
    rows: int
    cached: ReferenceLogps | None = None


class ReferencePrecomputation:
    """Fills a DataModule's splits with reference log-probs: from the cache, or computed once and cached.

    Built in ``configure_model`` (:meth:`plan`, which also tells whether a reference *model* is needed at all) and run
    in ``on_fit_start`` (:meth:`run`), once the model sits on its devices, sharded or not.
    """

    def __init__(self, datamodule, splits: list[SplitPlan], cache: ReferenceCache) -> None:
        self.datamodule = datamodule
        self.splits = splits
        self.cache = cache

    @classmethod
    def plan(
        cls, trainer, reference_digest: str, settings: dict[str, str | None], cache: ReferenceCache
    ) -> ReferencePrecomputation | None:
        """None when the DataModule holds no tokenizer and map-style ``datasets`` splits (then a resident reference is
        used)."""
        datamodule = getattr(trainer, "datamodule", None)
        train = getattr(datamodule, "train_dataset", None)
        vals = getattr(datamodule, "val_datasets", None) or {}
        named = [("train", train), *((f"val/{name}", ds) for name, ds in vals.items())]
        if getattr(datamodule, "tokenizer", None) is None or any(fingerprint_of(ds) is None for _, ds in named):
            return None
        splits = [SplitPlan(name, cls._split_key(ds, reference_digest, settings, cache), len(ds)) for name, ds in named]
        strategy = trainer.strategy
        if strategy.global_rank == 0:
            for split in splits:
                split.cached = cache.load(split.key, split.rows)
        found = strategy.broadcast([None if s.cached is None else s.cached.to_dict() for s in splits], src=0)
        for split, stored in zip(splits, found, strict=True):
            split.cached = None if stored is None else ReferenceLogps(**stored)
        return cls(datamodule, splits, cache)

    @staticmethod
    def _split_key(dataset, reference_digest: str, settings: dict[str, str | None], cache: ReferenceCache) -> str:
        return cache.key(fingerprint_of(without_reference(dataset)), reference_digest, settings)

    @property
    def needs_model(self) -> bool:
        """Whether some split is not cached, so a reference model must compute it."""
        return any(split.cached is None for split in self.splits)

    def run(
        self, trainer, length_normalized: bool, compute: Callable[[object, str], ReferenceLogps] | None = None
    ) -> None:
        """Attach cached splits; ``compute(dataset, split_name)`` the others (every rank its shard), save them
        (rank 0), attach."""
        from lightning.pytorch.utilities import rank_zero_info

        strategy = trainer.strategy
        for split in self.splits:
            dataset = self._dataset(split.name)
            if split.cached is not None:
                logps = split.cached
                where = f"loaded from cache {self.cache.path(split.key)}"
            elif compute is None:
                raise RuntimeError(f"reference log-probs of split {split.name!r} are not cached and cannot be computed")
            else:
                logps = compute(without_reference(dataset), split.name)
                where = "computed and saved to cache "
                where += str(self.cache.save(split.key, logps)) if strategy.global_rank == 0 else "(by rank 0)"
                strategy.barrier()
            rank_zero_info(f"reference log-probs of split {split.name!r} ({split.rows} rows): {where}")
            self._set_dataset(split.name, attach(dataset, logps, length_normalized))

    def _dataset(self, name: str):
        return self.datamodule.train_dataset if name == "train" else self.datamodule.val_datasets[name[len("val/") :]]

    def _set_dataset(self, name: str, dataset) -> None:
        if name == "train":
            self.datamodule.train_dataset = dataset
        else:
            self.datamodule.val_datasets[name[len("val/") :]] = dataset
