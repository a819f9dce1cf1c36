"""``comfy.utils.ProgressBar`` for custom node packs, reporting into comfy_notebook's progress."""

from __future__ import annotations

from typing import Any

PROGRESS_BAR_ENABLED = True


class ProgressBar:
    """ComfyUI's progress bar: ``update(n)`` / ``update_absolute(value, total, preview)``."""

    def __init__(self, total: int, node_id: str | None = None) -> None:
        from comfy_notebook.engine import current_context

        self.total = total
        self.current = 0
        self._ctx = current_context()

    def update_absolute(self, value: float, total: float | None = None, preview: Any = None) -> None:
        if total is not None:
            self.total = int(total)
        self.current = min(int(value), self.total)
        self._ctx.progress(self.current, self.total, preview)

    def update(self, value: float) -> None:
        self.update_absolute(self.current + value, self.total)


def common_upscale(samples: Any, width: int, height: int, upscale_method: str, crop: str) -> Any:
    from comfy_notebook.nodes.image import common_upscale as _upscale

    return _upscale(samples, width, height, upscale_method, crop)
