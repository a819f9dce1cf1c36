"""ComfyUI's graph helpers, served by comfy_notebook's engine."""

from comfy_notebook.engine.graph import ExecutionBlocker, GraphBuilder, is_link

__all__ = ["ExecutionBlocker", "GraphBuilder", "is_link"]
