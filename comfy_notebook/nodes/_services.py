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
    """The session's :class:`~comfy_notebook.runtime.manager.ModelManager`, made on first use.

    The one place that creates it: stored under ``services["models"]`` so that every node, the
    magics and the model panel of a session share one manager.
    """
    found = services() if found is None else found
    manager = found.get("models")
    if manager is None:
        from comfy_notebook.runtime.manager import ModelManager

        manager = ModelManager(**_simulated_vram())
        if isinstance(found, dict):
            found["models"] = manager
    return manager


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


def _simulated_vram() -> dict[str, Any]:
    """``COMFY_NOTEBOOK_SIMULATED_VRAM=64MB``: on a machine without CUDA, a manager that accounts
    for a device of that capacity (models "load" and "offload" by bookkeeping), so the memory
    controls can be tried and tested where there is no GPU."""
    import os

    text = os.environ.get("COMFY_NOTEBOOK_SIMULATED_VRAM", "").strip()
    if not text:
        return {}
    import torch

    if torch.cuda.is_available():
        return {}
    from comfy_notebook._units import parse_bytes
    from comfy_notebook.runtime.devices import DevicePolicy

    return {"policy": DevicePolicy.cpu(), "capacity_bytes": parse_bytes(text)}
