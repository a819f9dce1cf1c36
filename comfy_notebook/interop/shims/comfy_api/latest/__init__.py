"""``comfy_api.latest``: ``io`` (node schema), ``ui`` (output helpers) and ``ComfyExtension``."""

from __future__ import annotations

from comfy_api.latest import io, ui
from comfy_api.latest._extension import ComfyAPI, ComfyExtension

__all__ = ["ComfyAPI", "ComfyExtension", "io", "ui"]
