"""Low-precision runs with a full-precision fallback (never a black or NaN image).

A bf16 (or fp16) VAE decode is about twice as fast as fp32 on a GPU, and bf16 keeps fp32's
exponent range, but a rare input can still overflow.  :func:`finite_or_upcast` runs the call in
the module's own dtype, checks the result once (one host sync per call), and reruns it with the
weights temporarily upcast to float32 when anything is not finite.  The upcast copies live only
for that call; the managed weights are not changed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from comfy_notebook.runtime.streaming import set_param

__all__ = ["LOW_PRECISION", "fallbacks", "finite_or_upcast", "upcast"]

LOW_PRECISION = (torch.float16, torch.bfloat16)
_counts = {"upcast": 0}


def fallbacks() -> int:
    """How many calls were rerun in float32 since the process started (for reports and tests)."""
    return _counts["upcast"]


@contextmanager
def upcast(module: nn.Module, streamer: Any = None, dtype: torch.dtype = torch.float32) -> Iterator[None]:
    """Within the block, ``module``'s floating parameters and buffers are ``dtype`` copies.

    ``streamer`` (a partially loaded model's :class:`~.streaming.Streamer`) uploads its units in
    ``dtype`` too.
    """
    saved: list[tuple[nn.Module, str, Tensor, bool]] = []
    for mod in module.modules():
        for name, p in list(mod._parameters.items()):
            if p is not None and p.is_floating_point() and p.dtype != dtype:
                saved.append((mod, name, p, True))
                set_param(mod, name, p.detach().to(dtype))
        for name, b in list(mod._buffers.items()):
            if b is not None and b.is_floating_point() and b.dtype != dtype:
                saved.append((mod, name, b, False))
                mod._buffers[name] = b.to(dtype)
    old = getattr(streamer, "dtype", None)
    if streamer is not None:
        streamer.dtype = dtype
    try:
        yield
    finally:
        if streamer is not None:
            streamer.dtype = old
        for mod, name, t, is_param in reversed(saved):
            if is_param:
                mod._parameters[name] = t  # type: ignore[assignment]
            else:
                mod._buffers[name] = t


def _low_precision(module: nn.Module) -> bool:
    return any(p.dtype in LOW_PRECISION for p in module.parameters())


def finite_or_upcast(module: nn.Module, fn: Callable[[], Tensor], *, streamer: Any = None) -> Tensor:
    """``fn()`` (which runs ``module``); rerun in float32 if a low-precision result is not finite."""
    out = fn()
    if not _low_precision(module) or bool(torch.isfinite(out).all()):
        return out
    _counts["upcast"] += 1
    with upcast(module, streamer):
        return fn()
