"""Notebook widgets: views over engine and runtime state (anywidget; JS/CSS in ``static/``).

- :class:`Gallery`: images of runs with their generation parameters.
- :class:`ModelPanel`: managed models, memory bars, load / offload / unload buttons.
- :class:`RunView` over :class:`RunState`: per-node status, progress, preview, interrupt.
- :func:`latent_to_rgb`: latent -> RGB preview (also used by real mode).

Imports are lazy so ``import comfy_notebook.widgets`` does not load ipywidgets or torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Gallery", "ModelPanel", "RunState", "RunView", "latent_to_rgb", "show_models"]

_LAZY = {
    "Gallery": "comfy_notebook.widgets.gallery",
    "ModelPanel": "comfy_notebook.widgets.model_panel",
    "RunState": "comfy_notebook.widgets.state",
    "RunView": "comfy_notebook.widgets.run_view",
    "latent_to_rgb": "comfy_notebook.widgets.preview",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'comfy_notebook.widgets' has no attribute {name!r}")


def show_models(session: Any = None) -> Any:
    """What ``%comfy models`` displays: a :class:`ModelPanel` (its text/plain is the table).

    Returns the plain-text line "no models loaded" when the session has no model manager yet.
    """
    from comfy_notebook.widgets.model_panel import ModelPanel

    try:
        return ModelPanel.for_session(session)
    except LookupError:
        return "no models loaded"
