"""How node code reaches the session's services (model manager, folders, the session itself)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def services() -> Mapping[str, Any]:
    """The services of the run in progress, or of the current session outside a run.

    Inside an executor run the engine's node context carries the session's ``services``;
    outside one (naked mode: ``KSampler().sample(...)`` called as plain Python) the current
    session's services are used, so naked calls share the same model manager.
    """
    from comfy_notebook.engine import current_context

    found = current_context().services
    if found:
        return found
    import comfy_notebook

    return comfy_notebook.session().services
