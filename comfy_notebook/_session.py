"""``Session``: one registry, one cache, one executor, typed services and an event stream.

No torch here, and no arrow up: the session imports neither the node pack nor real mode nor
the widgets.  The built-in node pack is loaded *by name* (:data:`BUILTIN_PACK`) on the first
registry lookup, so ``Session()`` stays cheap; ``Session(builtins=False)`` starts empty.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from comfy_notebook.engine.cache import Cache
from comfy_notebook.engine.context import services_context, set_services_fallback
from comfy_notebook.engine.events import Event
from comfy_notebook.engine.executor import Executor, PromptResult
from comfy_notebook.engine.graph import Graph
from comfy_notebook.engine.registry import Registry
from comfy_notebook.errors import GraphError, ValidationError
from comfy_notebook.services import Services

__all__ = ["BUILTIN_PACK", "PromptResult", "Session", "session", "use_session"]

log = logging.getLogger(__name__)

# The module that registers the built-in nodes (``register_builtins(session)``), imported by
# name when a session first looks a node up: the pack is a room below, loaded on demand.
BUILTIN_PACK = "comfy_notebook.nodes"


def _register_builtins(session: Session) -> None:
    import importlib

    importlib.import_module(BUILTIN_PACK).register_builtins(session)


class Session:
    """Registry + cache + executor, shared by real mode, virtual mode and API prompts.

    Parameters
    ----------
    models_dir, output_dir:
        The models folder (or a ComfyUI installation) and where outputs go.  Unset: from
        ``$COMFY_NOTEBOOK_MODELS`` or the config file, re-read when they change.
    cache:
        Defaults to ``Cache()``: least recently used outputs beyond a RAM / GPU-memory budget
        are evicted (``comfy_notebook.engine.policies.default_policy``).
    builtins:
        Register the built-in node pack (ComfyUI's core nodes), lazily on the first node
        lookup (default).  ``False``: an empty session for your own nodes.
    comfyui:
        A ComfyUI installation to attach (:meth:`attach_comfyui`); its nodes join the registry.
    backend:
        Where prompts run (a :class:`comfy_notebook.backends.Backend`): default this process;
        ``ComfyUIServer(url)`` (whose ``/object_info`` nodes replace the built-in ones) or
        ``RayBackend()`` run them elsewhere.

    Examples
    --------
    >>> s = Session()
    >>> s.register({"MyNode": MyNode})                      # doctest: +SKIP
    >>> result = s.run_prompt({"1": {"class_type": "MyNode", "inputs": {}}})  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        models_dir: str | os.PathLike[str] | None = None,
        output_dir: str | os.PathLike[str] | None = None,
        cache: Cache | None = None,
        builtins: bool = True,
        comfyui: str | os.PathLike[str] | None = None,
        backend: Any = None,
    ) -> None:
        self.models_dir = models_dir
        self.output_dir = output_dir
        self.registry = Registry()
        if builtins and not getattr(backend, "replaces_nodes", False):  # a server brings its own
            self.registry.defer(lambda _registry: _register_builtins(self))
        self.cache = cache if cache is not None else Cache()
        self.services = Services(self)
        # User-facing switches read by the layers above, e.g. "progress" (tqdm bars in real
        # mode; unset: the COMFY_NOTEBOOK_PROGRESS environment variable, default on).
        self.options: dict[str, Any] = {}
        self._subscribers: list[Callable[[Event], None]] = []
        self.executor = Executor(self.registry, self.cache, emit=self._emit, services=self.services)
        if comfyui is not None:  # imports torch and ComfyUI (see attach_comfyui)
            self.attach_comfyui(comfyui)
        self._backend = backend
        self._queue: Any = None
        # One prompt at a time on this process's executor: queued prompts (worker thread), cells
        # and API calls (the kernel's thread) take turns.
        self._run_lock = threading.RLock()
        if hasattr(backend, "attach"):
            backend.attach(self)  # a server registers its /object_info nodes, Ray starts workers

    def _emit(self, event: Event) -> None:
        for fn in tuple(self._subscribers):
            try:
                fn(event)
            except Exception:
                log.exception("event subscriber %r failed on %s", fn, type(event).__name__)

    def subscribe(self, fn: Callable[[Event], None]) -> Callable[[], None]:
        """Deliver every event to ``fn`` (synchronously); returns an unsubscribe callable."""
        self._subscribers.append(fn)

        def unsubscribe() -> None:
            if fn in self._subscribers:
                self._subscribers.remove(fn)

        return unsubscribe

    def register(self, mappings: Mapping[str, type], display_names: Mapping[str, str] | None = None) -> None:
        """Register a ``NODE_CLASS_MAPPINGS`` dict (and ``NODE_DISPLAY_NAME_MAPPINGS``)."""
        with services_context(self.services):  # INPUT_TYPES reads this session's folders
            self.registry.register(mappings, display_names)

    def load_custom_nodes(self, path: str | os.PathLike[str]) -> Any:
        """Import ComfyUI custom node packs (a pack, a single file or a ``custom_nodes`` folder)
        and register their nodes; returns one report per pack (see
        :func:`comfy_notebook.interop.load_custom_nodes`)."""
        from comfy_notebook.interop import load_custom_nodes

        return load_custom_nodes(self, path)

    def attach_comfyui(self, path: str | os.PathLike[str], *, prefer: str = "comfyui",
                       models: str = "session") -> Any:
        """Import the ComfyUI installation at ``path`` and register all its nodes (ComfyUI's
        classes win shared names unless ``prefer="builtin"``); see
        :func:`comfy_notebook.interop.attach.attach_comfyui`."""
        from comfy_notebook.interop.attach import attach_comfyui

        return attach_comfyui(self, path, prefer=prefer, models=models)

    @property
    def models(self) -> Any:
        """The session's :class:`~comfy_notebook.runtime.manager.ModelManager` (made on first use).

        ``session.models`` prints a table of what is loaded where; ``load``, ``offload``,
        ``unload``, ``unload_all``, ``set_budget`` and ``keep_loaded`` move models by hand.
        Importing torch happens here, not when the session is created.
        """
        return self.services.models

    @property
    def folders(self) -> Any:
        """The session's :class:`~comfy_notebook.folders.Folders` (models, input, output)."""
        return self.services.folders

    def set_models_dir(self, models_dir: str | os.PathLike[str] | None) -> None:
        """Use ``models_dir`` (a models folder or a ComfyUI installation) from now on.

        Takes effect at once for the running session (combo lists, loaders, enums); ``None``
        goes back to ``$COMFY_NOTEBOOK_MODELS`` / the config file.
        """
        self.models_dir = models_dir
        self.services.folders = None  # rebuilt from the new configuration on next use

    def __repr__(self) -> str:
        loaded = self.services.models_loaded
        models = f", {len(loaded.list())} models" if loaded is not None else ""
        nodes = "built-in nodes load on first use" if self.registry.deferred else f"{len(self.registry)} nodes"
        return f"<Session {nodes}, cache {len(self.cache)} entries{models}>"

    def interrupt(self) -> None:
        """Stop the running prompt at the next check (between nodes or in ``ctx.progress``)."""
        if self._queue is not None and self._queue.interrupt():
            return
        self.executor.interrupt()

    # -- backends, the queue, batches and sweeps (comfy_notebook.backends) --------------------
    @property
    def backend(self) -> Any:
        """Where prompts run: the in-process executor unless ``Session(backend=...)`` chose one."""
        if self._backend is None:
            from comfy_notebook.backends.inprocess import InProcessBackend

            self._backend = InProcessBackend(self)
        return self._backend

    @property
    def queue(self) -> Any:
        """The session's :class:`~comfy_notebook.backends.PromptQueue` (made on first use)."""
        if self._queue is None:
            from comfy_notebook.backends.queue import PromptQueue

            self._queue = PromptQueue(self.backend)
        return self._queue

    def submit(self, api: Mapping[str, Any], *, priority: int = 0, **kwargs: Any) -> Any:
        """Queue a prompt; returns an awaitable ``PromptFuture`` (see ``PromptQueue.submit``)."""
        return self.queue.submit(api, priority=priority, **kwargs)

    async def run_prompt_async(self, api: Mapping[str, Any], *, priority: int = 0, **kwargs: Any) -> PromptResult:
        """``await`` a prompt: queued, run on a worker thread, never blocking the event loop."""
        return await self.queue.submit(api, priority=priority, **kwargs)  # type: ignore[no-any-return]

    def cancel(self, prompt_id: str) -> bool:
        """Cancel a queued prompt (or interrupt it if it is running)."""
        return bool(self.queue.cancel(prompt_id))

    def batches(self, workflow: Any, **kwargs: Any) -> Any:
        """Run ``num_samples`` images in batches; yields results as they finish (see ``backends.batching``)."""
        from comfy_notebook.backends.batching import run_batches

        return run_batches(self, workflow, **kwargs)

    def sweep(self, workflow: Any, grid: Mapping[str, Any], **kwargs: Any) -> Any:
        """Run a parameter grid; returns a tidy table (see ``backends.sweeps.sweep``)."""
        from comfy_notebook.backends.sweeps import sweep

        return sweep(self, workflow, grid, **kwargs)

    def run_prompt(
        self,
        api: Mapping[str, Any],
        *,
        extra_data: Mapping[str, Any] | None = None,
        targets: Iterable[str] | None = None,
        prompt_id: str | None = None,
    ) -> PromptResult:
        """Run a ComfyUI API-format prompt.

        Parameters
        ----------
        api:
            ``{node_id: {"class_type", "inputs", "_meta"}}``, as ComfyUI's ``/prompt`` receives.
        extra_data:
            ``{"extra_pnginfo": {...}}`` and the like.
        targets:
            Node ids to compute instead of every output node.

        Raises
        ------
        ValidationError
            Malformed prompt (``invalid_prompt``) or failed validation, in ComfyUI's shape.
        NodeExecutionError, ExecutionInterrupted
        """
        if self._backend is not None and getattr(self._backend, "name", "") != "in-process":
            if targets is not None:
                raise ValueError(f"targets= runs only in this process; the {self._backend.name} backend "
                                 "runs whole prompts")
            # the session's subscribers (RunView, progress bars) see a remote run's events too
            return self._backend.run_prompt(api, extra_data=extra_data, prompt_id=prompt_id,  # type: ignore[no-any-return]
                                            on_event=self._emit)
        return self._run_api(api, extra_data=extra_data, targets=targets, prompt_id=prompt_id)

    def _run_api(self, api: Mapping[str, Any], *, extra_data: Mapping[str, Any] | None = None,
                 targets: Iterable[str] | None = None, prompt_id: str | None = None) -> PromptResult:
        """Run an API prompt with this process's executor (the in-process backend's path)."""
        try:
            graph = Graph.from_api(api)
        except GraphError as exc:
            node_id = getattr(exc, "node_id", None)
            details = f"Node ID '#{node_id}'" if node_id is not None else ""
            error = {"type": "invalid_prompt", "message": str(exc), "details": details, "extra_info": {}}
            raise ValidationError(error, {}) from exc
        with self._run_lock:
            return self.executor.run(graph, targets=targets, extra_data=extra_data, api=api,
                                     prompt_id=prompt_id)

    def run(
        self,
        graph: Graph | Any,
        *,
        targets: Iterable[str] | None = None,
        extra_data: Mapping[str, Any] | None = None,
    ) -> PromptResult:
        """Run a :class:`Graph`, or a virtual-mode ``Workflow``, with the same executor and cache
        as :meth:`run_prompt`."""
        if not isinstance(graph, Graph):
            run = getattr(graph, "run", None)
            if run is None:
                raise TypeError(
                    f"Session.run expected a Graph or a Workflow, received {type(graph).__name__}; "
                    "for an API-format dict use session.run_prompt(api)")
            return run(self, targets=None if targets is None else list(targets))  # type: ignore[no-any-return]
        if targets is None and self._backend is not None and getattr(self._backend, "name", "") != "in-process":
            return self.run_prompt(graph.to_api(), extra_data=extra_data)  # virtual mode on the backend
        with self._run_lock:
            return self.executor.run(graph, targets=targets, extra_data=extra_data)


_current: Session | None = None


def session() -> Session:
    """The current session, created on first use (with the built-in node pack)."""
    global _current
    if _current is None:
        _current = Session()
    return _current


def use_session(s: Session) -> Session:
    """Make ``s`` the current session; returns it."""
    global _current
    _current = s
    return s


# Naked node calls (outside any run) reach the current session's services.
set_services_fallback(lambda: session().services)
