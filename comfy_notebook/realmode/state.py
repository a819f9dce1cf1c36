"""Real-mode bookkeeping of a session: call plans, snapshots, live handles, the running cell.

The IPython extension reports cells (:func:`begin_cell` / :func:`end_cell`): cache entries used
by a cell are tagged with it, what its previous run made and this run no longer uses is
released, and its IMAGE handles go to the image history (:mod:`~comfy_notebook.realmode.history`).
"""

from __future__ import annotations

import weakref
from typing import Any

from comfy_notebook.realmode.binding import Plan, make_plan
from comfy_notebook.realmode.history import CellImages, CellRun, NoCellError
from comfy_notebook.realmode.recording import NodeOutput

__all__ = ["State", "begin_cell", "cell_runs", "end_cell", "recent_images", "state"]


class State:
    """Real-mode bookkeeping of one session: plans, snapshots, cells, live handles."""

    def __init__(self, session: Any) -> None:
        self.session = weakref.ref(session)
        self.plans: dict[str, Plan] = {}
        self.snapshots: dict[str, tuple[int, ...] | None] = {}
        self.slow_keys: set[str] = set()  # classes whose key the engine computes differently
        self.live: dict[str, list[weakref.ref[Any]]] = {}
        self.cell: str | None = None
        self.used_now: set[str] = set()
        self.used_by_cell: dict[str, set[str]] = {}
        self.cell_outputs: list[NodeOutput] = []
        self.cell_images: list[Any] = []  # IMAGE handles of the running cell, until end_cell
        self.last_outputs: list[NodeOutput] = []
        self.executed = 0  # node functions run by real-mode calls (hits do not count)
        self.calls = 0
        self.progress: Any = None
        self.history = CellImages()  # the images of each cell's runs, and the newest ones

    def plan(self, class_type: str) -> Plan:
        """The cached call plan of ``class_type`` (re-parsed if it was re-registered)."""
        spec = self.session().registry.get(class_type)  # type: ignore[union-attr]
        found = self.plans.get(class_type)
        if found is not None and found.spec is spec:
            return found
        if spec is None:
            raise KeyError(class_type)
        found = self.plans[class_type] = make_plan(spec)
        return found

    def note(self, sig: str, handles: list[Any]) -> None:
        """Record that the current cell uses ``sig`` and made ``handles``."""
        self.used_now.add(sig)
        if self.cell is not None:
            self.session().cache.tag(sig, "cell:" + self.cell)  # type: ignore[union-attr]
        refs = self.live.setdefault(sig, [])
        if len(refs) > 8:
            refs[:] = [r for r in refs if r() is not None]
        refs.extend(weakref.ref(h) for h in handles)
        self.cell_outputs.extend(h.node.refs[h.slot] for h in handles)  # no values held
        if self.cell is not None:  # for the cell's image history (history.CellImages)
            types = handles[0].node.spec.return_types if handles else ()
            self.cell_images.extend(h for h in handles if h.slot < len(types) and types[h.slot] == "IMAGE")

    def held(self, sig: str) -> bool:
        """Whether a live handle still holds the entry ``sig``."""
        return any(r() is not None for r in self.live.get(sig, ()))


_STATES: weakref.WeakKeyDictionary[Any, State] = weakref.WeakKeyDictionary()


def state(session: Any) -> State:
    """The real-mode state of ``session`` (created on first use)."""
    found = _STATES.get(session)
    if found is None:
        found = _STATES[session] = State(session)
        from comfy_notebook.realmode.progress import attach

        found.progress = attach(session)
    return found


def _current(session: Any) -> Any:
    if session is not None:
        return session
    from comfy_notebook._session import session as current

    return current()


def begin_cell(session: Any, cell_id: str | None) -> None:
    """Start tracking a notebook cell: cache entries used from now on are tagged with it."""
    st = state(session)
    st.cell = cell_id
    st.used_now = set()
    st.cell_outputs = []
    st.cell_images = []


def end_cell(session: Any) -> int:
    """Finish the cell: release what its previous run produced and it no longer uses.

    Entries still held by a live handle elsewhere stay.  Returns how many were released.
    """
    st = state(session)
    released = 0
    if st.cell is not None:
        if st.history.followed:  # the extension keeps an image history
            st.history.record(st.cell, st.cell_images)
        before = st.used_by_cell.get(st.cell, set())
        for sig in before - st.used_now:
            if not st.held(sig) and session.cache.release(sig):
                released += 1
                st.snapshots.pop(sig, None)
        st.used_by_cell[st.cell] = st.used_now
    if st.cell_outputs:
        st.last_outputs = st.cell_outputs
    st.cell = None
    st.used_now = set()
    st.cell_outputs = []
    st.cell_images = []
    for sig in [s for s, refs in st.live.items() if not any(r() is not None for r in refs)]:
        del st.live[sig]
    return released


def cell_runs(cell_id: str | None = None, session: Any = None) -> list[CellRun]:
    """The runs of ``cell_id`` (None: the running cell, its run so far included), oldest first.

    Raises
    ------
    NoCellError
        When no cell was ever followed (the IPython extension is not loaded), or ``cell_id``
        is None outside a running cell.
    """
    st = state(_current(session))
    images = st.history
    if not images.followed:
        raise NoCellError("a cell's image history needs the IPython extension; received none "
                          "loaded. Fix: run %load_ext comfy_notebook, then rerun the cell")
    if cell_id is not None:
        return images.runs(str(cell_id))
    if st.cell is None:
        raise NoCellError("cell_id=None means the running cell, but no cell is running; "
                          "pass the cell id explicitly")
    runs = images.runs(st.cell)
    now = images.pending(st.cell, st.cell_images)
    return [*runs, now] if now is not None else runs


def recent_images(limit: int | None = None, session: Any = None) -> list[Any]:
    """The session's newest IMAGE handles from real-mode calls, newest last (the running
    cell's included); what ``%comfy gallery`` shows when no cell is named."""
    st = state(_current(session))
    seen = {(h.signature, h.slot) for h in st.history.recent()}
    now = [h for h in st.cell_images if (h.signature, h.slot) not in seen]
    if st.cell is None:  # outside cells (a script): the calls' images so far
        now = []
    items = st.history.recent() + now
    return items if limit is None else items[-limit:]
