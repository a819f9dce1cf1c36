"""Progress bars for long nodes, driven by the engine's ``NodeProgress`` events.

``tqdm.auto`` gives an ipywidgets bar in notebooks and a plain bar in a terminal.  A bar opens
at a node's first progress report (so instant nodes never show one) and closes when the node
finishes, fails or the run is interrupted.  ``session.options["progress"] = False`` (or the
environment variable ``COMFY_NOTEBOOK_PROGRESS=0``) disables the bars.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

__all__ = ["ProgressBars", "attach", "enabled"]


def enabled(session: Any) -> bool:
    """Whether progress bars are on for ``session`` (session option, then environment)."""
    options = getattr(session, "options", None)
    if isinstance(options, dict) and "progress" in options:
        return bool(options["progress"])
    return os.environ.get("COMFY_NOTEBOOK_PROGRESS", "1") not in ("0", "false", "no")


class ProgressBars:
    """Event subscriber that keeps one tqdm bar per running node."""

    def __init__(self, session: Any, factory: Callable[..., Any] | None = None) -> None:
        self._session = session
        self._factory = factory
        self._bars: dict[tuple[str, str], Any] = {}
        self._names: dict[tuple[str, str], str] = {}

    def _new_bar(self, total: float, desc: str) -> Any:
        if self._factory is not None:
            return self._factory(total=total, desc=desc)
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, leave=False)

    def __call__(self, event: Any) -> None:
        kind = type(event).__name__
        if kind == "NodeStarted":
            self._names[(event.prompt_id, event.node_id)] = event.class_type
        elif kind == "NodeProgress":
            if not enabled(self._session):
                return
            key = (event.prompt_id, event.node_id)
            bar = self._bars.get(key)
            if bar is None:
                desc = self._names.get(key, event.node_id)
                bar = self._bars[key] = self._new_bar(event.total, desc)
            if bar.total != event.total:
                bar.total = event.total
            bar.n = event.value
            bar.refresh()
        elif kind in ("NodeFinished", "NodeFailed", "NodeCached", "NodeBlocked"):
            key = (event.prompt_id, event.node_id)
            self._names.pop(key, None)
            bar = self._bars.pop(key, None)
            if bar is not None:
                bar.close()
        elif kind in ("RunInterrupted", "RunFinished"):
            for key in [k for k in self._bars if k[0] == event.prompt_id]:
                self._bars.pop(key).close()
            for key in [k for k in self._names if k[0] == event.prompt_id]:
                del self._names[key]

    @property
    def open_bars(self) -> int:
        """How many bars are open now."""
        return len(self._bars)


def attach(session: Any) -> ProgressBars | None:
    """Subscribe a :class:`ProgressBars` to ``session``'s events (``None`` if it has no stream)."""
    subscribe = getattr(session, "subscribe", None)
    if subscribe is None:
        return None
    bars = ProgressBars(session)
    bars.unsubscribe = subscribe(bars)  # type: ignore[attr-defined]
    return bars
