"""Cell events: cache entries tagged per cell, stale results released when a cell reruns.

``pre_run_cell`` starts tracking the cell (its id, or the cell text's hash where the frontend
sends no id); real-mode calls tag the cache entries they use.  ``post_run_cell`` releases what
the cell's previous run produced and this run no longer used, unless a live handle elsewhere
still holds it, and records the run's images in the cell's history
(:mod:`comfy_notebook.realmode.history`).  comfy_notebook errors are shown as one line
(``%comfy traceback`` gives all).
"""

from __future__ import annotations

import hashlib
import traceback
from typing import Any

from comfy_notebook.errors import ComfyNotebookError, ExecutionInterrupted

# The image history lives in real mode; re-exported here for the extension's users.
from comfy_notebook.realmode.history import MAX_RUNS, CellImages, CellRun, NoCellError
from comfy_notebook.realmode.state import cell_runs

__all__ = ["MAX_RUNS", "CellEvents", "CellImages", "CellRun", "NoCellError", "cell_runs"]


def _session() -> Any:
    from comfy_notebook._session import session

    return session()


def _release_frames(error: BaseException, tb: Any) -> None:
    """Free the finished frames behind ``error``, its causes and contexts.

    An interrupted or failed node leaves its frames (UNet forward, sampler loop) in the
    traceback chain, and the error stays referenced after the cell (``last_error``, IPython's
    last result).  Their locals, and the closures of the functions they ran, would keep the
    model module and activations alive, so ``%comfy unload all`` could not free the weights
    (nor a GPU its memory).  Locals are cleared (executing frames are left alone) and the
    chain lets go of its tracebacks; ``%comfy traceback`` keeps the text, formatted before.
    """
    if tb is not None:
        traceback.clear_frames(tb)
    seen: set[int] = set()
    stack: list[Any] = [error]
    while stack:
        exc = stack.pop()
        if not isinstance(exc, BaseException) or id(exc) in seen:
            continue
        seen.add(id(exc))
        if exc.__traceback__ is not None:
            traceback.clear_frames(exc.__traceback__)
            exc.__traceback__ = None
        stack += [exc.__cause__, exc.__context__, getattr(exc, "original", None)]


class CellEvents:
    """The IPython hooks of the extension (one per shell)."""

    def __init__(self, ipython: Any) -> None:
        self.ipython = ipython
        self.last_error: BaseException | None = None
        self.last_traceback = ""
        self.released = 0  # entries released by the last post_run_cell
        self.cell_id: str | None = None  # the running cell
        self._session: Any = None

    @property
    def images(self) -> CellImages:
        """The current session's image history (kept by real mode)."""
        from comfy_notebook.realmode.state import state

        return state(_session()).history

    @images.setter
    def images(self, value: CellImages) -> None:
        from comfy_notebook.realmode.state import state

        value.followed = True
        state(_session()).history = value

    def register(self) -> None:
        """Connect to the shell's cell events and exception display."""
        self.ipython.events.register("pre_run_cell", self.pre_run_cell)
        self.ipython.events.register("post_run_cell", self.post_run_cell)
        self.ipython.set_custom_exc((ComfyNotebookError, ExecutionInterrupted), self._show_error)

    def unregister(self) -> None:
        """Disconnect from the shell (cells are no longer followed)."""
        from comfy_notebook.realmode.state import state

        state(_session()).history.followed = False
        self.ipython.events.unregister("pre_run_cell", self.pre_run_cell)
        self.ipython.events.unregister("post_run_cell", self.post_run_cell)
        self.ipython.set_custom_exc((), None)

    def pre_run_cell(self, info: Any) -> None:
        """Start scoping cache entries to this cell."""
        from comfy_notebook.realmode import begin_cell, state

        cell_id = getattr(info, "cell_id", None)
        if not cell_id:
            raw = getattr(info, "raw_cell", "") or ""
            cell_id = "text:" + hashlib.blake2b(raw.encode(), digest_size=8).hexdigest()
        self._session = _session()
        self.cell_id = str(cell_id)
        state(self._session).history.followed = True  # keep this session's image history
        begin_cell(self._session, self.cell_id)

    def post_run_cell(self, result: Any) -> None:
        """Record the run's images in the cell's history; release what it no longer uses."""
        from comfy_notebook.realmode import end_cell

        if self._session is not None:
            self.released = end_cell(self._session)
            self._session = None
        self.cell_id = None

    def _show_error(self, shell: Any, etype: type, value: BaseException, tb: Any, tb_offset: Any = None) -> None:
        """Print a comfy_notebook error as one line; keep the traceback for ``%comfy traceback``."""
        self.last_error = value
        chain = "".join(traceback.format_exception(etype, value, tb))
        detail = getattr(value, "traceback_text", "") or ""
        cause = value.__cause__
        if cause is not None and cause.__traceback__ is not None:
            detail = ""  # the chain above already holds the node's traceback: print it once
        self.last_traceback = chain + ("\n" + detail if detail else "")
        _release_frames(value, tb)
        line = f"{etype.__name__}: {value}  (%comfy traceback for details)"
        show = getattr(shell, "_showtraceback", None)  # the kernel's hook: marks the cell failed
        if show is not None:
            show(etype, value, [line])
        else:
            print(line)
        _show_unsaved(value)


def unsaved_images(error: BaseException) -> Any:
    """The images a failed save kept (an ``OutputWriteError``, or the error wrapping one)."""
    for candidate in (error, getattr(error, "original", None), error.__cause__):
        images = getattr(candidate, "images", None)
        if images is not None:
            return images
    return None


def _show_unsaved(error: BaseException) -> None:
    """A save that failed (full or read-only disk) still shows its images under the error."""
    images = unsaved_images(error)
    if images is None:
        return
    from IPython.display import display

    from comfy_notebook.realmode.display import images_png

    png = images_png(images)
    if png is not None:
        display({"image/png": png}, raw=True)  # type: ignore[no-untyped-call,unused-ignore]
