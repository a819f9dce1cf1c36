"""Shared base of the anywidget views: plain-text fallback in the MIME bundle, action messages."""

from __future__ import annotations

import pathlib
from typing import Any

import anywidget
import traitlets

STATIC = pathlib.Path(__file__).parent / "static"


class View(anywidget.AnyWidget):
    """An anywidget whose MIME bundle carries ``text()`` as text/plain and whose JS sends actions."""

    _css = STATIC / "widgets.css"
    message = traitlets.Unicode("").tag(sync=True)  # last action's outcome, shown by the JS

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.on_msg(self._on_custom_msg)

    def text(self) -> str:
        """Plain-text rendering (terminals, nbconvert, logs)."""
        raise NotImplementedError

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        bundle = super()._repr_mimebundle_(**kwargs)
        if bundle is None:
            return {"text/plain": self.text()}
        data, metadata = bundle
        data["text/plain"] = self.text()
        return data, metadata

    def __str__(self) -> str:
        return self.text()

    def _on_custom_msg(self, _widget: Any, content: Any, _buffers: Any) -> None:
        """Dispatch ``{"action": ..., ...}`` from the browser to ``action_<name>``; errors go to ``message``."""
        if not isinstance(content, dict) or "action" not in content:
            return
        handler = getattr(self, f"action_{content['action']}", None)
        if handler is None:
            self.message = f"unknown action {content['action']!r}"
            return
        try:
            self.message = handler(**{k: v for k, v in content.items() if k != "action"}) or ""
        except Exception as exc:  # shown to the user in the widget, not lost
            self.message = f"{content['action']} failed: {type(exc).__name__}: {exc}"
