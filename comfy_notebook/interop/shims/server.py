"""``server.PromptServer.instance`` for custom node packs: messages become session events.

``send_sync(event, data, sid=None)`` publishes a :class:`~comfy_notebook.engine.events.ServerMessage`
on the running session's event stream (progress widgets and subscribers see it); routes that a
pack registers on ``PromptServer.instance.routes`` are accepted and recorded, not served.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class _Routes:
    def __init__(self) -> None:
        self.recorded: list[tuple[str, str, Callable[..., Any]]] = []

    def _verb(self, method: str) -> Callable[[str], Callable[[Callable[..., Any]], Callable[..., Any]]]:
        def route(path: str, **_: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
            def record(fn: Callable[..., Any]) -> Callable[..., Any]:
                self.recorded.append((method, path, fn))
                return fn
            return record
        return route

    def __getattr__(self, method: str) -> Any:
        if method in ("get", "post", "put", "delete", "patch"):
            return self._verb(method.upper())
        raise AttributeError(method)


class PromptServer:
    """The stand-in for ComfyUI's server object that packs reach through ``instance``."""

    instance: PromptServer

    def __init__(self) -> None:
        self.routes = _Routes()
        self.client_id: str | None = None
        self.last_node_id: str | None = None

    def send_sync(self, event: str, data: Any, sid: str | None = None) -> None:
        from comfy_notebook.interop.messages import publish

        publish(event, data)

    async def send(self, event: str, data: Any, sid: str | None = None) -> None:
        self.send_sync(event, data, sid)

    def add_on_prompt_handler(self, handler: Callable[..., Any]) -> None:
        """Accepted; comfy_notebook has no HTTP prompt queue to hook."""


PromptServer.instance = PromptServer()
