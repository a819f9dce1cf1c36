"""How node code reaches the session's services (model manager, folders, the session itself).

The services are a typed :class:`comfy_notebook.services.Services` object that the session
passes to the engine, which puts it on the running node's context.  Outside a run (naked mode:
``KSampler().sample(...)`` called as plain Python) the current session's services are used —
the engine's context falls back to them — so naked calls share the same model manager.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from comfy_notebook.folders import Folders
    from comfy_notebook.runtime.manager import ModelManager
    from comfy_notebook.services import Services


def services() -> Services:
    """The services of the run in progress, or of the current session outside a run."""
    from comfy_notebook.engine.context import current_services

    found = current_services()
    if found is None:
        from comfy_notebook.services import Services

        return Services()  # no session anywhere (the package root was not imported)
    return found  # type: ignore[no-any-return]


def model_manager(found: Any = None) -> ModelManager:
    """The session's model manager (made on first use)."""
    return (services() if found is None else found).models  # type: ignore[no-any-return]


def folders(found: Any = None) -> Folders:
    """The session's :class:`~comfy_notebook.folders.Folders`."""
    from comfy_notebook.folders import folders_service

    return folders_service(services() if found is None else found)


def listing(kind: str) -> list[str]:
    """File names of ``kind`` for a combo input (empty when no models folder is configured).

    ``INPUT_TYPES`` runs while a session registers or validates nodes, with that session's
    services in context; outside that (a class asked directly) the configured folders are
    listed.  It never makes a session itself: registering the pack would then recurse.
    """
    from comfy_notebook.engine.context import current_context
    from comfy_notebook.folders import Folders, folders_service

    found = current_context().services
    try:
        return (folders_service(found) if found is not None else Folders.from_config()).list(kind)
    except OSError:  # an unreadable folder lists nothing; validation says more
        return []


def file_fingerprint(kind: str, name: str) -> str:
    """``IS_CHANGED`` of a loader node: the identity of the file (size, mtime, header hash), so a
    file replaced under the same name is loaded again instead of served from the cache."""
    from comfy_notebook.folders.identity import file_identity

    return file_identity(folders().resolve(kind, name)) or "missing"
