"""Fault injection for the reliability tests: ONE place that enumerates the injection points.

Points come from the product's own hooks, never from a hand-written list, so new code is covered
without touching this file:

- every event the executor emits (``Executor.emit``): a node starting (just before its function
  runs), every sampling step (``ctx.progress`` -> ``NodeProgress``, the sampler's callback), a
  node finishing (after its outputs are stored);
- every placement step of the model manager: each of its private methods (``_place``,
  ``_load_full``, ``_load_partial``, ``_offload``, ``_patch``, ``_ensure_built``, ``_adopt`` and
  whatever is added later) found by iterating the class, minus the pure bookkeeping listed in
  :data:`BOOKKEEPING`, and each tensor mover of :mod:`comfy_notebook.runtime._movement`
  (its ``__all__``: flat pinned copies, full / partial placement, restoring the host copy, ...).

A point is ``(site, occurrence)``: the n-th time that site is reached in one run.  A discovery
run with :class:`Injector` (no target) lists them; a run with a target raises the fault there.
:func:`check_invariants` says what must hold afterwards.
"""

from __future__ import annotations

import gc
import sys
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from comfy_notebook.engine.events import NodeFinished, NodeProgress, NodeStarted
from comfy_notebook.runtime import _movement
from comfy_notebook.runtime.manager import ModelManager

# Private manager methods that only read or count (no placement happens in them).
BOOKKEEPING = frozenset({
    "_resolve", "_info", "_room", "_resident_bytes", "_emit", "_touch", "_check_idle",
    "_same_memory", "_external_for", "_moved", "_streamed",
})


def manager_sites() -> list[str]:
    """Private placement methods of :class:`ModelManager` (everything not bookkeeping)."""
    return sorted(name for name, fn in vars(ModelManager).items()
                  if name.startswith("_") and not name.startswith("__") and callable(fn)
                  and name not in BOOKKEEPING)


def movement_sites() -> list[str]:
    """The tensor movers the manager calls (``_movement.__all__``)."""
    return [name for name in _movement.__all__ if callable(getattr(_movement, name))]


@dataclass(frozen=True, order=True)
class Point:
    """An injection point: the ``occurrence``-th arrival at ``site`` during one run."""

    site: str
    occurrence: int

    @property
    def kind(self) -> str:
        """"node" (start / finish), "step" (sampling step), "file" (a read or a write, see
        ``io_faults.py``) or "placement" (manager, movers)."""
        head = self.site.split(":", 1)[0]
        return {"start": "node", "finish": "node", "step": "step", "read": "file",
                "write": "file"}.get(head, "placement")

    def __str__(self) -> str:
        return f"{self.site}#{self.occurrence}"


@dataclass
class Injector:
    """Hooks a session; records every point reached; raises ``fault(point)`` at ``target``.

    ``persistent``: raise at the target and at every later arrival at the same site (a fault
    that does not go away on retry, e.g. a device that really is full).
    """

    target: Point | None = None
    fault: Callable[[Point], BaseException | None] | None = None
    persistent: bool = False
    hits: list[Point] = field(default_factory=list)
    fired: int = 0
    finished: set[str] = field(default_factory=set)  # nodes whose outputs were stored
    # weak references to the tensors the interrupted frames held when the fault was raised
    frame_tensors: list[weakref.ref[torch.Tensor]] = field(default_factory=list)
    _counts: Counter[str] = field(default_factory=Counter)
    _classes: dict[str, str] = field(default_factory=dict)

    def reach(self, site: str) -> None:
        """Arrive at ``site``: record the point, raise the fault if it is the target."""
        point = Point(site, self._counts[site])
        self._counts[site] += 1
        self.hits.append(point)
        t = self.target
        if t is None or self.fault is None or t.site != site:
            return
        if point.occurrence == t.occurrence or (self.persistent and point.occurrence > t.occurrence):
            self.fired += 1
            exc = self.fault(point)
            if exc is not None:  # a fault that only asks (an interrupt request) raises nothing
                self._snapshot_frames(sys._getframe(1))
                raise exc

    def _snapshot_frames(self, frame: Any) -> None:
        while frame is not None:
            for value in list(frame.f_locals.values()):
                if isinstance(value, torch.Tensor) and not isinstance(value, torch.nn.Parameter):
                    self.frame_tensors.append(weakref.ref(value))
            frame = frame.f_back

    # -- hooks --------------------------------------------------------------------------------
    def _on_event(self, event: Any) -> None:
        if isinstance(event, NodeStarted):
            self._classes[event.node_id] = event.class_type
            self.reach(f"start:{event.class_type}")
        elif isinstance(event, NodeProgress):
            self.reach(f"step:{self._classes.get(event.node_id, '?')}")
        elif isinstance(event, NodeFinished):
            self.finished.add(event.node_id)  # emitted after the outputs are stored
            self.reach(f"finish:{event.class_type}")

    @contextmanager
    def installed(self, session: Any) -> Iterator[Injector]:
        """Install the hooks on ``session`` (its executor and model manager) for the block."""
        executor = session.executor
        manager = session.models
        emit = executor.emit

        def hooked_emit(event: Any) -> None:
            self._on_event(event)
            emit(event)

        def wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
            def wrapped(*args: Any, **kwargs: Any) -> Any:
                self.reach(name)
                return fn(*args, **kwargs)

            wrapped.__wrapped__ = fn  # type: ignore[attr-defined]
            return wrapped

        executor.emit = hooked_emit
        for name in manager_sites():
            setattr(manager, name, wrap(f"manager.{name}", getattr(manager, name)))
        saved = {name: getattr(_movement, name) for name in movement_sites()}
        for name, fn in saved.items():
            setattr(_movement, name, wrap(f"movement.{name}", fn))
        try:
            yield self
        finally:
            executor.emit = emit
            for name in manager_sites():
                manager.__dict__.pop(name, None)
            for name, fn in saved.items():
                setattr(_movement, name, fn)


# -- invariants ----------------------------------------------------------------------------------
def _walk_tensors(value: Any, out: set[int], depth: int = 0) -> None:
    if depth > 12:
        return
    if isinstance(value, torch.Tensor):
        out.add(id(value))
    elif isinstance(value, dict):
        for v in value.values():
            _walk_tensors(v, out, depth + 1)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _walk_tensors(v, out, depth + 1)


def owned_tensor_ids(session: Any) -> set[int]:
    """Tensors legitimately kept after a run: cached outputs and the managed models' weights."""
    out: set[int] = set()
    for key in session.cache.keys():  # noqa: SIM118 - Cache is not iterable
        entry = session.cache.peek(key)
        _walk_tensors(entry.outputs, out)
        _walk_tensors(entry.ui, out)
    manager = session.services.models_loaded
    if manager is not None:
        for m in manager._models.values():
            _walk_tensors(m._master, out)
            _walk_tensors(list(m._host_buffers.values()), out)
            if m._module is not None:
                _walk_tensors(list(m._module.state_dict(keep_vars=True).values()), out)
                for mod in m._module.modules():
                    _walk_tensors(list(mod.__dict__.values()), out)
    return out


def leaked(session: Any, injector: Injector) -> list[str]:
    """Tensors the faulted frames held that are still alive after gc and owned by nobody
    legitimate (not a cached output, not a model weight)."""
    gc.collect()
    owned = owned_tensor_ids(session)
    out = []
    for ref in injector.frame_tensors:
        t = ref()
        if t is not None and id(t) not in owned:
            out.append(f"tensor {tuple(t.shape)} {t.dtype}")
    return out


def settle() -> None:
    """Collect, then freeze what survives: later collections scan only newer objects (the
    torch / transformers heap would cost a third of a second per collection)."""
    gc.collect()
    gc.freeze()


def check_manager(manager: ModelManager) -> list[str]:
    """The manager's accounting against the modules' reality; returns the problems found."""
    problems = []
    if manager._reserved != 0:
        problems.append(f"{manager._reserved} bytes of inference memory still reserved")
    if manager.capacity_bytes is not None and manager.memory_free() < 0:
        problems.append(f"accounted free memory is negative ({manager.memory_free()})")
    for m in manager._models.values():
        if m.in_use:
            problems.append(f"{m.name} still marked in use ({m._in_use})")
        if m._module is None:
            if m._on_device or m._streamer is not None or m._resident:
                problems.append(f"{m.name} unloaded but accounted on the device")
            continue
        real = {id(p): p.numel() * p.element_size() for p in m._module.parameters()}
        if m.nbytes != sum(real.values()):
            problems.append(f"{m.name} accounts {m.nbytes} weight bytes, its module has {sum(real.values())}")
        if len(m._master) != len(real):
            problems.append(f"{m.name} has {len(m._master)} host master tensors for {len(real)} parameters")
        streamed = {u.prefix for u in m._streamer.units} if m._streamer is not None else set()
        if m._streamer is not None and not m._on_device:
            problems.append(f"{m.name} has streaming hooks but is not on the device")
        if not m._on_device and (m._resident or m.loaded_bytes):
            problems.append(f"{m.name} is on the host but accounts {m.loaded_bytes} device bytes")
        for unit in m._units:
            hooks = len(unit.module._forward_pre_hooks) + len(unit.module._forward_hooks)
            want = 2 if unit.prefix in streamed else 0
            if hooks != want:
                problems.append(f"{m.name}:{unit.prefix} has {hooks} forward hooks, expected {want}")
            on_device = m._on_device and unit.prefix in m._resident
            for local, key in unit.params:
                p = unit.module._parameters[local]
                expect = manager.device if on_device else manager.host
                if p.device.type != expect.type:
                    problems.append(f"{m.name}:{key} on {p.device}, accounted on {expect}")
                if not on_device and p.data_ptr() != m._master[key].data_ptr():
                    problems.append(f"{m.name}:{key} does not point at its host master copy")
                if (on_device and manager._same_memory() and key not in m._applied_patches
                        and p.data_ptr() != m._master[key].data_ptr()):
                    problems.append(f"{m.name}:{key} carries a stale patch")
        if m._streamer is not None and m._resident & streamed:
            problems.append(f"{m.name}: units both resident and streamed")
    return problems


def check_cache(session: Any, finished: set[str], clean_sigs: dict[str, str],
                before: set[str]) -> list[str]:
    """No cache entry for a node that did not finish; every new entry is a finished node's."""
    problems = []
    allowed = {clean_sigs[n] for n in finished if n in clean_sigs} | before
    for node_id, sig in clean_sigs.items():
        if node_id not in finished and sig in session.cache and sig not in before:
            problems.append(f"cache holds an entry for unfinished node {node_id}")
    extra = [k for k in session.cache.keys() if k not in allowed]  # noqa: SIM118
    if extra:
        problems.append(f"{len(extra)} cache entries no finished node made")
    return problems


def check_invariants(session: Any, finished: set[str], clean_sigs: dict[str, str],
                     cache_before: set[str] = frozenset()) -> list[str]:  # type: ignore[assignment]
    """Manager and cache invariants after a faulted run (empty list: all hold)."""
    problems = check_cache(session, finished, clean_sigs, set(cache_before))
    manager = session.services.models_loaded
    if manager is not None:
        problems += check_manager(manager)
    return problems


# -- the scenario: ComfyUI's default prompt on the tiny checkpoint -----------------------------
CKPT = "tiny.safetensors"


def tiny_prompt(seed: int = 7, steps: int = 3) -> dict[str, Any]:
    """ComfyUI's default prompt on the tiny SD1 checkpoint at 64 px, a few steps."""
    from comfy_notebook.demo import default_prompt

    api = default_prompt()
    api["4"]["inputs"]["ckpt_name"] = CKPT
    api["5"]["inputs"].update(width=64, height=64)
    api["3"]["inputs"].update(seed=seed, steps=steps)
    return api


def new_session(root: Any, *, capacity: int | None = None) -> Any:
    """A fresh session on ``root`` (optionally a manager with a simulated device capacity)."""
    from comfy_notebook._session import Session
    from comfy_notebook.nodes import register_builtins

    s = Session(models_dir=root, output_dir=root / "output")
    register_builtins(s)
    if capacity is not None:
        s.services.models = ModelManager(capacity_bytes=capacity)
    return s


@dataclass
class Reference:
    """A clean run: its image, its cache keys and the injection points it reached."""

    image: torch.Tensor
    sigs: dict[str, str]
    points: list[Point]


def clean_run(root: Any, api: dict[str, Any], *, capacity: int | None = None,
              injector_type: type[Injector] = Injector) -> Reference:
    s = new_session(root, capacity=capacity)
    injector = injector_type()
    with injector.installed(s):
        result = s.run_prompt(api)
    return Reference(result.outputs["8"][0].clone(), dict(result.signatures), list(injector.hits))


@dataclass
class Outcome:
    """What one faulted run did and what was wrong afterwards."""

    point: Point
    raised: BaseException | None
    problems: list[str]
    identical: bool
    leaks: list[str]


def run_point(root: Any, api: dict[str, Any], ref: Reference, point: Point,
              fault: Callable[[Point], BaseException | None] | None, *, capacity: int | None = None,
              persistent: bool = False, flag: bool = False,
              injector_type: type[Injector] = Injector) -> Outcome:
    """Run ``api`` on a fresh session with ``fault`` raised at ``point`` (``flag``: ask for an
    interrupt there instead); check the invariants; rerun and compare with the clean image."""
    s = new_session(root, capacity=capacity)
    if flag:
        session = weakref.ref(s)  # the fault must not keep the session alive after the run

        def ask(p: Point) -> None:
            found = session()
            if found is not None:
                found.interrupt()

        fault = ask
    injector = injector_type(point, fault, persistent=persistent)
    raised: BaseException | None = None
    with injector.installed(s):
        try:
            s.run_prompt(api)
        except BaseException as exc:
            raised = exc
    kind = _describe(raised)
    raised = None  # drop the traceback before looking for leaks
    problems = check_invariants(s, injector.finished, ref.sigs)
    leaks = leaked(s, injector)
    try:
        s.run_prompt(api)
        identical = torch.equal(image_of(s, ref), ref.image)
    except BaseException as exc:
        problems.append(f"rerun raised {type(exc).__name__}: {exc}")
        identical = False
    problems += check_manager(s.models)
    del s, injector
    settle()
    return Outcome(point, kind, problems, identical, leaks)


def image_of(session: Any, ref: Reference) -> torch.Tensor:
    """The decoded image (node 8) as the session's cache holds it after a run."""
    entry = session.cache.peek(ref.sigs["8"])
    assert entry is not None, "the rerun did not store the decoded image"
    return entry.outputs[0][0]  # type: ignore[no-any-return]


def _describe(exc: BaseException | None) -> Any:
    """A traceback-free record of what a run raised: (type, original type, message)."""
    if exc is None:
        return None
    original = getattr(exc, "original", None) or exc.__cause__
    return (type(exc).__name__, type(original).__name__ if original is not None else None, str(exc)[:300])
