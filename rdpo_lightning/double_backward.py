"""Whether the forward now running will be differentiated twice (``autograd.grad(..., create_graph=True)`` and then a
backward through that gradient: exact WDPO).

A leaf the robust strategies and the model layer both import, and neither imports the other: a strategy's
``forward_context()`` enters :func:`double_backward`, and the fused output layer reads
:func:`double_backward_expected` to take its checkpointed path, whose recomputed chunks are ordinary graphs, instead
of the tiled ``autograd.Function``, whose backward is not differentiable.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

_EXPECTED: ContextVar[bool] = ContextVar("rdpo_double_backward", default=False)


@contextlib.contextmanager
def double_backward() -> Iterator[None]:
    """Mark the forwards run inside as ones that will be differentiated twice."""
    token = _EXPECTED.set(True)
    try:
        yield
    finally:
        _EXPECTED.reset(token)


def double_backward_expected() -> bool:
    """True inside :func:`double_backward`."""
    return _EXPECTED.get()


__all__ = ["double_backward", "double_backward_expected"]
