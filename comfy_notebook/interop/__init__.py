"""ComfyUI interop: V3 node packs, custom node packs on the built-in engine, and their host modules.

- :func:`load_custom_nodes` (also ``Session.load_custom_nodes`` / ``%comfy nodes load PATH``):
  import packs as ComfyUI does and report each one.
- :mod:`comfy_notebook.interop.shims`: ``folder_paths``, ``comfy.utils``, ``server``,
  ``comfy_execution.graph_utils`` and ``comfy_api.latest`` for packs, over our own services.
- V3 node classes are read by :mod:`comfy_notebook.engine.v3` (the engine itself).
"""

from __future__ import annotations

from comfy_notebook.interop.packs import PackReport, PackReports, load_custom_nodes

__all__ = ["PackReport", "PackReports", "load_custom_nodes"]
