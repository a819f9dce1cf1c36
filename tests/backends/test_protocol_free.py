"""``%comfy unload all`` reaches a remote backend's ``/free`` (control.unload_all)."""

from __future__ import annotations

from typing import Any

import pytest

from comfy_notebook import Session
from comfy_notebook.realmode import control


class _FreeingBackend:
    replaces_nodes = True

    def __init__(self) -> None:
        self.freed: list[dict[str, Any]] = []

    def free(self, *, unload_models: bool = True, free_memory: bool = True) -> None:
        self.freed.append({"unload_models": unload_models, "free_memory": free_memory})


def test_unload_all_frees_the_remote_backends_models() -> None:
    backend = _FreeingBackend()
    session = Session(builtins=False, backend=backend)
    control.unload_all(session)
    assert backend.freed == [{"unload_models": True, "free_memory": False}]


def test_unload_all_without_models_or_backend_is_a_clear_error() -> None:
    with pytest.raises(control.CommandError, match="no models loaded yet"):
        control.unload_all(Session(builtins=False))
