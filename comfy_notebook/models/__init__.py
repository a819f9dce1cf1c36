"""Model architectures (one per file), checkpoint detection and model families.

Submodules are imported on first use so ``import comfy_notebook.models`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "SD1",
    "AutoencoderKL",
    "CheckpointInfo",
    "ModelFamily",
    "UNetConfig",
    "UNetModel",
    "VAEConfig",
    "detect",
]

_LAZY = {
    "SD1": "family", "ModelFamily": "family",
    "UNetConfig": "unet", "UNetModel": "unet",
    "VAEConfig": "vae", "AutoencoderKL": "vae",
    "CheckpointInfo": "detect", "detect": "detect",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"comfy_notebook.models.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'comfy_notebook.models' has no attribute {name!r}")
