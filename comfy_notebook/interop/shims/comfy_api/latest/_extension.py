"""``ComfyExtension``: what a V3 pack's ``comfy_entrypoint()`` returns."""

from __future__ import annotations

from typing import Any


class ComfyExtension:
    """A V3 extension: ``on_load`` (optional) then ``get_node_list()`` (may be async)."""

    async def on_load(self) -> None:
        """Called once before the node list is read."""

    async def get_node_list(self) -> list[type[Any]]:
        """The pack's node classes."""
        raise NotImplementedError


class ComfyAPI:
    """Placeholder for ComfyUI's runtime API object (progress and the like)."""

    class execution:
        @staticmethod
        async def set_progress(value: float, max_value: float, **_: Any) -> None:
            from comfy_notebook.engine import current_context

            current_context().progress(value, max_value)
