"""The executor: runs a validated graph with caching, lists, lazy inputs, expansion and async.

Behaviour follows ComfyUI's ``execution.py`` / ``comfy_execution/graph.py`` (see
``comfyui-reference.md`` section 2); the code is our own.  The pieces live in private modules
named for what they hold: :mod:`._run` (one run's state and scheduling), :mod:`._node_call`
(calling one node: inputs, list mapping, hidden inputs), :mod:`._drive` (the sync and asyncio
loops), :mod:`._signature` (cache keys within a run) and :mod:`._results` (return conventions,
merging, :class:`PromptResult`).  An asyncio loop is started only when an async node is reached.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from comfy_notebook.engine._drive import drive, run_coroutine_blocking
from comfy_notebook.engine._node_call import DynamicPrompt
from comfy_notebook.engine._results import PromptResult, unwrap_outputs
from comfy_notebook.engine._run import PromptRun
from comfy_notebook.engine.cache import Cache
from comfy_notebook.engine.context import services_context
from comfy_notebook.engine.events import Event, RunFinished, RunInterrupted, RunStarted
from comfy_notebook.engine.graph import Graph
from comfy_notebook.engine.registry import Registry
from comfy_notebook.engine.validate import Validated, validate
from comfy_notebook.errors import ExecutionInterrupted

__all__ = ["DynamicPrompt", "Executor", "PromptResult", "run_coroutine_blocking"]


class Executor:
    """Runs graphs against a registry and a cache, emitting events.

    Parameters
    ----------
    registry:
        Known node classes.
    cache:
        Output cache (a :class:`~comfy_notebook.engine.cache.Cache`).
    emit:
        Event sink, called synchronously in the running thread.
    services:
        Any object, exposed to nodes as ``current_context().services`` (a session passes its
        :class:`comfy_notebook.services.Services`).
    """

    def __init__(
        self,
        registry: Registry,
        cache: Cache,
        *,
        emit: Callable[[Event], None] | None = None,
        services: Any = None,
    ) -> None:
        self.registry = registry
        self.cache = cache
        self.emit: Callable[[Event], None] = emit if emit is not None else (lambda event: None)
        self.services: Any = services
        self.interrupt_flag = threading.Event()
        self._objects: dict[tuple[str, str], Any] = {}

    def interrupt(self) -> None:
        """Ask the running prompt to stop (checked between nodes and by ``ctx.progress``)."""
        self.interrupt_flag.set()

    def run(
        self,
        graph: Graph,
        *,
        targets: Iterable[str] | None = None,
        extra_data: Mapping[str, Any] | None = None,
        prompt_id: str | None = None,
        api: Mapping[str, Any] | None = None,
    ) -> PromptResult:
        """Validate and execute a graph.

        Parameters
        ----------
        graph:
            The prompt.
        targets:
            Node ids to compute instead of all output nodes (partial execution).
        extra_data:
            ComfyUI ``extra_data`` (``extra_pnginfo`` feeds EXTRA_PNGINFO).
        prompt_id:
            Defaults to a fresh uuid4.
        api:
            The API dict the graph came from, handed to PROMPT hidden inputs as is.

        Raises
        ------
        ValidationError, NodeExecutionError, ExecutionInterrupted
        """
        with services_context(self.services):  # INPUT_TYPES reads this session's folders
            validated = validate(graph, self.registry, targets)
        return self.execute(validated, extra_data=extra_data, prompt_id=prompt_id, api=api)

    def execute(
        self,
        validated: Validated,
        *,
        extra_data: Mapping[str, Any] | None = None,
        prompt_id: str | None = None,
        api: Mapping[str, Any] | None = None,
    ) -> PromptResult:
        """Execute an already validated prompt (see :meth:`run`)."""
        t0 = time.perf_counter()
        self.interrupt_flag.clear()
        pid = prompt_id or uuid.uuid4().hex
        run = PromptRun(self, validated.graph, pid, extra_data or {}, api)
        self.emit(RunStarted(pid, tuple(validated.graph.nodes)))
        try:
            run.require(validated.outputs)
            drive(run)
        except ExecutionInterrupted as exc:
            exc.prompt_id = pid
            node = exc.node_id or run.current
            cls = run.nodes[node].class_type if node in run.nodes else None
            self.emit(RunInterrupted(pid, node, cls, frozenset(run.executed)))
            raise
        except KeyboardInterrupt:
            node = run.current
            cls = run.nodes[node].class_type if node in run.nodes else None
            self.emit(RunInterrupted(pid, node, cls, frozenset(run.executed)))
            ctx = run.contexts.get(node) if node is not None else None
            step, total = ctx.last_step if ctx is not None and ctx.last_step else (None, None)
            raise ExecutionInterrupted(
                node, cls, None if step is None else int(step), None if total is None else int(total)
            ) from None
        finally:
            self.interrupt_flag.clear()
        return self._result(run, validated, time.perf_counter() - t0)

    def _result(self, run: PromptRun, validated: Validated, seconds: float) -> PromptResult:
        executed = set(run.executed)
        cached = set(run.cached)
        self.emit(RunFinished(run.prompt_id, frozenset(executed), frozenset(cached), seconds))
        return PromptResult(
            prompt_id=run.prompt_id,
            outputs=unwrap_outputs(self.registry, run.nodes, run.values),
            output_lists=dict(run.values),
            ui=dict(run.ui),
            executed=executed,
            cached=cached,
            signatures=dict(run.sigs),
            seconds=seconds,
            node_errors=validated.node_errors,
        )
