"""Where and how prompts run: backends, the async queue, templates, batching and sweeps.

- :class:`Backend` (protocol) with :class:`InProcessBackend` (the default: this process's
  executor), :class:`ComfyUIServer` (a ComfyUI server over HTTP + websocket) and
  :class:`RayBackend` (Ray actors, each holding a session with resident models).
- :class:`PromptQueue` / :class:`PromptFuture`: priorities, cancellation, interrupts, events;
  ``await session.run_prompt_async(prompt)`` and ``session.submit(prompt)``.
- :class:`WorkflowTemplate` (Jinja2), :func:`run_batches` (``num_samples`` / ``batch_size`` with
  a documented seed rule) and :func:`sweep` (a parameter grid -> a tidy table).

Heavy dependencies (aiohttp, ray) are imported only when their backend is used.
"""

from __future__ import annotations

from typing import Any

from comfy_notebook.backends.batching import (
    Batch,
    ImageResult,
    iter_batches_async,
    plan_batches,
    run_batches,
    sample_seeds,
)
from comfy_notebook.backends.inprocess import InProcessBackend
from comfy_notebook.backends.protocol import Backend, ImageRef, image_refs
from comfy_notebook.backends.queue import PromptFuture, PromptQueue
from comfy_notebook.backends.templates import RESERVED, WorkflowTemplate, apply_overrides

__all__ = [
    "RESERVED",
    "Backend",
    "Batch",
    "ComfyUIServer",
    "ImageRef",
    "ImageResult",
    "InProcessBackend",
    "PromptFuture",
    "PromptQueue",
    "RayBackend",
    "WorkflowTemplate",
    "apply_overrides",
    "image_refs",
    "iter_batches_async",
    "iter_sweep",
    "plan_batches",
    "run_batches",
    "sample_seeds",
    "sweep",
    "sweep_order",
]

_LAZY = {
    "ComfyUIServer": "comfy_notebook.backends.server",
    "RayBackend": "comfy_notebook.backends.ray_backend",
    "sweep": "comfy_notebook.backends.sweeps",
    "iter_sweep": "comfy_notebook.backends.sweeps",
    "sweep_order": "comfy_notebook.backends.sweeps",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'comfy_notebook.backends' has no attribute {name!r}")
