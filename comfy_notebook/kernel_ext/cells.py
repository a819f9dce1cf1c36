"""Cell events: cache entries tagged per cell, stale results released when a cell reruns.

``pre_run_cell`` starts tracking the cell (its id, or the cell text's hash where the frontend
sends no id); real-mode calls tag the cache entries they use.  ``post_run_cell`` releases what
the cell's previous run produced and this run no longer used, unless a live handle elsewhere
still holds it.  comfy_notebook errors are shown as one line (``%comfy traceback`` gives all).

Each cell's **image history** (:class:`CellImages`, shown by ``%comfy gallery`` and
``Gallery.for_cell``) is also kept here: the IMAGE handles a run of the cell produced, one entry
per distinct run.  Memory: the history holds its handles (so their image tensors, shared with
the cache, stay alive and the cache does not release those entries when the cell reruns) for
the last :data:`MAX_RUNS` distinct runs of each cell; older runs are dropped, and
``%comfy gallery clear`` / :meth:`CellImages.forget` drops a cell's runs at once.  Nothing else
is copied: the pixels are the handles' values, the parameters come from ``handle.to_api()``.
"""

from __future__ import annotations

import hashlib
import traceback
from collections import deque
from dataclasses import dataclass
from typing import Any

from comfy_notebook.errors import ComfyNotebookError

__all__ = ["MAX_RUNS", "CellEvents", "CellImages", "CellRun", "NoCellError", "cell_runs"]

MAX_RUNS = 16  # distinct runs of one cell kept in its image history


class NoCellError(ComfyNotebookError):
    """A cell's image history was asked for where there is no notebook cell to follow."""


@dataclass(frozen=True)
class CellRun:
    """One distinct run of a cell: its number (1 = the cell's first run with images) and images."""

    number: int
    handles: tuple[Any, ...]  # real-mode IMAGE handles, in call order

    @property
    def key(self) -> tuple[tuple[str | None, int], ...]:
        """What makes two runs identical: the signatures (cache keys) of their images."""
        return tuple((h.signature, h.slot) for h in self.handles)


def _distinct(handles: list[Any]) -> tuple[Any, ...]:
    """``handles`` without repeats of the same (signature, slot), first occurrence kept."""
    seen: set[tuple[str | None, int]] = set()
    out = []
    for h in handles:
        key = (h.signature, h.slot)
        if key not in seen:
            seen.add(key)
            out.append(h)
    return tuple(out)


class CellImages:
    """The last ``max_runs`` distinct runs of each cell that produced IMAGE handles."""

    def __init__(self, max_runs: int = MAX_RUNS) -> None:
        self.max_runs = max_runs
        self._runs: dict[str, deque[CellRun]] = {}
        self._counts: dict[str, int] = {}  # distinct runs recorded per cell, dropped ones too

    def pending(self, cell_id: str, handles: list[Any]) -> CellRun | None:
        """The run ``handles`` would add to ``cell_id`` (None: no images, or a run already kept)."""
        distinct = _distinct(handles)
        if not distinct:
            return None
        run = CellRun(self._counts.get(cell_id, 0) + 1, distinct)
        if any(old.key == run.key for old in self._runs.get(cell_id, ())):
            return None
        return run

    def record(self, cell_id: str, handles: list[Any]) -> CellRun | None:
        """Add a run of ``cell_id`` unless it has no images or repeats a kept run; returns it."""
        run = self.pending(cell_id, handles)
        if run is not None:
            self._counts[cell_id] = run.number
            self._runs.setdefault(cell_id, deque(maxlen=self.max_runs)).append(run)
        return run

    def runs(self, cell_id: str) -> list[CellRun]:
        """The kept runs of ``cell_id``, oldest first (the Gallery's order)."""
        return list(self._runs.get(cell_id, ()))

    def forget(self, cell_id: str | None = None) -> None:
        """Drop the runs (and their handles) of ``cell_id``, or of every cell."""
        if cell_id is None:
            self._runs.clear()
        else:
            self._runs.pop(cell_id, None)

    def __len__(self) -> int:
        return sum(len(runs) for runs in self._runs.values())


def _events() -> Any:
    """The extension's :class:`CellEvents` of the running IPython shell, or None."""
    try:
        from IPython.core.getipython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()  # type: ignore[no-untyped-call,unused-ignore]  # untyped before IPython 9
    return getattr(shell, "_comfy_notebook_events", None) if shell is not None else None


def cell_runs(cell_id: str | None = None) -> list[CellRun]:
    """The runs of ``cell_id`` (None: the running cell, its run so far included), oldest first.

    Raises
    ------
    NoCellError
        When the extension is not loaded, or ``cell_id`` is None outside a running cell.
    """
    events = _events()
    if events is None:
        raise NoCellError("a cell's image history needs the IPython extension; received none "
                          "loaded. Fix: run %load_ext comfy_notebook, then rerun the cell")
    images: CellImages = events.images
    if cell_id is not None:
        return images.runs(str(cell_id))
    if events.cell_id is None or events._session is None:
        raise NoCellError("cell_id=None means the running cell, but no cell is running; "
                          "pass the cell id explicitly")
    from comfy_notebook.realmode import state

    runs = images.runs(events.cell_id)
    now = images.pending(events.cell_id, state(events._session).cell_images)
    return [*runs, now] if now is not None else runs


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
        self.images = CellImages()
        self.cell_id: str | None = None  # the running cell
        self._session: Any = None

    def register(self) -> None:
        """Connect to the shell's cell events and exception display."""
        self.ipython.events.register("pre_run_cell", self.pre_run_cell)
        self.ipython.events.register("post_run_cell", self.post_run_cell)
        self.ipython.set_custom_exc((ComfyNotebookError,), self._show_error)

    def unregister(self) -> None:
        """Disconnect from the shell."""
        self.ipython.events.unregister("pre_run_cell", self.pre_run_cell)
        self.ipython.events.unregister("post_run_cell", self.post_run_cell)
        self.ipython.set_custom_exc((), None)

    def pre_run_cell(self, info: Any) -> None:
        """Start scoping cache entries to this cell."""
        from comfy_notebook.realmode import begin_cell

        cell_id = getattr(info, "cell_id", None)
        if not cell_id:
            raw = getattr(info, "raw_cell", "") or ""
            cell_id = "text:" + hashlib.blake2b(raw.encode(), digest_size=8).hexdigest()
        self._session = _session()
        self.cell_id = str(cell_id)
        begin_cell(self._session, self.cell_id)

    def post_run_cell(self, result: Any) -> None:
        """Record the run's images in the cell's history; release what it no longer uses."""
        from comfy_notebook.realmode import end_cell, state

        if self._session is not None:
            if self.cell_id is not None:
                self.images.record(self.cell_id, state(self._session).cell_images)
            self.released = end_cell(self._session)
            self._session = None
        self.cell_id = None

    def _show_error(self, shell: Any, etype: type, value: BaseException, tb: Any, tb_offset: Any = None) -> None:
        """Print a comfy_notebook error as one line; keep the traceback for ``%comfy traceback``."""
        self.last_error = value
        detail = getattr(value, "traceback_text", "") or ""
        self.last_traceback = "".join(traceback.format_exception(etype, value, tb)) + (
            "\n" + detail if detail else ""
        )
        _release_frames(value, tb)
        line = f"{etype.__name__}: {value}  (%comfy traceback for details)"
        show = getattr(shell, "_showtraceback", None)  # the kernel's hook: marks the cell failed
        if show is not None:
            show(etype, value, [line])
        else:
            print(line)
