"""The built-in node pack, with ComfyUI's names, inputs and data conventions.

Two faces:

- ``NODE_CLASS_MAPPINGS`` / ``NODE_DISPLAY_NAME_MAPPINGS``: plain ComfyUI V1 node classes, the
  same shape a ComfyUI custom-node pack exports (``register_builtins(session)`` registers them).
- ``from comfy_notebook.nodes import *``: every node registered in the *current* session
  (built-ins and anything added with ``session.register``) as a real-mode callable, plus the
  ComfyScript-style enums (``Checkpoints``, ``Samplers``, ...).  Names are looked up at access
  time, so nodes registered later show up on the next import.  This face is real mode's
  (:mod:`comfy_notebook.realmode.namespace`), delegated to through :data:`namespace`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

# Node modules of the pack, in the order their nodes are listed.
_MODULES = (
    "loaders",
    "component_loaders",
    "conditioning",
    "conditioning_sdxl",
    "controlnet",
    "sampling",
    "model_sampling",
    "cfg",
    "edit_model",
    "flux",
    "custom_sampling",
    "sigmas",
    "sampler_options",
    "vae",
    "latent",
    "image",
    "image_io",
    "mask",
    "postprocessing",
    "latent_ops",
    "upscale",
    "merging",
    "clip_vision",
    "hypernetwork",
    "gligen",
    "style_model",
)

_mappings: dict[str, type] | None = None
_display: dict[str, str] | None = None


def _load() -> tuple[dict[str, type], dict[str, str]]:
    global _mappings, _display
    if _mappings is None or _display is None:
        mappings: dict[str, type] = {}
        display: dict[str, str] = {}
        for name in _MODULES:
            module = importlib.import_module(f"{__name__}.{name}")
            mappings.update(module.NODE_CLASS_MAPPINGS)
            display.update(getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", {}))
        _mappings, _display = mappings, display
    return _mappings, _display


def register_builtins(session: Any) -> None:
    """Register the built-in node pack in ``session``."""
    mappings, display = _load()
    session.register(mappings, display_names=display)


# ``from comfy_notebook.nodes import *`` (node names and enums as real-mode callables) is
# served by real mode, a room above this one: the package root installs its lookup here
# (``comfy_notebook/__init__.py``), so the pack itself never imports real mode.
namespace: Callable[[str], Any] | None = None


def __dir__() -> list[str]:
    """Module attributes plus every node and enum name (what editors complete)."""
    return sorted(set(globals()) | set(__getattr__("__all__")))


def __getattr__(name: str) -> Any:
    if name == "NODE_CLASS_MAPPINGS":
        return _load()[0]
    if name == "NODE_DISPLAY_NAME_MAPPINGS":
        return _load()[1]
    if (name.startswith("_") and name != "__all__") or namespace is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return namespace(name)
