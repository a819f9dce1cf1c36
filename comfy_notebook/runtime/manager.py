"""ModelManager: which models sit on the compute device, and moving them under a budget.

One manager per Session.  Models are registered with a factory that rebuilds them from their file,
so ``unload`` can free the weights while every :class:`ModelRef` stays valid.  Host weights are the
master copy (one pinned flat buffer per model on CUDA); the device holds a working copy, so
offloading copies nothing back and reloading is one large DMA.  Accounting mode
(``capacity_bytes``) runs the same eviction / partial-load logic on a CPU-only machine.

The tensor copies themselves (flat buffers, views, device copies, patches on the device) are in
:mod:`._movement`; the per-model state and the records are in :mod:`._managed`.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import fields
from typing import Any, TypeVar

import torch
from torch import nn

from comfy_notebook._units import human_bytes
from comfy_notebook.errors import ComfyNotebookError, ModelLoadError, ModelMemoryError
from comfy_notebook.runtime import _movement as mv
from comfy_notebook.runtime._managed import (
    ManagedModel,
    ManagerStats,
    ModelInfo,
    ModelInUseError,
    ModelMoved,
    UnknownModelError,
    estimate_unet_memory,
)
from comfy_notebook.runtime.devices import KINDS, DevicePolicy
from comfy_notebook.runtime.graphs import StepGraphs
from comfy_notebook.runtime.patches import ModelRef
from comfy_notebook.runtime.streaming import Streamer

__all__ = [
    "ManagedModel",
    "ManagerStats",
    "ModelInUseError",
    "ModelInfo",
    "ModelManager",
    "ModelMoved",
    "ModelRef",
    "UnknownModelError",
    "estimate_unet_memory",
]

T = TypeVar("T")
_NO_LIMIT = 1 << 62


class ModelManager:
    """Registers models, moves them between host and device, and keeps within a VRAM budget.

    Parameters
    ----------
    policy:
        Devices and dtypes; defaults to :meth:`DevicePolicy.auto` (probed when constructed).
    budget_bytes:
        Most bytes the manager lets models plus inference memory take on the device.
    reserve_bytes:
        Device memory always left free (400 MiB on CUDA by default, 0 otherwise).
    capacity_bytes:
        A fake device capacity: accounting-only mode, for tests and CPU-only machines.
    device:
        Override of ``policy.device``.
    """

    def __init__(self, policy: DevicePolicy | None = None, *, budget_bytes: int | None = None,
                 reserve_bytes: int | None = None, capacity_bytes: int | None = None,
                 device: torch.device | str | None = None) -> None:
        self.policy = policy or DevicePolicy.auto()
        self.device = torch.device(device) if device is not None else self.policy.device
        self.host = self.policy.offload_device
        self.capacity_bytes = capacity_bytes
        self.budget_bytes = budget_bytes
        if reserve_bytes is None:
            reserve_bytes = 400 << 20 if (self.device.type == "cuda" and capacity_bytes is None) else 0
        self.reserve_bytes = reserve_bytes
        self._models: dict[str, ManagedModel] = {}
        self._lock = threading.RLock()
        self._idle = threading.Condition(self._lock)  # notified when a model stops being in use
        self._seq = itertools.count(1)
        self._reserved = 0
        self._subscribers: list[Callable[[ModelMoved], None]] = []
        self._external: list[Any] = []  # other worlds' models (an attached ComfyUI)
        self._stats: dict[str, Any] = {f.name: f.default for f in fields(ManagerStats)}
        # captured sampling steps; they listen to this manager's moves (runtime.graphs)
        self.graphs = StepGraphs(self)

    # -- registry -----------------------------------------------------------------------------
    def register(self, name: str, factory: Callable[[], nn.Module] | None = None, *, kind: str,
                 source: str | None = None, dtype: torch.dtype | None = None,
                 module: nn.Module | None = None, family: str | None = None) -> ManagedModel:
        """Register a model; returns its :class:`ManagedModel` (``.ref()`` gives a handle).

        ``factory`` rebuilds the module from ``source`` after an unload; ``module`` is an
        already built instance (e.g. one part of a checkpoint that was loaded once).  Without
        ``dtype`` a known kind ("unet", "vae", "clip") gets the policy's dtype for it, so the
        weights always have the dtype the callers cast their inputs to (fp16 UNet on CUDA).
        """
        with self._lock:
            if name in self._models:
                raise ComfyNotebookError(
                    f"a model named {name!r} is already registered; expected a new name. "
                    "Fix: unregister it first or choose another name.")
            if factory is None and module is None:
                raise ModelLoadError(
                    f"model {name!r}: expected a factory or a built module, received neither. "
                    "Fix: pass factory=lambda: ... that builds the nn.Module.")
            if dtype is None and kind in KINDS:
                dtype = self.policy.dtype_for(kind)
            m = ManagedModel(self, name, factory, kind, source, dtype, family)
            self._models[name] = m
            if module is not None:
                try:
                    self._adopt(m, module, reason="registered")
                except BaseException as exc:  # interrupted or failed: nothing half-registered stays
                    self._models.pop(name, None)
                    if isinstance(exc, torch.OutOfMemoryError):
                        raise self._host_memory_error(m, "making its host copy", exc) from exc
                    raise
            return m

    def unregister(self, m: ManagedModel | ModelRef | str) -> None:
        """Forget a model (unloading it first); existing refs then fail on use."""
        with self._lock:
            model = self._resolve(m)
            self._check_idle(model, "unregister")
            self._offload(model, "unregister")
            model._module = None
            self._models.pop(model.name, None)

    def __getitem__(self, name: str) -> ManagedModel:
        return self._resolve(name)

    def __contains__(self, name: object) -> bool:
        return name in self._models

    def __len__(self) -> int:
        return len(self._models)

    def _resolve(self, m: ManagedModel | ModelRef | str) -> ManagedModel:
        if isinstance(m, ModelRef):
            m = m.base
        if isinstance(m, str):
            if m not in self._models:
                raise UnknownModelError(
                    f"no model named {m!r}; expected one of {sorted(self._models)}. "
                    "Fix: check manager.list() for the registered names.")
            return self._models[m]
        if not isinstance(m, ManagedModel) or self._models.get(m.name) is not m:
            raise UnknownModelError(f"{m!r} is not registered with this manager")
        return m

    # -- observation --------------------------------------------------------------------------
    @property
    def stats(self) -> ManagerStats:
        """A snapshot of the counters (bytes moved, seconds moving, loads, evictions, ...)."""
        return ManagerStats(**self._stats)

    def subscribe(self, fn: Callable[[ModelMoved], None]) -> Callable[[], None]:
        """Call ``fn(event)`` on every move; returns a function that unsubscribes."""
        self._subscribers.append(fn)

        def unsubscribe() -> None:
            if fn in self._subscribers:
                self._subscribers.remove(fn)

        return unsubscribe

    def add_external(self, provider: Any) -> None:
        """Show and control another world's models (an attached ComfyUI's) through this manager.

        ``provider`` has ``rows()`` (dicts with name, kind, bytes, where, world), ``names()``,
        ``load``/``offload``/``unload(name)`` and ``unload_all()``.
        """
        self._external.append(provider)

    def _external_for(self, m: Any) -> Any:
        if isinstance(m, str) and m not in self._models:
            return next((p for p in self._external if m in p.names()), None)
        return None

    def list(self) -> list[ModelInfo]:
        """One row per registered model (then the rows of attached worlds)."""
        with self._lock:
            rows = [self._info(m) for m in self._models.values()]
        for provider in self._external:
            for r in provider.rows():
                rows.append(ModelInfo(r["name"], r["kind"], None, r["bytes"], None, r["where"],
                                      r["bytes"], None, False, False, False, (), None,
                                      world=r["world"]))
        return rows

    def _info(self, m: ManagedModel) -> ModelInfo:
        holders = tuple(sorted(r.holder or "<ref>" for r in list(m._refs)))
        held = self.graphs.held(m.name)
        # fp8-stored models compute in m.dtype but hold their weights in the storage dtype: show that
        stored = getattr(m._module, "storage_dtype", None) if m._module is not None else None
        dtype = stored if isinstance(stored, torch.dtype) and stored.itemsize == 1 else m.dtype
        return ModelInfo(m.name, m.kind, m.source, m.nbytes, dtype, m.where, m.loaded_bytes,
                         m.last_used, m.pinned, m.keep_loaded, m.in_use, holders, m.family,
                         graphs=len(held), graph_bytes=sum(g.nbytes for g in held))

    def __repr__(self) -> str:
        head = f"ModelManager(device={self.device}, used={human_bytes(self._resident_bytes())}"
        if self.budget_bytes is not None:
            head += f", budget={human_bytes(self.budget_bytes)}"
        if self.capacity_bytes is not None:
            head += f", capacity={human_bytes(self.capacity_bytes)}"
        lines = [head + f", reserve={human_bytes(self.reserve_bytes)})"]
        rows = [("name", "kind", "where", "loaded/size", "dtype", "last used", "flags")]
        for i in self.list():
            flags = ",".join(f for f, on in (("in use", i.in_use), ("keep", i.keep_loaded),
                                               ("pinned", i.pinned)) if on)
            used = time.strftime("%H:%M:%S", time.localtime(i.last_used)) if i.last_used else "-"
            rows.append((i.name, i.kind, i.location, f"{human_bytes(i.loaded_bytes)}/{human_bytes(i.bytes)}",
                         str(i.dtype).replace("torch.", ""), used, flags or "-"))
        widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
        lines += ["  " + "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
                  for r in rows]
        return "\n".join(lines)

    # -- memory -------------------------------------------------------------------------------
    def read_device(self) -> torch.device:
        """Where model files are read to before registering: straight onto a CUDA compute device
        (pinned, pipelined reads; :meth:`register` then keeps the pinned host master), unless a
        budget or a simulated capacity limits the device, which the temporary copy could breach."""
        if self.device.type == "cuda" and self.budget_bytes is None and self.capacity_bytes is None:
            return self.device
        return torch.device("cpu")

    def _resident_bytes(self) -> int:
        return sum(m.loaded_bytes for m in self._models.values())

    def memory_free(self, device: torch.device | str | None = None) -> int:
        """Free bytes on the device: accounting capacity, or ``torch.cuda.mem_get_info``."""
        if self.capacity_bytes is not None:
            return self.capacity_bytes - self._resident_bytes() - self._reserved
        dev = torch.device(device) if device is not None else self.device
        if dev.type == "cuda":
            free, _ = torch.cuda.mem_get_info(dev)
            cached = torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
            return int(free + cached)
        return _NO_LIMIT

    def _room(self) -> int:
        """Bytes that may still be allocated on the device under budget and reserve."""
        room = self.memory_free() - self.reserve_bytes
        if self.budget_bytes is not None:
            room = min(room, self.budget_bytes - self._resident_bytes() - self._reserved)
        return room

    def set_budget(self, budget_bytes: int | None, reserve_bytes: int | None = None) -> None:
        """Set the VRAM budget (None: no budget) and reserve; evicts LRU models to comply."""
        with self._lock:
            self.budget_bytes = budget_bytes
            if reserve_bytes is not None:
                self.reserve_bytes = reserve_bytes
            self.free_memory(0)

    def keep_loaded(self, m: ManagedModel | ModelRef | str, flag: bool = True) -> None:
        """Exempt a model from automatic eviction (explicit offload/unload still work)."""
        self._resolve(m).keep_loaded = flag

    def free_memory(self, bytes_needed: int, device: torch.device | str | None = None,
                    keep: tuple = ()) -> int:
        """Offload least recently used models (not in use, not kept) until ``bytes_needed`` fit.

        Returns the number of device bytes freed.
        """
        with self._lock:
            keep_models = {id(self._resolve(k)) for k in keep}
            freed = 0
            victims = sorted((m for m in self._models.values() if m.loaded_bytes > 0
                              and not m.in_use and not m.keep_loaded
                              and id(m) not in keep_models), key=lambda m: m._seq)
            for m in victims:
                if self._room() >= bytes_needed:
                    break
                freed += m.loaded_bytes
                self._offload(m, "evicted")
                self._stats["evictions"] += 1
            if freed and self.device.type == "cuda":
                torch.cuda.empty_cache()
            return freed

    def _emit(self, m: ManagedModel, source: str, target: str, nbytes: int, seconds: float,
              reason: str) -> None:
        event = ModelMoved(m.name, source, target, nbytes, seconds, reason)
        for fn in list(self._subscribers):
            fn(event)

    def _same_memory(self) -> bool:
        """True when the compute device is the host: moves are bookkeeping, patches out-of-place."""
        return self.device == self.host or (self.device.type == "cpu" and self.host.type == "cpu")

    def _ensure_built(self, m: ManagedModel) -> None:
        if m._module is not None:
            return
        if m.factory is None:
            raise ModelLoadError(f"model {m.name!r} has no factory to rebuild it from its file")
        t0 = time.perf_counter()
        try:
            module = m.factory()
        except ComfyNotebookError:
            raise
        except torch.OutOfMemoryError as exc:
            raise self._host_memory_error(m, "rebuilding it from its file", exc) from exc
        except Exception as exc:
            raise ModelLoadError(
                f"rebuilding model {m.name!r} from {m.source!r} failed: {type(exc).__name__}: "
                f"{exc}. Fix: check that the file still exists and is readable.") from exc
        if not isinstance(module, nn.Module):
            raise ModelLoadError(
                f"the factory of model {m.name!r} returned {type(module).__name__}; expected an "
                "nn.Module. Fix: make the factory return the built module.")
        self._stats["reloads"] += 1
        try:
            self._adopt(m, module, reason="loaded from file", t0=t0)
        except torch.OutOfMemoryError as exc:
            raise self._host_memory_error(m, "making its host copy", exc) from exc

    def _adopt(self, m: ManagedModel, module: nn.Module, *, reason: str,
               t0: float | None = None) -> None:
        """Take ownership of a built module: dtype, eval mode, host master copy (pinned)."""
        t0 = time.perf_counter() if t0 is None else t0
        pin = self.policy.pin_memory and self.device.type == "cuda" and torch.cuda.is_available()
        try:
            if m.dtype is not None and getattr(module, "compute_dtype", None) is None:
                module.to(dtype=m.dtype)  # modules with a compute_dtype (fp8 storage) keep their dtypes
            module.eval().requires_grad_(False)
            if pin:  # weights read straight onto the device (fastread) are copied into the pinned master
                mv.buffers_to(module, self.host)
            elif any(p.device != self.host for p in module.parameters()):
                module.to(self.host)
            m._module = module
            mv.adopt_weights(m, module, pin=pin)
        except BaseException:  # no half-adopted state: the model counts as unloaded
            m._module, m._master, m._flat_host, m._units, m._host_buffers = None, {}, None, [], {}
            m.nbytes = m.buffer_bytes = 0
            raise
        self._emit(m, "file", "cpu", m.nbytes, time.perf_counter() - t0, reason)

    def _host_memory_error(self, m: ManagedModel, doing: str, exc: BaseException) -> ModelMemoryError:
        pinned = " (pinned)" if self.policy.pin_memory and self.device.type == "cuda" else ""
        return ModelMemoryError(
            f"out of memory {doing} for model {m.name!r} from {m.source!r}: the host{pinned} copy "
            f"of its weights could not be allocated ({type(exc).__name__}: {exc}). Nothing of it "
            "stays half-loaded. Fix: unload models you no longer need (%comfy unload all), or "
            "free host memory, then run the node again.")

    # -- explicit verbs -----------------------------------------------------------------------
    def load(self, m: ManagedModel | ModelRef | str, device: torch.device | str | None = None,
             *, memory_required: int = 0) -> None:
        """Put a model on the compute device (``device="cpu"`` offloads), evicting LRU models.

        A ref's patches are applied; loads partially when the model alone does not fit.
        """
        with self._lock:
            model = self._resolve(m)
            if device is not None and torch.device(device) == self.host and self.device != self.host:
                self.offload(model)
                return
            ref = m if isinstance(m, ModelRef) else None
            self._ensure_built(model)
            self._place(model, memory_required)
            self._patch(model, ref)
            model._transient = False
            self._touch(model)

    def offload(self, m: ManagedModel | ModelRef | str) -> None:
        """Free the model's device memory; the pinned host copy makes the next load fast."""
        external = self._external_for(m)
        if external is not None:
            external.offload(m)
            return
        with self._lock:
            model = self._resolve(m)
            self._check_idle(model, "offload")
            self._offload(model, "offload")

    def unload(self, m: ManagedModel | ModelRef | str, *, wait: float = 0.0) -> None:
        """Free the weights everywhere; refs stay valid and the next use rebuilds from the file.

        A model a running node is using (a prompt on another thread) is waited for up to
        ``wait`` seconds, then refused with :class:`ModelInUseError`; weights are never freed
        under a running sampler.
        """
        external = self._external_for(m)
        if external is not None:
            external.unload(m)
            return
        with self._lock:
            model = self._resolve(m)
            self._check_idle(model, "unload", wait)
            if model.factory is None:
                raise ModelLoadError(
                    f"model {model.name!r} was registered without a factory, so it could not be "
                    "rebuilt after an unload; unload refused. Fix: register it with factory=..., "
                    "or use offload().")
            if model._module is None:
                return
            self._offload(model, "unload")
            nbytes = model.nbytes
            model._module, model._master, model._flat_host = None, {}, None
            model._units, model._host_buffers = [], {}
            self._stats["unloads"] += 1
            self._emit(model, "cpu", "unloaded", nbytes, 0.0, "unload")

    def unload_all(self, *, wait: float = 0.0) -> None:
        """Unload every model (models without a factory are offloaded).

        Models a running node is using (a prompt running on another thread: a widget's, the
        queue's) are waited for up to ``wait`` seconds; those still in use are left loaded and
        named in one :class:`ModelInUseError` (after every idle model was unloaded).
        """
        for provider in self._external:
            provider.unload_all()
        with self._lock:
            deadline = time.monotonic() + max(0.0, wait)
            pending = list(self._models.values())
            while True:
                busy = []
                for model in pending:
                    if self._models.get(model.name) is not model:
                        continue  # unregistered meanwhile
                    if model.in_use:
                        busy.append(model)
                    elif model.factory is None:
                        self._offload(model, "unload_all")
                    else:
                        self.unload(model)
                left = deadline - time.monotonic()
                if not busy or left <= 0:
                    break
                self._idle.wait(left)
                pending = busy
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if busy:
                names = ", ".join(repr(m.name) for m in busy)
                waited = f" after waiting {wait:g} s" if wait > 0 else ""
                raise ModelInUseError(
                    f"unload all: {names} {'is' if len(busy) == 1 else 'are'} in use by a running "
                    f"prompt{waited} and stayed loaded; every other model was unloaded. Fix: wait "
                    "for the run to finish (or interrupt it: session.interrupt()), then unload "
                    "again, or pass wait=SECONDS (%comfy unload all --wait SECONDS).")

    def _check_idle(self, model: ManagedModel, verb: str, wait: float = 0.0) -> None:
        """Wait up to ``wait`` seconds for ``model`` to stop being in use, else refuse."""
        deadline = time.monotonic() + max(0.0, wait)
        while model.in_use:
            left = deadline - time.monotonic()
            if left <= 0:
                waited = f" (waited {wait:g} s)" if wait > 0 else ""
                raise ModelInUseError(
                    f"cannot {verb} model {model.name!r}: a node is using it now{waited}. "
                    f"Fix: {verb} it after the node has finished (or interrupt the run: "
                    f"session.interrupt()), or pass wait=SECONDS to wait for it.")
            self._idle.wait(left)

    def _touch(self, model: ManagedModel) -> None:
        model._seq = next(self._seq)
        model.last_used = time.time()

    # -- scoped use ---------------------------------------------------------------------------
    @contextmanager
    def use(self, ref: ModelRef | ManagedModel, *, memory_required: int = 0,
            weight_budget: int | None = None) -> Iterator[nn.Module]:
        """Have the model on the compute device, with ``ref``'s patches, for the ``with`` body.

        Evicts least recently used models to make room for the weights plus
        ``memory_required`` (inference memory, reserved for the duration); loads partially and
        streams the rest when it alone does not fit (``weight_budget`` forces a partial load).
        The model is not evictable while in use.  CLIP and VAE models that had to evict or
        stream go back to the host afterwards.
        """
        with self._lock:
            model = self._resolve(ref)
            patch_ref = ref if isinstance(ref, ModelRef) else None
            want = patch_ref.patches_id if patch_ref is not None else ()
            if model.in_use and model._applied != want:
                raise ModelInUseError(
                    f"model {model.name!r} is in use with another patch set (another LoRA clone); "
                    "expected the same clone while it runs. Fix: run the two clones one after "
                    "the other, not nested.")
            self._ensure_built(model)
            before = self._stats["evictions"]
            if not model.in_use:
                self._place(model, memory_required, weight_budget)
                self._patch(model, patch_ref)
                model._transient = (self._stats["evictions"] > before
                                    or model.location == "partial")
            model._in_use += 1
            self._reserved += memory_required
            self._touch(model)
            module = model._module
        try:
            yield module
        finally:
            with self._lock:
                model._in_use -= 1
                self._reserved -= memory_required
                self._touch(model)
                if not model.in_use:
                    self._idle.notify_all()  # unload(wait=...) may go on
                    if model._transient and model.kind in ("clip", "vae"):
                        self._offload(model, "transient")

    def run(self, ref: ModelRef | ManagedModel, fn: Callable[[nn.Module], T], *,
            memory_required: int = 0) -> T:
        """``fn(module)`` inside :meth:`use`, with out-of-memory recovery.

        On ``torch.OutOfMemoryError`` every model not in use is offloaded and ``fn`` is retried
        once with the model partially loaded; a second failure raises
        :class:`~comfy_notebook.errors.ModelMemoryError` naming what was needed and loaded.
        """
        model = self._resolve(ref)
        try:
            with self.use(ref, memory_required=memory_required) as module:
                return fn(module)
        except torch.OutOfMemoryError:
            with self._lock:
                self._stats["oom_retries"] += 1
                had = model.loaded_bytes or model.nbytes
                for other in self._models.values():
                    if not other.in_use:
                        self._offload(other, "out of memory")
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                budget = max(0, min(had // 2, self._room() - memory_required))
        try:
            with self.use(ref, memory_required=memory_required, weight_budget=budget) as module:
                return fn(module)
        except torch.OutOfMemoryError as exc:
            loaded = ", ".join(f"{i.name} ({i.location}, {human_bytes(i.loaded_bytes)})"
                               for i in self.list() if i.loaded_bytes) or "nothing"
            raise ModelMemoryError(
                f"out of memory running model {model.name!r} even after offloading every other "
                f"model and retrying with {human_bytes(budget)} of its {human_bytes(model.nbytes)} weights on "
                f"{self.device}; needed {human_bytes(memory_required)} of inference memory on top. "
                f"Loaded now: {loaded}. Fix: lower the batch size or resolution, or free "
                "memory held outside the manager.") from exc

    # -- placement ----------------------------------------------------------------------------
    def _place(self, m: ManagedModel, memory_required: int,
               weight_budget: int | None = None) -> None:
        """Full or partial load of ``m`` with room for ``memory_required``."""
        if weight_budget is None and m.location == "gpu":
            self.free_memory(memory_required, keep=(m,))
            if self._room() >= memory_required:
                return
        if m.location != "cpu":
            self._offload(m, "reload")  # partial, forced partial, or no room left to run
        self.free_memory(m.nbytes + m.buffer_bytes + memory_required, keep=(m,))
        room = self._room() - memory_required
        try:
            if weight_budget is None and room >= m.nbytes + m.buffer_bytes:
                self._load_full(m)
            else:
                budget = room if weight_budget is None else min(weight_budget, room)
                self._load_partial(m, max(0, budget - m.buffer_bytes))
        except torch.OutOfMemoryError:
            self._offload(m, "out of memory while loading")
            raise

    def _load_full(self, m: ManagedModel) -> None:
        t0 = time.perf_counter()
        source = m.location
        if not self._same_memory():
            mv.place_full(m, self.device)
            mv.move_buffers(m, self.device, self.host)
            mv.sync(self.device)
        m._resident = {u.prefix for u in m._units}
        m._on_device = True
        m._applied, m._applied_patches = (), {}
        self._moved(m, source, "gpu", m.nbytes + m.buffer_bytes, t0, "load")
        self._stats["loads"] += 1

    def _load_partial(self, m: ManagedModel, budget: int) -> None:
        t0 = time.perf_counter()
        source = m.location
        resident, streamed = mv.split_units(m._units, budget)
        if not self._same_memory():
            mv.place_partial(m, resident, self.device)
            mv.move_buffers(m, self.device, self.host)
            mv.sync(self.device)
        m._resident = {u.prefix for u in resident}
        m._on_device = True
        m._streamer = Streamer(streamed, m._master, self.device, m.dtype, self._streamed)
        m._streamer.install()
        m._applied, m._applied_patches = (), {}
        self._moved(m, source, "partial", m.loaded_bytes, t0, "partial load")
        self._stats["loads"] += 1
        self._stats["partial_loads"] += 1

    def _offload(self, m: ManagedModel, reason: str) -> None:
        if m._module is None or m.location == "cpu":
            return
        t0 = time.perf_counter()
        source, nbytes = m.location, m.loaded_bytes
        mv.restore_host(m, self.host)
        m._resident = set()
        m._on_device = False
        m._applied, m._applied_patches = (), {}
        self._stats["bytes_moved_to_host"] += nbytes
        self._stats["offloads"] += 1
        self._stats["seconds_moving"] += time.perf_counter() - t0
        self._emit(m, source, "cpu", nbytes, time.perf_counter() - t0, reason)

    def _moved(self, m: ManagedModel, source: str, target: str, nbytes: int, t0: float,
               reason: str) -> None:
        seconds = time.perf_counter() - t0
        self._stats["bytes_moved_to_device"] += nbytes
        self._stats["seconds_moving"] += seconds
        self._emit(m, source, target, nbytes, seconds, reason)

    def _streamed(self, nbytes: int, seconds: float) -> None:
        self._stats["bytes_streamed"] += nbytes
        self._stats["seconds_moving"] += seconds

    # -- patches ------------------------------------------------------------------------------
    def _patch(self, m: ManagedModel, ref: ModelRef | None) -> None:
        """Make the device weights carry exactly ``ref``'s patches (touching only patched keys)."""
        want = ref.patches_id if ref is not None else ()
        if m._applied == want:
            return
        new = dict(ref.patches) if ref is not None else {}
        touched, copied = mv.patch_resident(m, new, same_memory=self._same_memory())
        self._stats["weights_patched"] += touched
        self._stats["bytes_moved_to_device"] += copied
        if m._streamer is not None:
            m._streamer.patches = new
        m._applied, m._applied_patches = want, new
