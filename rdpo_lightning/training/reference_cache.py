"""Reference log-probs computed once, cached on disk, and carried by the data set: no reference model in training.

DPO's reference term log π_ref(y|x) never changes during training, so it is computed in one pass before the first
step and stored as two dataset columns (``reference_chosen_logps`` / ``reference_rejected_logps``) that the collator
puts into every batch. The cache file is keyed by

* the tokenised split's ``datasets`` fingerprint (the data, its tokenisation and truncation),
* a digest of the reference weights (blake2b over every parameter's name, dtype and shape, and each storage's bytes
  once: :func:`~rdpo_lightning.models.digest.weights_digest`),
* the settings that change the numbers: trainer precision, attention implementation, model dtype, fused or
  full-logits log-probs,

so a later run with the same data and reference loads it, and a change of either recomputes it. The file stores
per-row *sums* of response-token log-probs and the token counts, so a length-normalised pair loss (IPO) reuses it too,
and the digest and name of the weights that computed it: an entry whose recorded digest is not its key's is refused
(recomputed, with one line).

The reference is the policy *as it started*, always. A fit resumed from a checkpoint restores trained weights into
the policy before the missing log-probs could be computed from it (single device and DDP restore before the
strategy's setup), so :meth:`ReferenceSource.before_restore` keeps a frozen copy of the initial policy to compute
them with, freed once they are; :meth:`ReferenceSource.equip` refuses to compute from a policy whose weights a
checkpoint has replaced. (FSDP strategies restore after setup, when the log-probs are already computed.)

Under data parallelism every rank computes the rows ``rank, rank + W, ...`` (padded so all ranks run the same number
of forwards, as FSDP requires), the results are all-gathered, and rank 0 writes the file; on a hit rank 0 reads it
and broadcasts it, so only rank 0's filesystem needs the cache.

The module sees one object, :class:`ReferenceSource`: it asks it which reference model (if any) to keep and tells it
when the models are in place; the DataModule is read and changed only through its public ``splits``,
``replace_split`` and ``collator``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from tqdm.auto import tqdm

from rdpo_lightning.data.collate import REFERENCE_COLUMNS
from rdpo_lightning.data.datamodule import default_cache_dir
from rdpo_lightning.models.adapters import (
    REFERENCE_ADAPTER,
    adapter_names,
    is_adapted,
    reference_mode,
    reference_state,
)
from rdpo_lightning.models.digest import weights_digest
from rdpo_lightning.models.loading import frozen_copy, load_causal_lm
from rdpo_lightning.models.scoring import token_logps
from rdpo_lightning.pair_scores import PairLogps

log = logging.getLogger(__name__)

#: 2: entries record the digest and name of the weights that computed them (1's may hold a resumed policy's)
FORMAT_VERSION = 2
CHOSEN_COLUMN, REJECTED_COLUMN = REFERENCE_COLUMNS
#: what a cache entry records beside the numbers: the digest of the weights that computed it, and their name
DIGEST_FIELD, WEIGHTS_FIELD = "reference_digest", "reference_weights"


def default_reference_cache_dir() -> Path:
    """``reference_logps`` in the one cache folder the tokenised splits also use (``$RDPO_CACHE``)."""
    return default_cache_dir() / "reference_logps"


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

    def load(self, key: str, rows: int, digest: str | None = None) -> ReferenceLogps | None:
        """The entry under ``key``, or None (with one line when a file is there but refused): unreadable, another
        number of rows, or computed from weights other than ``digest``."""
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
        recorded = stored.get(DIGEST_FIELD)
        if digest is not None and recorded != digest:
            log.warning(
                "reference log-prob cache %s was computed from weights %s, not the reference's %s; recomputing",
                path, recorded, digest,
            )  # fmt: skip
            return None
        return logps

    def save(self, key: str, logps: ReferenceLogps, digest: str | None = None, weights: str | None = None) -> Path:
        """Write the entry atomically, with the digest and name of the weights that computed it."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        partial = path.with_suffix(f".tmp{os.getpid()}")
        torch.save({**logps.to_dict(), DIGEST_FIELD: digest, WEIGHTS_FIELD: weights}, partial)
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
    forward: Callable[[nn.Module, dict[str, Tensor]], tuple[Tensor, Tensor]] | None = None,
    progress: bool = False,
    description: str = "reference log-probs",
) -> ReferenceLogps:
    """Sums and counts of response-token log-probs of every row of ``dataset`` under ``model``.

    ``forward(model, batch)`` returns per-token log-probs and their mask (default: :func:`models.token_logps`); pass
    one that routes through the strategy's wrapper when the model is sharded. ``gather`` all-gathers a (per_rank, 4)
    tensor to (W, per_rank, 4) across ranks. ``progress`` shows a bar on rank 0 (a real model over a real data set
    takes minutes here).
    """
    forward = forward or token_logps
    rows = len(dataset)
    indices = shard_indices(rows, rank, world_size)
    pieces = []
    starts = range(0, len(indices), batch_size)
    for start in tqdm(starts, desc=description, unit="batch", disable=not progress or rank != 0, leave=False):
        batch = collate([dataset[i] for i in indices[start : start + batch_size]])
        batch = move_data_to_device(batch, device)
        logps, mask = forward(model, batch)
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
    """One split of the DataModule to equip with reference log-probs, by its name in ``datamodule.splits()``."""

    name: str
    key: str
    rows: int
    cached: ReferenceLogps | None = None


class ReferencePrecomputation:
    """Fills a DataModule's splits with reference log-probs: from the cache, or computed once and cached.

    Built in ``configure_model`` (:meth:`plan`, which also tells whether a reference *model* is needed at all) and run
    in ``on_fit_start`` (:meth:`run`), once the model sits on its devices, sharded or not. ``digest`` and ``weights``
    say which weights the log-probs are of (their digest, and a name such as ``the initial policy``): every cache
    entry records them, and every line that says where a split's log-probs came from names them.
    """

    def __init__(
        self, datamodule, splits: list[SplitPlan], cache: ReferenceCache, digest: str = "", weights: str = ""
    ) -> None:
        self.datamodule = datamodule
        self.splits = splits
        self.cache = cache
        self.digest = digest
        self.weights = weights

    @classmethod
    def plan(
        cls,
        trainer,
        reference_digest: str,
        settings: dict[str, str | None],
        cache: ReferenceCache,
        weights: str = "the reference",
    ) -> ReferencePrecomputation | None:
        """None when the DataModule holds no tokenizer and map-style ``datasets`` splits (then a resident reference is
        used)."""
        datamodule = getattr(trainer, "datamodule", None)
        if not all(hasattr(datamodule, method) for method in ("splits", "replace_split", "collator")):
            return None
        named = datamodule.splits()
        if any(fingerprint_of(ds) is None for ds in named.values()):
            return None
        splits = [
            SplitPlan(name, cls._split_key(ds, reference_digest, settings, cache), len(ds))
            for name, ds in named.items()
        ]
        strategy = trainer.strategy
        if strategy.global_rank == 0:
            for split in splits:
                split.cached = cache.load(split.key, split.rows, reference_digest)
        found = strategy.broadcast([None if s.cached is None else s.cached.to_dict() for s in splits], src=0)
        for split, stored in zip(splits, found, strict=True):
            split.cached = None if stored is None else ReferenceLogps(**stored)
        return cls(datamodule, splits, cache, reference_digest, weights)

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

        strategy = trainer.strategy
        source = f"{self.weights} (weights {self.digest[:12]})"
        for split in self.splits:
            dataset = self.datamodule.splits()[split.name]
            if split.cached is not None:
                logps = split.cached
                where = f"loaded from cache {self.cache.path(split.key)}"
            elif compute is None:
                raise RuntimeError(f"reference log-probs of split {split.name!r} are not cached and cannot be computed")
            else:
                logps = compute(without_reference(dataset), split.name)
                where = "computed and saved to cache "
                if strategy.global_rank == 0:
                    where += str(self.cache.save(split.key, logps, self.digest, self.weights))
                else:
                    where += "(by rank 0)"
                strategy.barrier()
            rank_zero_info(f"reference log-probs of split {split.name!r} ({split.rows} rows) of {source}: {where}")
            self.datamodule.replace_split(split.name, attach(dataset, logps, length_normalized))


class RestoredWeightsError(RuntimeError):
    """The reference log-probs were about to be computed from a policy whose weights a checkpoint replaced."""


@dataclass(eq=False)  # one run's source: compared by identity
class ReferenceSource:
    """Where a run's reference log-probs come from; the module's only view of its reference.

    Either the log-probs are precomputed into the DataModule's splits (from the cache, or computed once by a
    reference model that is then freed), or a frozen reference model stays resident and scores every batch. The
    module asks :meth:`build` in ``configure_model`` for the resident model it must prepare (shard, place) alongside
    the policy, tells :meth:`before_restore` when a checkpoint is about to replace the policy's weights, and calls
    :meth:`equip` once the models sit on their devices, before any training loader is built.

    Args:
        precompute: cache the reference log-probs of the training and validation splits
            (``model.precompute_reference``).
        cache: where cached log-probs live.
        name: ``model.reference``, a separately loaded reference model (None: the initial policy).
        torch_dtype, attn_implementation, fused: how the numbers are computed (dtype, attention, the fused or the
            full-logits output layer): with the weights and the data, what the cache is keyed by.
    """

    precompute: bool
    cache: ReferenceCache
    name: str | None = None
    torch_dtype: str | None = None
    attn_implementation: str | None = None
    fused: bool = True

    def __post_init__(self) -> None:
        self.settings = {
            "torch_dtype": self.torch_dtype,
            "attn_implementation": self.attn_implementation,
            "logprobs": "fused" if self.fused else "full_logits",  # equal to ~1e-7, not bitwise
        }
        self._pending: ReferencePrecomputation | None = None
        self._restored = False  # a checkpoint's weights replaced the policy's initial ones
        self.live = False  # training pairs are drawn during the fit (online): the reference model stays

    def build(self, trainer, policy: nn.Module, length_normalized: bool, digest: str | None = None) -> nn.Module | None:
        """The resident reference model to prepare alongside the policy, or None.

        ``digest``: the initial policy's reference digest when the caller has it already (a LoRA run's base digest,
        for fresh adapters the reference itself), so that a large model is not hashed twice; unused for a named
        reference (``model.reference``), which is loaded here. None
        is returned when every split's log-probs are cached (they are attached now), when they will be computed in
        :meth:`equip` by the initial policy itself, or when the policy carries adapters (its base, in
        :func:`~rdpo_lightning.models.adapters.reference_mode`, is the reference: never copied); a frozen copy
        otherwise.
        """
        reference = None
        if self.name is not None:
            reference = load_causal_lm(self.name, None, None, self.torch_dtype, key="model.reference")
            digest = None
        precomputation = self._plan(trainer, policy if reference is None else reference, digest)
        fitting = trainer is not None and trainer.state.fn == TrainerFn.FITTING
        self.live = fitting and bool(getattr(getattr(trainer, "datamodule", None), "live_training_pairs", False))
        if self.live:  # training pairs drawn during the fit: a reference scores them as they come
            return self._live_reference(trainer, policy, reference, precomputation, length_normalized)
        if precomputation is not None and not precomputation.needs_model:  # every split cached: no reference model
            precomputation.run(trainer, length_normalized)
            return None
        if reference is None and is_adapted(policy):  # the policy computes the reference: no second model
            if precomputation is not None and fitting:
                self._pending = precomputation
            return None
        if precomputation is not None and fitting:  # computed in equip, before the first step; then freed
            self._pending = precomputation
            return None if reference is None else frozen_copy(reference)  # None: the initial policy computes them
        return frozen_copy(policy if reference is None else reference)  # a resident reference model

    def _live_reference(self, trainer, policy, reference, precomputation, length_normalized) -> nn.Module | None:
        """An online fit: the validation splits' log-probs as usual (cached, or computed in :meth:`equip`), and a
        reference that stays for the training pairs each round draws: the base with adapters off (no copy), the named
        reference, or a frozen copy of the initial policy."""
        if precomputation is not None and not precomputation.needs_model:
            precomputation.run(trainer, length_normalized)
        elif precomputation is not None:
            self._pending = precomputation
        rank_zero_info(
            f"online: the reference log-probs of each round's pairs are computed live by {self.weights_name(policy)}"
            + (" (the validation sets' are precomputed)" if precomputation is not None else "")
        )
        if reference is None and is_adapted(policy):
            return None
        return frozen_copy(policy if reference is None else reference)

    def weights_name(self, policy: nn.Module) -> str:
        """What the reference log-probs are of, in words: named in the cache's lines and entries."""
        if self.name is not None:
            return f"the reference model {self.name}"
        if is_adapted(policy):
            starting = REFERENCE_ADAPTER in adapter_names(policy)
            return "the base model with its starting adapter" if starting else "the base model (adapters off)"
        return "the initial policy"

    def _plan(self, trainer, reference: nn.Module, digest: str | None = None) -> ReferencePrecomputation | None:
        """Which splits are cached, for the reference's *initial* weights (before any checkpoint is restored); None
        when precomputation is off, the stage reads other splits (test, predict), or the DataModule has no named
        ``datasets`` splits."""
        if not self.precompute or trainer is None or trainer.state.fn not in (TrainerFn.FITTING, TrainerFn.VALIDATING):
            return None
        settings = {"precision": str(trainer.precision), **self.settings}
        digest = digest if digest is not None else weights_digest(reference_state(reference))
        digest = trainer.strategy.broadcast(digest, src=0)
        weights = self.weights_name(reference)
        return ReferencePrecomputation.plan(trainer, digest, settings, self.cache, weights)

    def before_restore(self, policy: nn.Module, resident: nn.Module | None) -> nn.Module | None:
        """A checkpoint is about to replace the policy's weights (``on_load_checkpoint``): when the initial policy
        was to compute the missing reference log-probs, a frozen copy of it now, to compute them instead (the module
        keeps it as its reference until :meth:`equip` frees it); None when nothing needs it."""
        self._restored = True
        if self._pending is None or resident is not None or is_adapted(policy):
            return None  # nothing pending; a named reference resident already; a base the checkpoint leaves as it is
        rank_zero_info(
            "resuming before the reference log-probs are computed: a frozen copy of the initial policy"
            f" (weights {self._pending.digest[:12]}) computes them, then is freed"
        )
        return frozen_copy(policy)

    def equip(
        self,
        trainer,
        model: nn.Module,
        policy_is_reference: bool,
        length_normalized: bool,
        forward: Callable[[nn.Module, dict[str, Tensor]], tuple[Tensor, Tensor]],
        gather: Callable[[Tensor], Tensor],
    ) -> bool:
        """Compute the missing reference log-probs with ``model`` (the resident reference, or the policy itself when
        ``policy_is_reference``: its initial weights, or its base under adapters), in eval mode and wrapped and
        sharded as it is; attach every split's, and say whether it did (the resident reference can then be freed)."""
        precomputation, self._pending = self._pending, None
        if precomputation is None:
            return False
        if policy_is_reference and self._restored and not is_adapted(model):
            raise RestoredWeightsError(
                "the reference log-probs would be computed from a policy whose weights a checkpoint replaced, not"
                f" from {precomputation.weights} they are keyed by (weights {precomputation.digest[:12]})"
            )
        datamodule, strategy = precomputation.datamodule, trainer.strategy
        collate = datamodule.collator()
        batch_size = getattr(datamodule, "val_batch_size", None) or getattr(datamodule, "batch_size", 8)
        progress = trainer.progress_bar_callback is not None

        def compute(dataset, name: str) -> ReferenceLogps:
            return compute_reference_logps(
                model, dataset, collate, batch_size, strategy.root_device, strategy.global_rank, strategy.world_size,
                gather=gather, forward=forward, progress=progress, description=f"reference log-probs {name}",
            )  # fmt: skip

        was_training = model.training
        model.eval()
        try:
            with reference_mode(model) if policy_is_reference else contextlib.nullcontext():
                precomputation.run(trainer, length_normalized, compute)
        finally:
            model.train(was_training)
        return not self.live  # online: the model scores every round's pairs, it stays


NO_RESIDENT_REFERENCE = (
    "this batch carries no precomputed reference log-probs and no reference model is resident: they are precomputed"
    " for the DataModule's training and validation splits only; set model.precompute_reference: false to keep a"
    " reference model resident"
)


def precomputed_pair_logps(batch: dict[str, Tensor], dtype: torch.dtype) -> PairLogps | None:
    """The reference log-probs a batch carries (:data:`~rdpo_lightning.data.collate.REFERENCE_COLUMNS`), or None."""
    if REFERENCE_COLUMNS[0] not in batch:
        return None
    return PairLogps(*(batch[column].to(dtype) for column in REFERENCE_COLUMNS))


def reconcile_reference_state(state: dict[str, Tensor], reference: nn.Module | None) -> bool:
    """Fit a single-file checkpoint's ``reference.*`` weights to this run's reference; True (and one log line) when
    the checkpoint had none and this run's were put in.

    A run with precomputed reference log-probs holds no reference model, so its checkpoints carry no ``reference.*``
    weights, while a later stage may need a resident one (and the other way round). The resident reference is then
    the one this run built from its configuration (for a randomly initialised ``model_config`` that is the initial
    policy only under the same seed).
    """
    saved = [key for key in state if key.startswith("reference.")]
    if reference is None:
        for key in saved:
            del state[key]
        return False
    if saved:
        return False
    state.update({f"reference.{k}": v for k, v in reference.state_dict().items()})
    rank_zero_info(
        "the checkpoint holds no reference weights (they were precomputed): using the reference built from the"
        " configuration"
    )
    return True
