"""Typed execution events, delivered synchronously on one stream (``emit(event)``).

The order for one run mirrors ComfyUI's WebSocket messages: ``RunStarted`` -> ``NodeCached``
(per cache hit) -> ``NodeStarted`` / ``NodeProgress`` / ``NodeFinished`` per executed node ->
``RunFinished``; or ``NodeFailed`` / ``RunInterrupted`` instead of the end.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Event",
    "EventSink",
    "NodeBlocked",
    "NodeCached",
    "NodeFailed",
    "NodeFinished",
    "NodeMessage",
    "NodeProgress",
    "NodeStarted",
    "NodeWarning",
    "RunFinished",
    "RunInterrupted",
    "RunStarted",
]


@dataclass(frozen=True, slots=True)
class Event:
    """Base class: every event names its prompt."""

    prompt_id: str


@dataclass(frozen=True, slots=True)
class RunStarted(Event):
    """A run began; ``node_ids`` are the nodes scheduled (before lazy inputs and expansion)."""

    node_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NodeCached(Event):
    """A node's outputs came from the cache (its ``ui`` is re-sent)."""

    node_id: str
    class_type: str
    ui: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class NodeStarted(Event):
    """A node's function is about to run (ComfyUI ``executing``)."""

    node_id: str
    class_type: str
    display_node_id: str


@dataclass(frozen=True, slots=True)
class NodeProgress(Event):
    """A node reported progress (``ctx.progress(value, total, preview)``)."""

    node_id: str
    value: float
    total: float
    preview: Any = None


@dataclass(frozen=True, slots=True)
class NodeMessage(Event):
    """A message a node sent to the front end (a custom pack's ``PromptServer.send_sync``)."""

    node_id: str
    event: str
    data: Any


@dataclass(frozen=True, slots=True)
class NodeFinished(Event):
    """A node finished (ComfyUI ``executed``); ``ui`` is what it returned under ``"ui"``."""

    node_id: str
    class_type: str
    seconds: float
    ui: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class NodeWarning(Event):
    """A warning-level note from a running node (e.g. a size rounded as ComfyUI rounds it)."""

    node_id: str
    class_type: str
    message: str


@dataclass(frozen=True, slots=True)
class NodeBlocked(Event):
    """An ``ExecutionBlocker`` with a message stopped a node ("Execution Blocked: ...")."""

    node_id: str
    class_type: str
    message: str


@dataclass(frozen=True, slots=True)
class NodeFailed(Event):
    """A node raised; the run stops.  ``error`` is the ``NodeExecutionError``."""

    node_id: str
    class_type: str
    error: BaseException


@dataclass(frozen=True, slots=True)
class RunInterrupted(Event):
    """The run was interrupted while (or before) running ``node_id``."""

    node_id: str | None
    class_type: str | None
    executed: frozenset[str]


@dataclass(frozen=True, slots=True)
class RunFinished(Event):
    """The run completed."""

    executed: frozenset[str]
    cached: frozenset[str]
    seconds: float


EventSink = Callable[[Event], None]
