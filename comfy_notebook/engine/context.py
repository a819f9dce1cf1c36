"""The node execution context: which node is running, its services, progress and interrupts.

The executor sets :data:`_CURRENT` around every node-function call (``contextvars`` so it
follows asyncio tasks); node code reads it with :func:`current_context`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from comfy_notebook.engine.events import Event, NodeMessage, NodeProgress
from comfy_notebook.errors import ExecutionInterrupted

__all__ = ["NodeContext", "current_context"]


def _drop(event: Event) -> None:
    """Event sink of the detached context."""


class NodeContext:
    """What a running node can see and do.

    Attributes
    ----------
    node_id, class_type, prompt_id:
        The running node (``None`` outside a run).
    services:
        Read-only mapping supplied by whoever runs the executor (``Session.services``).
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
        services: Mapping[str, Any] | None = None,
        emit: Callable[[Event], None] = _drop,
        interrupt_flag: threading.Event | None = None,
    ) -> None:
        self.node_id = node_id
        self.class_type = class_type
        self.prompt_id = prompt_id
        self.services: Mapping[str, Any] = services if services is not None else {}
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


@contextmanager
def services_context(services: Mapping[str, Any]) -> Iterator[None]:
    """Code that asks a node class about itself (``INPUT_TYPES`` while registering or
    validating) sees ``services`` as ``current_context().services``: combo lists then come from
    that session's folders, and never make a session of their own."""
    token = _CURRENT.set(NodeContext(services=services))
    try:
        yield
    finally:
        _CURRENT.reset(token)
