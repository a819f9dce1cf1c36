"""The ``Backend`` protocol: where a prompt runs (this process, a ComfyUI server, Ray workers).

A backend runs one API-format prompt at a time and reports what it did as a
:class:`~comfy_notebook.engine.PromptResult` (``ui`` holds each output node's ``{"images": [...]}``
as ComfyUI's ``/history`` does), streams the engine's typed events (``RunStarted``,
``NodeCached``, ``NodeStarted``, ``NodeProgress``, ``NodeFinished``, ``RunFinished``, ...) to an
``on_event`` callback while it runs, fetches output files, describes its nodes in ComfyUI's
``/object_info`` shape, interrupts the running prompt and frees memory.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from comfy_notebook.engine.events import Event
from comfy_notebook.engine.executor import PromptResult

__all__ = ["Backend", "EventCallback", "ImageRef", "image_refs"]

EventCallback = Callable[[Event], None]


@dataclass(frozen=True)
class ImageRef:
    """Where an output image lives on a backend (ComfyUI's ``{"filename", "subfolder", "type"}``)."""

    filename: str
    subfolder: str = ""
    type: str = "output"
    node_id: str = ""


@runtime_checkable
class Backend(Protocol):
    """What :class:`~comfy_notebook.Session`, the queue, the batcher and sweeps need from a backend.

    ``concurrency`` is how many prompts may run at once (1 for one GPU: the queue never starts a
    second prompt while one runs).
    """

    name: str
    concurrency: int

    def run_prompt(self, prompt: Mapping[str, Any], *, prompt_id: str | None = None,
                   extra_data: Mapping[str, Any] | None = None,
                   on_event: EventCallback | None = None) -> PromptResult:
        """Run a prompt to completion; raise ``ValidationError``, ``NodeExecutionError``,
        ``ExecutionInterrupted`` or ``BackendError``."""
        ...

    def fetch(self, ref: ImageRef) -> bytes:
        """The bytes of an output file."""
        ...

    def object_info(self, node_class: str | None = None) -> dict[str, Any]:
        """Node definitions in the shape of ComfyUI's ``/object_info``."""
        ...

    def interrupt(self) -> None:
        """Stop the running prompt (only that one)."""
        ...

    def free(self, *, unload_models: bool = True, free_memory: bool = True) -> None:
        """Unload models / release cached memory (ComfyUI's ``/free``)."""
        ...

    def close(self) -> None:
        """Release connections, threads and workers."""
        ...


def image_refs(result: PromptResult, prompt: Mapping[str, Any] | None = None) -> list[ImageRef]:
    """The images output nodes reported, in node-id order (numeric ids numerically)."""

    def order(node_id: str) -> tuple[int, int | str]:
        return (0, int(node_id)) if node_id.isdigit() else (1, node_id)

    refs = []
    for node_id in sorted(result.ui, key=order):
        ui = result.ui[node_id] or {}
        for item in ui.get("images", ()) or ():
            if isinstance(item, Mapping) and "filename" in item:
                refs.append(ImageRef(str(item["filename"]), str(item.get("subfolder", "")),
                                     str(item.get("type", "output")), node_id))
    return refs
