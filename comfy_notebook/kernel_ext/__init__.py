"""IPython extension: ``%load_ext comfy_notebook``.

Registers the ``%comfy`` / ``%%comfy`` magics, follows the cell events so that cache entries are
scoped to the cells that made them, and shows comfy_notebook errors as one short line (the full
traceback on request: ``%comfy traceback``).  Everything works without the extension too; it
only adds cell scoping and the magics.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_ipython_extension", "unload_ipython_extension"]


def load_ipython_extension(ipython: Any) -> None:
    """Register the magics, cell-event hooks and the short error display on ``ipython``."""
    from comfy_notebook.kernel_ext.cells import CellEvents
    from comfy_notebook.kernel_ext.magics import ComfyMagics

    if getattr(ipython, "_comfy_notebook_events", None) is not None:
        return  # already loaded
    events = CellEvents(ipython)
    events.register()
    ipython._comfy_notebook_events = events
    ipython.register_magics(ComfyMagics(ipython, events))


def unload_ipython_extension(ipython: Any) -> None:
    """Undo :func:`load_ipython_extension` (magics stay registered, as IPython has no remover)."""
    events = getattr(ipython, "_comfy_notebook_events", None)
    if events is not None:
        events.unregister()
        ipython._comfy_notebook_events = None
