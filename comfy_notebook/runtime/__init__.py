"""Runtime: devices, dtypes and the model manager (load / offload / unload under a budget).

Importing this package probes no device; :class:`DevicePolicy.auto` does when called.
"""

from __future__ import annotations

from comfy_notebook.runtime.devices import DevicePolicy
from comfy_notebook.runtime.manager import (
    ManagedModel,
    ManagerStats,
    ModelInfo,
    ModelInUseError,
    ModelManager,
    ModelMoved,
    estimate_unet_memory,
)
from comfy_notebook.runtime.patches import DiffPatch, LoraPatch, ModelRef

__all__ = [
    "DevicePolicy",
    "DiffPatch",
    "LoraPatch",
    "ManagedModel",
    "ManagerStats",
    "ModelInUseError",
    "ModelInfo",
    "ModelManager",
    "ModelMoved",
    "ModelRef",
    "estimate_unet_memory",
]
