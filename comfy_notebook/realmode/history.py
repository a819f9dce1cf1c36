"""Image history: the IMAGE handles each notebook cell's runs made, and the session's recent ones.

A cell's history (:class:`CellImages`, shown by ``%comfy gallery CELL`` and
``Gallery.for_cell``) keeps one entry per distinct run.  Memory: the history holds its handles
(so their image tensors, shared with the cache, stay alive and the cache does not release those
entries when the cell reruns) for the last :data:`MAX_RUNS` distinct runs of each cell, and the
session's :data:`MAX_RECENT` newest images (``%comfy gallery`` with no cell named); older ones
are dropped, and :meth:`CellImages.forget` drops a cell's runs at once.  Nothing else is copied:
the pixels are the handles' values, the parameters come from ``handle.to_api()``.

Cells are followed by the IPython extension (``kernel_ext.cells`` calls
:func:`~comfy_notebook.realmode.calls.begin_cell` / ``end_cell``); this module only keeps what
they report.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from comfy_notebook.errors import ComfyNotebookError

__all__ = ["MAX_RECENT", "MAX_RUNS", "CellImages", "CellRun", "NoCellError"]

MAX_RUNS = 16  # distinct runs of one cell kept in its image history
MAX_RECENT = 64  # newest images of the session kept for %comfy gallery


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

    def __init__(self, max_runs: int = MAX_RUNS, max_recent: int = MAX_RECENT) -> None:
        self.max_runs = max_runs
        self._runs: dict[str, deque[CellRun]] = {}
        self._counts: dict[str, int] = {}  # distinct runs recorded per cell, dropped ones too
        self.max_recent = max_recent
        self._order: list[tuple[str, CellRun]] = []  # recorded runs of every cell, oldest first
        self.followed = False  # whether a cell was ever followed (the extension is in use)

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
            self._order.append((cell_id, run))
            kept = {id(r) for runs in self._runs.values() for r in runs}
            self._order = [(c, r) for c, r in self._order if id(r) in kept]
        else:  # a repeat of a kept run: it is the newest again
            key = CellRun(0, _distinct(handles)).key
            again = [(c, r) for c, r in self._order if c == cell_id and r.key == key]
            if again and key:
                self._order = [o for o in self._order if o is not again[0]] + again[:1]
        return run

    def recent(self, limit: int | None = None) -> list[Any]:
        """The session's newest IMAGE handles (from the kept runs of every cell), newest last.

        An image made again by a later run counts at its newest place.
        """
        newest: dict[tuple[str | None, int], Any] = {}
        for _, run in self._order:
            for h in run.handles:
                key = (h.signature, h.slot)
                newest.pop(key, None)
                newest[key] = h
        items = list(newest.values())[-self.max_recent:]
        return items if limit is None else items[-limit:]

    def runs(self, cell_id: str) -> list[CellRun]:
        """The kept runs of ``cell_id``, oldest first (the Gallery's order)."""
        return list(self._runs.get(cell_id, ()))

    def forget(self, cell_id: str | None = None) -> None:
        """Drop the runs (and their handles) of ``cell_id``, or of every cell."""
        if cell_id is None:
            self._runs.clear()
            self._order.clear()
            return
        self._runs.pop(cell_id, None)
        self._order = [(c, r) for c, r in self._order if c != cell_id]

    def __len__(self) -> int:
        return sum(len(runs) for runs in self._runs.values())


