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


def model_manager(found: Mapping[str, Any] | None = None) -> Any:
    """The session's model manager (see :func:`comfy_notebook.runtime.service.manager_service`)."""
    from comfy_notebook.runtime.service import manager_service

    return manager_service(services() if found is None else found)


def folders(found: Mapping[str, Any] | None = None) -> Any:
    """The session's :class:`~comfy_notebook.folders.Folders`."""
    from comfy_notebook.folders import folders_service

    return folders_service(services() if found is None else found)


def listing(kind: str) -> list[str]:
    """File names of ``kind`` for a combo input (empty when no models folder is configured).

    ``INPUT_TYPES`` runs while a session registers or validates nodes, with that session's
    services in context; outside that (a class asked directly) the configured folders are
    listed.  It never makes a session itself: registering the pack would then recurse.
    """
    from comfy_notebook.engine import current_context
    from comfy_notebook.folders import Folders, folders_service

    found = current_context().services
    try:
        return (folders_service(found) if found else Folders.from_config()).list(kind)
    except OSError:  # an unreadable folder lists nothing; validation says more
        return []
