"""Scaling out: find a model's transformer blocks, then shard (FSDP1 / FSDP2) and checkpoint by block.

The module calls :func:`prepare_models` from ``configure_model`` with whatever strategy the Trainer runs; this file is
the one place that knows how each Lightning strategy wants a model prepared:

* ``FSDPStrategy`` (FSDP1, ``strategy: fsdp``): each language model (policy, reference) is wrapped in
  ``configure_model`` (inside the strategy's ``enable_wrap`` context, so with its sharding, precision and device
  settings) as its *own root* FSDP module, with an auto-wrap policy that makes every transformer block a nested unit
  (unless the user gave ``auto_wrap_policy``). The block class is found from the model (``_no_split_modules``), never
  hard-coded. Own roots, rather than one root around the LightningModule, because the robust strategies run forwards
  and backwards *inside* ``training_step`` (WDPO's z-gradient pass, manual optimisation): FSDP1 finalises gradients
  only in a callback its root queues when a backward reaches the root's outputs, which the policy's outputs then are.
* ``ModelParallelStrategy`` (FSDP2; :class:`FSDP2Strategy` sizes it for pure data parallelism): ``fully_shard`` on
  each block, then on each whole model, over the data-parallel mesh, here in ``configure_model``.
* anything else (DDP, single device): nothing to shard.

Activation checkpointing (non-reentrant, so ``autograd.grad`` keeps working for WDPO) wraps the same blocks under
every strategy.

It is also where the data-parallel replica count is worked out (:func:`data_parallel_replicas`), for the sampler,
the generation callback and per-rank seeding alike.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable
from typing import Any

import torch
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy, Strategy
from torch import nn


def transformer_block_classes(model: nn.Module) -> tuple[type[nn.Module], ...]:
    """The classes of ``model``'s repeated transformer blocks.

    Hugging Face models name them in ``_no_split_modules`` (``GPT2Block``, ``LlamaDecoderLayer``, ...). Failing that,
    the class repeated in the longest ``nn.ModuleList`` is taken.
    """
    names = set(getattr(model, "_no_split_modules", None) or [])
    found = {type(m) for m in model.modules() if type(m).__name__ in names}
    if not found:
        lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
        if lists:
            longest = max(lists, key=len)
            kinds = {type(m) for m in longest}
            if len(kinds) == 1:
                found = kinds
    if not found:
        raise ValueError(
            f"cannot find the transformer blocks of {type(model).__name__}: it declares no _no_split_modules and has no"
            " nn.ModuleList of identical layers; give the strategy an explicit auto_wrap_policy"
        )
    return tuple(sorted(found, key=lambda cls: cls.__name__))


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The outermost block instances of ``model``, in module order."""
    classes = transformer_block_classes(model)
    blocks: list[nn.Module] = []
    for module in model.modules():
        if isinstance(module, classes) and not any(module in b.modules() for b in blocks):
            blocks.append(module)
    return blocks


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each block's activations in backward (non-reentrant: ``autograd.grad`` and double backward work).

    The recomputation runs with the attention kernels of the original forward: exact WDPO forces the math SDPA path
    (flash kernels have no double backward), and a recompute that silently picked another kernel would break it.
    """
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        CheckpointImpl,
        checkpoint_wrapper,
    )
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        apply_activation_checkpointing as apply,
    )

    classes = transformer_block_classes(model)

    def wrapper(block: nn.Module) -> nn.Module:
        context_fn = functools.partial(_same_attention_kernels, _block_config(block))
        return checkpoint_wrapper(block, checkpoint_impl=CheckpointImpl.NO_REENTRANT, context_fn=context_fn)

    apply(model, checkpoint_wrapper_fn=wrapper, check_fn=lambda module: isinstance(module, classes))


def _block_config(block: nn.Module) -> Any:
    """The config a block's attention reads its implementation from (transformers hands the model's config object
    to its layers), None when it has none."""
    for module in block.modules():
        if hasattr(getattr(module, "config", None), "_attn_implementation"):
            return module.config
    return None


def _same_attention_kernels(config: Any) -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
    """(forward context, recompute context) for ``torch.utils.checkpoint``: recompute with today's SDPA backends and
    today's attention implementation (a packed batch's forward switches to the variable-length attention only while
    it runs: :func:`rdpo_lightning.models.varlen_attention.varlen_attention`)."""
    from torch.nn.attention import _cur_sdpa_kernel_backends

    implementation = None if config is None else config._attn_implementation
    return contextlib.nullcontext(), _AttentionKernels(_cur_sdpa_kernel_backends(), config, implementation)


class _AttentionKernels:
    """Re-enterable ``sdpa_kernel(backends)`` with the config's attention implementation set as it was in the
    forward: a block may be recomputed twice (autograd.grad, then backward)."""

    def __init__(self, backends: list, config: Any = None, implementation: str | None = None) -> None:
        self.backends = backends
        self.config = config
        self.implementation = implementation
        self._active: list[tuple[contextlib.AbstractContextManager, str | None]] = []

    def __enter__(self) -> None:
        from torch.nn.attention import sdpa_kernel

        context = sdpa_kernel(self.backends)
        context.__enter__()
        previous = None if self.config is None else self.config._attn_implementation
        if self.config is not None and previous != self.implementation:
            self.config._attn_implementation = self.implementation
        self._active.append((context, previous))

    def __exit__(self, *exc: object) -> None:
        context, previous = self._active.pop()
        if self.config is not None and self.config._attn_implementation != previous:
            self.config._attn_implementation = previous
        context.__exit__(*exc)


def is_sharded(strategy: Strategy | None) -> bool:
    """Whether the strategy shards parameters (FSDP1 or FSDP2), which rules out double backward."""
    return isinstance(strategy, (FSDPStrategy, ModelParallelStrategy))


def prepare_models(strategy: Strategy | None, models: list[nn.Module | None]) -> list[nn.Module | None]:
    """Shard ``models`` (policy, and the reference when one is resident) the way ``strategy`` expects; returns them
    in the same order (FSDP1 returns wrappers, FSDP2 the same modules, now sharded; None stays None)."""
    present = [m for m in models if m is not None]
    for kind, prepare in _PREPARERS:
        if isinstance(strategy, kind):
            prepared = iter(prepare(strategy, present))
            return [None if m is None else next(prepared) for m in models]
    return list(models)


def _fsdp1_wrap(strategy: FSDPStrategy, models: list[nn.Module]) -> list[nn.Module]:
    """FSDP1: each model its own root, its blocks nested units (the strategy's ``enable_wrap`` context is active in
    ``configure_model``, so ``wrap`` applies the strategy's sharding, precision and device settings)."""
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy, wrap

    wrapped = []
    for model in models:
        overrides = {}
        if "auto_wrap_policy" not in strategy.kwargs:
            overrides["auto_wrap_policy"] = ModuleWrapPolicy(set(transformer_block_classes(model)))
        wrapped.append(wrap(model, **overrides))
    return wrapped


def _fsdp2_fully_shard(strategy: ModelParallelStrategy, models: list[nn.Module]) -> list[nn.Module]:
    """FSDP2: ``fully_shard`` bottom-up, each block then each whole model, over the data-parallel mesh.

    Under ``bf16-mixed`` the parameters are all-gathered in bfloat16 (half the traffic and unsharded memory) and
    gradients reduced in float32; the sharded parameters and the optimizer stay float32.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if strategy.device_mesh["tensor_parallel"].size() != 1:
        raise ValueError(
            "ModelParallelStrategy with tensor_parallel_size > 1 is not supported by RobustDPO: use FSDP2Strategy"
            " (or ModelParallelStrategy with tensor_parallel_size: 1) for fully sharded data parallelism"
        )
    mesh = strategy.device_mesh["data_parallel"]
    mixed = getattr(strategy.precision_plugin, "precision", None) == "bf16-mixed"
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mixed else None
    options = {"mesh": mesh, **({"mp_policy": policy} if policy is not None else {})}
    for model in models:
        for block in transformer_blocks(model):
            fully_shard(_checkpoint_wrapper_of(model, block), **options)
        fully_shard(model, **options)
    return models


def _checkpoint_wrapper_of(model: nn.Module, block: nn.Module) -> nn.Module:
    """The activation-checkpoint wrapper around ``block`` if there is one (shard the wrapper, as torchtitan does)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

    for module in model.modules():
        if isinstance(module, CheckpointWrapper) and module._checkpoint_wrapped_module is block:
            return module
    return block


_PREPARERS = ((FSDPStrategy, _fsdp1_wrap), (ModelParallelStrategy, _fsdp2_fully_shard))


def reshard(model: nn.Module) -> None:
    """Free FSDP2's unsharded parameters: a root module keeps them after a forward without backward (e.g. the
    reference log-prob pass), which would otherwise hold a full copy of the root's parameters until training's first
    backward. A no-op for other models."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def gradients_of(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The parameters an optimizer steps that have a gradient (what clipping measures)."""
    return [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]


def clip_grad_norm(model: nn.Module, parameters: Iterable[torch.Tensor], max_norm: float | None) -> torch.Tensor:
    """The global gradient norm of ``model``'s ``parameters`` over all ranks' shards, clipped to ``max_norm`` unless
    that is None (then only measured: the non-finite guard reads this norm whether or not clipping is on).

    One reduction: torch's multi-tensor norm over every gradient, not a kernel per tensor. The returned 0-d tensor
    stays on the device (no host sync) and is the same on every rank. FSDP1 keeps flat shards, so only its root
    module can compute the global norm (Lightning's FSDP precision plugin refuses norm clipping for that reason); it
    clips, so an unclipped measure asks it for an infinite bound. FSDP2 gradients are DTensors, whose norm is reduced
    across the mesh; DDP gradients are already identical on every rank.
    """
    from torch.distributed.fsdp import FullyShardedDataParallel

    if isinstance(model, FullyShardedDataParallel):
        return model.clip_grad_norm_(float("inf") if max_norm is None else max_norm)
    parameters = [p for p in parameters if p.grad is not None]
    total = torch.nn.utils.get_total_norm([p.grad for p in parameters], error_if_nonfinite=False)
    if max_norm is not None:
        torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, total)
    full_tensor = getattr(total, "full_tensor", None)  # a DTensor's partial norm: reduced over the mesh, on device
    return full_tensor() if callable(full_tensor) else total
