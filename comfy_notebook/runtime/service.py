"""The session's model manager, as a session service (``Services.models``).

The one place that creates it, on first use, so that every node, the magics and the model panel
of a session share one :class:`~comfy_notebook.runtime.manager.ModelManager`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from typing import Any

import torch

from comfy_notebook._units import parse_bytes
from comfy_notebook.runtime.devices import DevicePolicy
from comfy_notebook.runtime.manager import ModelManager

__all__ = ["SIMULATED_VRAM_ENV", "make_manager", "manager_service"]

SIMULATED_VRAM_ENV = "COMFY_NOTEBOOK_SIMULATED_VRAM"


def make_manager() -> ModelManager:
    """A new model manager for a session (simulated VRAM when configured, see below)."""
    return ModelManager(**_simulated_vram())


def manager_service(services: Any) -> ModelManager:
    """The model manager of ``services`` (a :class:`comfy_notebook.services.Services`, whose
    ``models`` is made on first use; or a mapping, as older code passes: ``services["models"]``,
    made and stored on first use)."""
    if not isinstance(services, Mapping):
        return services.models  # type: ignore[no-any-return]
    manager = services.get("models")
    if manager is None:
        manager = make_manager()
        if isinstance(services, MutableMapping):
            services["models"] = manager
    return manager  # type: ignore[no-any-return]


def _simulated_vram() -> dict[str, Any]:
    """``COMFY_NOTEBOOK_SIMULATED_VRAM=64MB``: on a machine without CUDA, a manager that accounts
    for a device of that capacity (models "load" and "offload" by bookkeeping), so the memory
    controls can be tried and tested where there is no GPU."""
    text = os.environ.get(SIMULATED_VRAM_ENV, "").strip()
    if not text or torch.cuda.is_available():
        return {}
    return {"policy": DevicePolicy.cpu(), "capacity_bytes": parse_bytes(text)}
