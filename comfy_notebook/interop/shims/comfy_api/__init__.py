"""comfy_notebook's compatibility copy of ComfyUI's ``comfy_api`` package (public shape only).

Put on ``sys.path`` by :func:`comfy_notebook.interop.packs.install_shims` when a node pack is
loaded without an attached ComfyUI; an attached ComfyUI brings its own ``comfy_api``.
"""
