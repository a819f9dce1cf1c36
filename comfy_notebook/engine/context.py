"""The node execution context: which node is running, its services, progress and interrupts.

The executor sets :data:`_CURRENT` around every node-function call (``contextvars`` so it
follows asyncio tasks); node code reads it with :func:`current_context`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from comfy_notebook.engine.events import Event, NodeMessage, NodeProgress, NodeWarning
from comfy_notebook.errors import ExecutionInterrupted

__all__ = ["NodeContext", "current_context", "current_services", "services_context", "set_services_fallback"]


_log = logging.getLogger("comfy_notebook")


def _drop(event: Event) -> None:
    """Event sink of the detached context."""


class NodeContext:
    """What a running node can see and do.

    Attributes
    ----------
    node_id, class_type, prompt_id:
        The running node (``None`` outside a run).
    services:
        Whatever the executor's owner passes (a session passes its typed
        :class:`comfy_notebook.services.Services`); ``None`` outside a run.  The engine never
        looks inside it.
    """

    __slots__ = (
        "_emit",
        "_flag",
        "_graph_index",
        "call_index",
        "class_type",
        "last_step",
        "node_id",
        "prompt_id",
        "services",
    )

    def __init__(
        self,
        node_id: str | None = None,
        class_type: str | None = None,
        prompt_id: str | None = None,
        services: Any = None,
        emit: Callable[[Event], None] = _drop,
        interrupt_flag: threading.Event | None = None,
    ) -> None:
        self.node_id = node_id
        self.class_type = class_type
        self.prompt_id = prompt_id
        self.services: Any = services
        self._emit = emit
        self._flag = interrupt_flag
        self.last_step: tuple[float, float] | None = None
        self.call_index = 0
        self._graph_index = 0

    @property
    def interrupted(self) -> bool:
        """Whether an interrupt was requested for the current run."""
        return self._flag is not None and self._flag.is_set()

    def check_interrupt(self) -> None:
        """Raise :class:`ExecutionInterrupted` if an interrupt was requested."""
        if self._flag is not None and self._flag.is_set():
            step, total = self.last_step if self.last_step else (None, None)
            raise ExecutionInterrupted(
                node_id=self.node_id,
                node_type=self.class_type,
                step=None if step is None else int(step),
                total=None if total is None else int(total),
            )

    def progress(self, value: float, total: float, preview: Any = None) -> None:
        """Report progress (emits ``NodeProgress``) and check for an interrupt."""
        self.last_step = (value, total)
        if self.prompt_id is not None and self.node_id is not None:
            self._emit(NodeProgress(self.prompt_id, self.node_id, value, total, preview))
        self.check_interrupt()

    def message(self, event: str, data: Any) -> None:
        """Send ``(event, data)`` to the session's subscribers as a :class:`NodeMessage`."""
        if self.prompt_id is not None and self.node_id is not None:
            self._emit(NodeMessage(self.prompt_id, self.node_id, event, data))

    def warn(self, message: str) -> None:
        """A warning-level note: a :class:`NodeWarning` event, and a ``logging`` warning (so a
        script or notebook without subscribers sees it too)."""
        _log.warning("%s", message)
        if self.prompt_id is not None and self.node_id is not None:
            self._emit(NodeWarning(self.prompt_id, self.node_id, self.class_type or "", message))

    def alloc_prefix(self) -> str:
        """Id prefix for a ``GraphBuilder`` created by this node (``id.call.graph.``)."""
        if self.node_id is None:
            return ""
        self._graph_index += 1
        return f"{self.node_id}.{self.call_index}.{self._graph_index - 1}."


_DETACHED = NodeContext()
_CURRENT: ContextVar[NodeContext] = ContextVar("comfy_notebook_node_context", default=_DETACHED)


def current_context() -> NodeContext:
    """The context of the running node; outside a run a detached default (never ``None``)."""
    return _CURRENT.get()


_fallback: Callable[[], Any] | None = None


def set_services_fallback(provider: Callable[[], Any] | None) -> None:
    """Who answers :func:`current_services` outside a run (the session layer installs the
    current session's services here, so naked node calls share its model manager)."""
    global _fallback
    _fallback = provider


def current_services() -> Any:
    """The running node's services; outside a run the fallback's (``None`` without one)."""
    found = _CURRENT.get().services
    if found is None and _fallback is not None:
        found = _fallback()
    return found


@contextmanager
def services_context(services: Any) -> Iterator[None]:
    """Code that asks a node class about itself (``INPUT_TYPES`` while registering or
    validating) sees ``services`` as ``current_context().services``: combo lists then come from
    that session's folders, and never make a session of their own."""
    token = _CURRENT.set(NodeContext(services=services))
    try:
        yield
    finally:
        _CURRENT.reset(token)
