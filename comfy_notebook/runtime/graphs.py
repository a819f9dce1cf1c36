"""Captured sampling steps: the denoiser's model call replayed as a CUDA graph.

At 512 px an eager UNet step is bound by the CPU launching kernels; replaying the same step as a
CUDA graph runs it at the GPU's pace (performance.md).  The runtime, not the model code, decides
(gpt-fast's rule): :meth:`StepGraphs.wrap` turns ``apply_model(x, t, context, **kw)`` into a
function that, per key (model, patch set, input shapes / dtypes, device, conditioning
structure), runs eagerly once, captures on the second call (after a warm-up on a side stream,
whose result is returned) and replays from the third call on, copying the inputs into the
graph's static tensors.

A graph holds the addresses of the weights it read, so it must not outlive them: every move the
:class:`~comfy_notebook.runtime.manager.ModelManager` reports (load, offload, unload, partial
load, eviction) drops that model's graphs.  A LoRA switch re-patches the device weights in
place, and the patch set is part of the key.  Eager fallback, with the reason counted: graphs
off, not a CUDA device, a partially loaded (streamed) model, forward hooks, non-tensor or
CPU-resident inputs, a capture that failed.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from comfy_notebook.runtime._managed import ManagedModel, ModelMoved
    from comfy_notebook.runtime.manager import ModelManager
    from comfy_notebook.runtime.patches import ModelRef

__all__ = ["Captured", "Capturer", "CudaCapturer", "GraphInfo", "StepGraphs"]

Key = tuple[Any, ...]


class Captured:
    """One captured call: ``replay()`` recomputes ``output`` from the static inputs."""

    def __init__(self, output: Tensor, replay: Callable[[], None], nbytes: int) -> None:
        self.output, self.replay, self.nbytes = output, replay, nbytes


class Capturer:
    """How graphs are made: :class:`CudaCapturer` on CUDA; tests pass a fake one."""

    def available(self, device: torch.device) -> bool:
        """Whether calls on ``device`` can be captured at all."""
        raise NotImplementedError

    def warmup_and_capture(self, fn: Callable[[], Tensor], device: torch.device) -> tuple[Tensor, Captured]:
        """Run ``fn`` once (warm-up; its result is returned), then capture it."""
        raise NotImplementedError


class CudaCapturer(Capturer):
    """``torch.cuda.CUDAGraph`` capture with a side-stream warm-up (PyTorch's recipe)."""

    def available(self, device: torch.device) -> bool:
        return device.type == "cuda" and torch.cuda.is_available()

    def warmup_and_capture(self, fn: Callable[[], Tensor], device: torch.device) -> tuple[Tensor, Captured]:
        current = torch.cuda.current_stream(device)
        side = torch.cuda.Stream(device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            out = fn()
        current.wait_stream(side)
        out.record_stream(current)  # allocated on the side stream, read on the caller's
        warm = out.clone()
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_reserved(device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            output = fn()
        nbytes = max(0, torch.cuda.memory_reserved(device) - before)
        return warm, Captured(output, graph.replay, nbytes)


@dataclass(frozen=True)
class GraphInfo:
    """One held graph (for the model panel): which model, which shapes, its memory, replays."""

    model: str
    shapes: str
    nbytes: int
    replays: int


class _Entry:
    __slots__ = ("calls", "captured", "failed", "replays", "sources", "statics")

    def __init__(self) -> None:
        self.calls = 0
        self.captured: Captured | None = None
        self.statics: tuple[list[Tensor], dict[str, Tensor]] | None = None
        self.failed: str | None = None
        self.replays = 0
        # (tensor, version) last copied in; a weakref, as an address may be reused by a new tensor
        self.sources: list[tuple[weakref.ref[Tensor], int] | None] = []


def _has_hooks(module: nn.Module) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


def _sig(t: Any) -> Any:
    if isinstance(t, Tensor):
        return (tuple(t.shape), t.dtype, t.device)
    return None


class StepGraphs:
    """The captured model calls of one model manager (keys, replays, invalidation, memory).

    Parameters
    ----------
    manager:
        Its move events drop the moved model's graphs.
    capturer:
        Defaults to :class:`CudaCapturer`.
    per_model:
        Most graphs kept per model (least recently used dropped first).
    """

    def __init__(self, manager: ModelManager, capturer: Capturer | None = None, *, per_model: int = 4) -> None:
        self.capturer = capturer or CudaCapturer()
        self.per_model = per_model
        self._graphs: OrderedDict[Key, _Entry] = OrderedDict()
        self._lock = threading.RLock()
        self.captures = 0
        self.replays = 0
        self.invalidations = 0
        self.fallbacks: dict[str, int] = {}
        self._unsubscribe = manager.subscribe(self._on_moved)

    # -- events --------------------------------------------------------------------------------
    def _on_moved(self, event: ModelMoved) -> None:
        self.invalidate(event.name)

    def invalidate(self, model: str | None = None) -> int:
        """Drop the graphs of ``model`` (every model: None); returns how many were dropped."""
        with self._lock:
            keys = [k for k in self._graphs if model is None or k[0] == model]
            for k in keys:
                del self._graphs[k]
            self.invalidations += len(keys)
            return len(keys)

    # -- reporting -----------------------------------------------------------------------------
    def held(self, model: str | None = None) -> list[GraphInfo]:
        """The graphs held now (of ``model``, or all)."""
        with self._lock:
            out = []
            for key, e in self._graphs.items():
                if e.captured is None or (model is not None and key[0] != model):
                    continue
                shapes = " ".join("x".join(map(str, s[0])) for s in key[3] if s is not None)
                out.append(GraphInfo(key[0], shapes, e.captured.nbytes, e.replays))
            return out

    def nbytes(self, model: str | None = None) -> int:
        """Device memory the graphs of ``model`` (or all) hold (pool growth measured at capture)."""
        return sum(g.nbytes for g in self.held(model))

    def _fallback(self, reason: str) -> None:
        self.fallbacks[reason] = self.fallbacks.get(reason, 0) + 1

    # -- wrapping ------------------------------------------------------------------------------
    def wrap(self, ref: ModelRef | ManagedModel, module: nn.Module, fn: Callable[..., Tensor], *,
             enabled: bool | None = None) -> Callable[..., Tensor]:
        """``fn(*tensors, **tensors)`` (a model call with ``module`` on the device), captured per key.

        ``enabled=None`` means on where the capturer can capture (CUDA).  Returns ``fn`` itself
        when capture is off or impossible for this model as it is placed now.
        """
        base = getattr(ref, "base", ref)
        device = base._manager().device if base._manager() is not None else torch.device("cpu")
        if enabled is False:
            self._fallback("disabled")
            return fn
        if not self.capturer.available(device):
            self._fallback("device")
            return fn
        if base.location != "gpu":  # partial: weights are streamed per forward
            self._fallback("partial")
            return fn
        if _has_hooks(module):
            self._fallback("hooks")
            return fn
        name, patches = base.name, getattr(ref, "patches_id", ())

        def call(*args: Any, **kwargs: Any) -> Tensor:
            tensors = list(args) + [kwargs[k] for k in sorted(kwargs)]
            if not all(isinstance(t, Tensor) and t.device == device for t in tensors):
                self._fallback("inputs")
                return fn(*args, **kwargs)
            key = (name, patches, str(device), tuple(_sig(t) for t in args),
                   tuple((k, _sig(kwargs[k])) for k in sorted(kwargs)))
            with self._lock:
                entry = self._graphs.get(key)
                if entry is None:
                    entry = self._graphs[key] = _Entry()
                    self._trim(name)
                self._graphs.move_to_end(key)
            entry.calls += 1
            if entry.failed is not None:
                return fn(*args, **kwargs)
            if entry.captured is None:
                if entry.calls == 1:
                    return fn(*args, **kwargs)  # first sight of this key: eager
                return self._capture(entry, fn, args, kwargs, device)
            assert entry.statics is not None
            s_args, s_kwargs = entry.statics
            sources = entry.sources
            for j, (dst, src) in enumerate(zip([*s_args, *s_kwargs.values()],
                                               [*args, *(kwargs[k] for k in s_kwargs)], strict=True)):
                last = sources[j]
                if last is None or last[0]() is not src or last[1] != src._version:
                    dst.copy_(src)  # (the same tensor, unchanged since, e.g. the context: no copy)
                    sources[j] = (weakref.ref(src), src._version)
            entry.captured.replay()
            entry.replays += 1
            self.replays += 1
            return entry.captured.output.clone()

        call.graphs = self  # type: ignore[attr-defined]
        return call

    def _capture(self, entry: _Entry, fn: Callable[..., Tensor], args: tuple[Any, ...],
                 kwargs: Mapping[str, Any], device: torch.device) -> Tensor:
        s_args = [a.clone() for a in args]
        s_kwargs = {k: v.clone() for k, v in kwargs.items()}
        try:
            warm, captured = self.capturer.warmup_and_capture(lambda: fn(*s_args, **s_kwargs), device)
        except Exception as exc:  # capture is an optimisation: any failure means eager
            entry.failed = f"{type(exc).__name__}: {exc}"
            self._fallback("capture failed")
            return fn(*args, **kwargs)
        entry.captured, entry.statics = captured, (s_args, s_kwargs)
        entry.sources = [None] * (len(s_args) + len(s_kwargs))
        self.captures += 1
        return warm

    def _trim(self, name: str) -> None:
        mine = [k for k in self._graphs if k[0] == name]
        for k in mine[: max(0, len(mine) - self.per_model)]:
            del self._graphs[k]

    def close(self) -> None:
        """Stop listening to the manager and drop every graph."""
        self._unsubscribe()
        self.invalidate()
