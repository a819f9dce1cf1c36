"""The default backend: the session's own executor, cache and model manager, in this process."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

from comfy_notebook.backends.protocol import EventCallback, ImageRef
from comfy_notebook.engine.events import Event
from comfy_notebook.engine.executor import PromptResult

__all__ = ["InProcessBackend"]


class InProcessBackend:
    """Runs prompts with ``session``'s executor (one at a time: the session's run lock, which
    cells and API calls take too, guards the device).

    Parameters
    ----------
    session:
        The :class:`~comfy_notebook.Session` whose registry, cache and models are used.
    """

    name = "in-process"
    concurrency = 1

    def __init__(self, session: Any) -> None:
        self.session = session

    def run_prompt(self, prompt: Mapping[str, Any], *, prompt_id: str | None = None,
                   extra_data: Mapping[str, Any] | None = None,
                   on_event: EventCallback | None = None) -> PromptResult:
        pid = prompt_id or uuid.uuid4().hex
        unsubscribe = None
        if on_event is not None:
            callback = on_event

            def forward(event: Event) -> None:
                if event.prompt_id == pid:
                    callback(event)

            unsubscribe = self.session.subscribe(forward)
        try:
            return self.session._run_api(prompt, extra_data=extra_data, prompt_id=pid)  # type: ignore[no-any-return]
        finally:
            if unsubscribe is not None:
                unsubscribe()

    def fetch(self, ref: ImageRef) -> bytes:
        from comfy_notebook.folders import folders_service

        folders = folders_service(self.session.services)
        name = str(PurePosixPath(ref.subfolder) / ref.filename) if ref.subfolder else ref.filename
        return folders.resolve(ref.type, name).read_bytes()

    def object_info(self, node_class: str | None = None) -> dict[str, Any]:
        return self.session.registry.object_info(node_class)  # type: ignore[no-any-return]

    def interrupt(self) -> None:
        self.session.executor.interrupt()

    def free(self, *, unload_models: bool = True, free_memory: bool = True) -> None:
        if unload_models and "models" in self.session.services:
            self.session.models.unload_all()
        if free_memory:
            self.session.cache.clear()

    def close(self) -> None:
        """Nothing to release."""

    def __repr__(self) -> str:
        return "InProcessBackend()"
