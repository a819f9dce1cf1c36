"""``RunView``: per-node status, sampling progress with preview, elapsed time, interrupt button."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import traitlets

from comfy_notebook.errors import ExecutionInterrupted
from comfy_notebook.widgets._base import STATIC, View
from comfy_notebook.widgets.state import RunState

__all__ = ["RunView"]

_MIRRORED = ("prompt_id", "status", "nodes", "current_node", "value", "total", "preview",
             "elapsed", "error")


class RunView(View):
    """A live view of a session's runs.

    Parameters
    ----------
    session:
        The session whose events feed the view (default: ``comfy_notebook.session()``); its
        ``interrupt()`` is what the button calls.
    state:
        An existing :class:`RunState` to view; by default a new one subscribed to ``session``.

    Notes
    -----
    In Jupyter the kernel handles widget messages between cells, so the interrupt button can stop a
    run started with :meth:`start` (a background thread); a run that blocks the cell is stopped with
    the notebook's own interrupt (it becomes ``ExecutionInterrupted`` at the next step).
    """

    _esm = STATIC / "run_view.js"
    prompt_id = traitlets.Unicode("").tag(sync=True)
    status = traitlets.Unicode("idle").tag(sync=True)
    nodes = traitlets.Dict().tag(sync=True)
    current_node = traitlets.Unicode("").tag(sync=True)
    value = traitlets.Float(0.0).tag(sync=True)
    total = traitlets.Float(0.0).tag(sync=True)
    preview = traitlets.Unicode("").tag(sync=True)
    elapsed = traitlets.Float(0.0).tag(sync=True)
    error = traitlets.Unicode("").tag(sync=True)

    def __init__(self, session: Any = None, *, state: RunState | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        if session is None:
            from comfy_notebook._session import session as current_session

            session = current_session()
        self.session = session
        self._unsubscribe: Callable[[], None] | None = None
        if state is None:
            state = RunState()
            self._unsubscribe = state.attach(session)
        self.state = state
        self._links = [traitlets.dlink((state, name), (self, name)) for name in _MIRRORED]
        self._thread: threading.Thread | None = None
        self.result: Any = None  # of the last start(): a PromptResult or the exception

    def action_interrupt(self) -> str:
        """The interrupt button: ask the session to stop at the next step or node."""
        self.session.interrupt()
        return "interrupt requested"

    def start(self, prompt: Any, **kwargs: Any) -> threading.Thread:
        """Run ``session.run_prompt(prompt, **kwargs)`` in a thread; the result lands in ``.result``."""

        def target() -> None:
            try:
                self.result = self.session.run_prompt(prompt, **kwargs)
            except (Exception, ExecutionInterrupted) as exc:  # an interrupt is no Exception
                # the state already shows it; kept for the caller
                self.result = exc

        self.result = None
        self._thread = threading.Thread(target=target, name="comfy-run", daemon=True)
        self._thread.start()
        return self._thread

    def detach(self) -> None:
        """Stop following the session (the view keeps its last state)."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for link in self._links:
            link.unlink()
        self._links = []

    def text(self) -> str:
        """Plain-text status of the run."""
        return self.state.text()
