"""Model architectures (one per file), shape readers and key conversion (families: ``comfy_notebook.families``).

Submodules are imported on first use so ``import comfy_notebook.models`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "AutoencoderKL",
    "CLIPTextConfig",
    "CLIPTextModel",
    "UNetConfig",
    "UNetModel",
    "VAEConfig",
]

_LAZY = {
    "UNetConfig": "unet", "UNetModel": "unet",
    "VAEConfig": "vae", "AutoencoderKL": "vae",
    "CLIPTextConfig": "clip", "CLIPTextModel": "clip",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"comfy_notebook.models.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'comfy_notebook.models' has no attribute {name!r}")
