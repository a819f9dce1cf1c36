"""The executor: runs a validated graph with caching, lists, lazy inputs, expansion and async.

Behaviour follows ComfyUI's ``execution.py`` / ``comfy_execution/graph.py`` (see
``comfyui-reference.md`` section 2); the code is our own.  Scheduling is a dependency count
"dissolve" from the requested outputs: cached nodes are satisfied on sight, lazy inputs are
added when ``check_lazy_status`` asks, and ``expand`` results add nodes at run time.  Nothing
recurses on the graph depth.  An asyncio loop is started only when an async node is reached.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from comfy_notebook.engine.cache import Cache, node_signature
from comfy_notebook.engine.context import _CURRENT, NodeContext
from comfy_notebook.engine.events import (
    Event,
    NodeBlocked,
    NodeCached,
    NodeFailed,
    NodeFinished,
    NodeStarted,
    RunFinished,
    RunInterrupted,
    RunStarted,
)
from comfy_notebook.engine.graph import ExecutionBlocker, Graph, Link, Node, is_link
from comfy_notebook.engine.protocol import NodeSpec
from comfy_notebook.engine.registry import Registry
from comfy_notebook.engine.validate import Validated, validate
from comfy_notebook.errors import ExecutionInterrupted, GraphError, NodeExecutionError

__all__ = ["DynamicPrompt", "Executor", "PromptResult", "run_coroutine_blocking"]

Outputs = tuple[list[Any], ...]


@dataclass
class PromptResult:
    """What one run produced.

    Attributes
    ----------
    outputs:
        ``node_id -> tuple`` of output values (a list where the node produced a list).
    output_lists:
        ``node_id -> tuple`` of per-slot lists, as ComfyUI stores them.
    ui:
        ``node_id -> ui dict`` for output nodes, whether they ran or came from cache.
    executed, cached:
        Node ids whose function ran / whose outputs came from the cache.
    signatures:
        ``node_id -> cache key`` (keys starting with ``"~"`` are uncacheable).
    node_errors:
        Validation errors of outputs that were skipped (ComfyUI's shape).
    """

    prompt_id: str
    outputs: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    output_lists: dict[str, Outputs] = field(default_factory=dict)
    ui: dict[str, Any] = field(default_factory=dict)
    executed: set[str] = field(default_factory=set)
    cached: set[str] = field(default_factory=set)
    signatures: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    node_errors: Mapping[str, Any] = field(default_factory=dict)


def run_coroutine_blocking(
    coro: Coroutine[Any, Any, Any], on_interrupt: Callable[[], None] | None = None
) -> Any:
    """Run a coroutine to completion from synchronous code.

    Uses ``asyncio.run`` when no loop runs in this thread; inside Jupyter (a loop is already
    running) it runs on a private loop in a helper thread.  A ``KeyboardInterrupt`` while
    waiting calls ``on_interrupt`` (e.g. set the interrupt flag) and is re-raised once the
    helper has finished, unless the coroutine raised an error of its own.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}
    ctx = contextvars.copy_context()

    def target() -> None:
        try:
            box["value"] = ctx.run(asyncio.run, coro)
        except BaseException as exc:  # handed back to the calling thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="comfy-notebook-async", daemon=True)
    thread.start()
    interrupted = False
    while thread.is_alive():
        try:
            thread.join(0.05)
        except KeyboardInterrupt:
            interrupted = True
            if on_interrupt is not None:
                on_interrupt()
    if "error" in box:
        raise box["error"]
    if interrupted:
        raise KeyboardInterrupt
    return box.get("value")


class DynamicPrompt:
    """The (possibly expanded) graph of a run, handed to ``DYNPROMPT`` hidden inputs."""

    def __init__(self, run: _Run) -> None:
        self._run = run

    @property
    def graph(self) -> Graph:
        """Every node of the run so far, including expanded ones."""
        return Graph(dict(self._run.nodes))

    def get_node(self, node_id: str) -> dict[str, Any]:
        """A node in API format (raises ``KeyError`` when absent)."""
        return self._run.nodes[node_id].to_api()

    def has_node(self, node_id: str) -> bool:
        """Whether the node exists in the run."""
        return node_id in self._run.nodes

    def all_node_ids(self) -> list[str]:
        """Every node id of the run."""
        return list(self._run.nodes)

    def get_original_prompt(self) -> dict[str, Any]:
        """The API-format prompt as submitted."""
        return self._run.prompt_api()

    def get_parent_node_id(self, node_id: str) -> str | None:
        """The expanding node of an expanded node, else ``None``."""
        return self._run.parents.get(node_id)

    def get_display_node_id(self, node_id: str) -> str:
        """The node of the submitted prompt that an expanded node is shown as."""
        return self._run.display.get(node_id, node_id)

    def get_real_node_id(self, node_id: str) -> str:
        """Same as :meth:`get_display_node_id` (ComfyUI name)."""
        return self.get_display_node_id(node_id)


def _summary(inputs: Mapping[str, list[Any]]) -> dict[str, str]:
    out = {}
    for name, values in inputs.items():
        text = repr(values[0] if len(values) == 1 else values)
        out[name] = text if len(text) <= 120 else text[:117] + "..."
    return out


def _merge_ui(uis: list[Any]) -> dict[str, Any] | None:
    if not uis:
        return None
    if len(uis) == 1:
        return dict(uis[0])
    merged: dict[str, Any] = {}
    for ui in uis:
        for key, value in ui.items():
            if isinstance(value, list):
                merged.setdefault(key, []).extend(value)
            else:
                merged[key] = value
    return merged


class _Pending(Exception):
    """Internal: the node went back to pending (lazy inputs or expansion)."""


class _Run:
    """State of one run (one prompt)."""

    def __init__(
        self,
        executor: Executor,
        graph: Graph,
        prompt_id: str,
        extra_data: Mapping[str, Any],
        api: Mapping[str, Any] | None,
    ) -> None:
        self.ex = executor
        self.registry = executor.registry
        self.cache = executor.cache
        self.emit = executor.emit
        self.flag = executor.interrupt_flag
        self.prompt_id = prompt_id
        self.extra_data = extra_data
        self._api = api
        self._graph = graph
        self.nodes: dict[str, Node] = dict(graph.nodes)
        self.parents: dict[str, str] = {}
        self.display: dict[str, str] = {}
        self.sigs: dict[str, str] = {}
        self.values: dict[str, Outputs] = {}
        self.ui: dict[str, Any] = {}
        self.needed: dict[str, set[str]] = {}
        self.dependents: dict[str, list[str]] = {}
        self.ready_sync: list[str] = []
        self.ready_async: list[str] = []
        self.running: set[str] = set()
        self.subgraph_results: dict[str, list[tuple[bool, Any]]] = {}
        self.executed: list[str] = []
        self.cached: list[str] = []
        self.seen_cached: set[str] = set()
        self.current: str | None = None

    # -- helpers ---------------------------------------------------------------------
    def prompt_api(self) -> dict[str, Any]:
        """The API dict of the prompt (built once, only when a node asks for PROMPT)."""
        if self._api is None:
            self._api = self._graph.to_api()
        return dict(self._api)

    def spec(self, node_id: str) -> NodeSpec:
        """The spec of a node (expansion may name unknown classes)."""
        node = self.nodes[node_id]
        spec = self.registry.get(node.class_type)
        if spec is None:
            raise GraphError(f"node {node_id}: unknown node class {node.class_type!r}")
        return spec

    def _is_changed(self, node_id: str, node: Node, spec: NodeSpec) -> Any:
        """IS_CHANGED with the constant inputs only (linked inputs are None); raises -> NaN."""
        kwargs = {
            k: (None if isinstance(v, Link) else v) for k, v in node.inputs.items() if k in spec.inputs
        }
        try:
            result = spec.cls.IS_CHANGED(**kwargs)  # type: ignore[attr-defined]
            if asyncio.iscoroutine(result):
                result = run_coroutine_blocking(result)
        except Exception:
            return float("nan")
        return result

    def sig(self, node_id: str) -> str:
        """The cache key of a node, computing upstream keys iteratively."""
        s = self.sigs.get(node_id)
        if s is not None:
            return s
        sigs = self.sigs
        stack = [node_id]
        visiting: set[str] = set()
        while stack:
            n = stack[-1]
            if n in sigs:
                stack.pop()
                continue
            node = self.nodes[n]
            if n not in visiting:
                visiting.add(n)
                pushed = False
                for _, link in node.links():
                    src = link.node_id
                    if src in sigs:
                        continue
                    if src in visiting or src not in self.nodes:
                        sigs[src] = node_signature("cycle", float("nan"), None, {}, {})
                    else:
                        stack.append(src)
                        pushed = True
                if pushed:
                    continue
            spec = self.registry.get(node.class_type)
            fingerprint = None
            uid = None
            if spec is not None:
                if spec.has_is_changed:
                    fingerprint = self._is_changed(n, node, spec)
                if spec.not_idempotent or spec.uses_unique_id:
                    uid = n
            constants = {}
            links = {}
            for name, value in node.inputs.items():
                if isinstance(value, Link):
                    links[name] = (sigs[value.node_id], value.output)
                else:
                    constants[name] = value
            sigs[n] = node_signature(node.class_type, fingerprint, uid, constants, links)
            stack.pop()
        return sigs[node_id]

    # -- scheduling --------------------------------------------------------------------
    def _push_ready(self, node_id: str) -> None:
        spec = self.registry.get(self.nodes[node_id].class_type)
        (self.ready_async if spec is not None and spec.is_async else self.ready_sync).append(node_id)

    def complete(self, node_id: str, outputs: Outputs, ui: Any) -> None:
        """Record a node's outputs and release the nodes waiting on it."""
        self.values[node_id] = outputs
        if ui is not None:
            self.ui[node_id] = ui
        for dep in self.dependents.pop(node_id, ()):
            deps = self.needed.get(dep)
            if deps is not None and node_id in deps:
                deps.remove(node_id)
                if not deps:
                    self._push_ready(dep)

    def _try_cache(self, node_id: str) -> bool:
        key = self.sig(node_id)
        entry = self.cache.get(key) if key[0] != "~" else None
        if entry is None:
            return False
        self.cached.append(node_id)
        self.emit(NodeCached(self.prompt_id, node_id, self.nodes[node_id].class_type, entry.ui))
        self.complete(node_id, entry.outputs, entry.ui)
        self._mark_cached_ancestors(node_id)
        return True

    def _mark_cached_ancestors(self, node_id: str) -> None:
        """Report ancestors of a cache hit that are cached too (ComfyUI's execution_cached)."""
        stack = [link.node_id for _, link in self.nodes[node_id].links()]
        while stack:
            n = stack.pop()
            if n in self.values or n in self.needed or n in self.seen_cached or n not in self.nodes:
                continue
            self.seen_cached.add(n)
            entry = self.cache.peek(self.sig(n))
            if entry is None:
                continue
            self.cached.append(n)
            self.emit(NodeCached(self.prompt_id, n, self.nodes[n].class_type, entry.ui))
            if entry.ui is not None:
                self.ui[n] = entry.ui
            stack.extend(link.node_id for _, link in self.nodes[n].links())

    def add_dependency(self, node_id: str, src: str) -> None:
        """Make ``node_id`` wait for ``src``."""
        self.needed[node_id].add(src)
        self.dependents.setdefault(src, []).append(node_id)

    def require(self, roots: Iterable[str]) -> None:
        """Schedule nodes and their strong (non-lazy) ancestors; cached nodes are satisfied."""
        stack = list(roots)
        while stack:
            n = stack.pop()
            if n in self.values or n in self.needed or n in self.running:
                continue
            if self._try_cache(n):
                continue
            node = self.nodes[n]
            spec = self.registry.get(node.class_type)
            deps: set[str] = set()
            self.needed[n] = deps
            for name, link in node.links():
                ispec = spec.inputs.get(name) if spec is not None else None
                if ispec is not None and ispec.lazy:
                    continue
                src = link.node_id
                if src in self.values:
                    continue
                if src not in self.nodes:
                    continue  # reported when the node gathers its inputs
                if src not in deps:
                    self.add_dependency(n, src)
                stack.append(src)
            if not deps:
                self._push_ready(n)

    def find_cycle(self) -> list[str]:
        """Pending nodes wait on each other: follow waits until one repeats."""
        start = next(iter(self.needed))
        seen: dict[str, int] = {}
        path: list[str] = []
        n = start
        while n not in seen:
            seen[n] = len(path)
            path.append(n)
            deps = self.needed.get(n)
            if not deps:
                return path
            n = min(deps)
        return [*path[seen[n]:], n]

    def cycle_error(self) -> NodeExecutionError:
        """A dependency cycle created at run time, blamed on the (expanding) display node."""
        cycle = self.find_cycle()
        blame = next((c for c in cycle if c in self.display), cycle[0])
        blame = self.display.get(blame, blame)
        names = " -> ".join(cycle)
        exc = GraphError(f"Dependency cycle detected: {names}")
        class_type = self.nodes[blame].class_type
        err = NodeExecutionError(blame, class_type, exc, "", {}, prompt_id=self.prompt_id)
        self.emit(NodeFailed(self.prompt_id, blame, class_type, err))
        return err

    # -- one node ---------------------------------------------------------------------
    def hidden_value(self, node_id: str, kind: str) -> Any:
        """Value of a hidden input."""
        if kind == "PROMPT":
            return self.prompt_api()
        if kind == "UNIQUE_ID":
            return node_id
        if kind == "EXTRA_PNGINFO":
            return self.extra_data.get("extra_pnginfo")
        if kind == "DYNPROMPT":
            return DynamicPrompt(self)
        if kind == "AUTH_TOKEN_COMFY_ORG":
            return self.extra_data.get("auth_token_comfy_org")
        if kind == "API_KEY_COMFY_ORG":
            return self.extra_data.get("api_key_comfy_org")
        return None

    def gather(self, node_id: str, node: Node, spec: NodeSpec) -> dict[str, list[Any]]:
        """Input lists for a call: links resolved, missing ones ``[None]``, hidden filled."""
        inputs: dict[str, list[Any]] = {}
        values = self.values
        for name, value in node.inputs.items():
            ispec = spec.inputs.get(name)
            if isinstance(value, Link):
                if ispec is not None and ispec.raw_link:
                    inputs[name] = [value.to_api()]
                    continue
                out = values.get(value.node_id)
                if out is None or value.output >= len(out):
                    inputs[name] = [None]
                else:
                    inputs[name] = out[value.output]
            elif ispec is not None:
                inputs[name] = [value]
        for name, kind in spec.hidden.items():
            inputs[name] = [self.hidden_value(node_id, kind)]
        return inputs

    def instance(self, node_id: str, spec: NodeSpec) -> Any:
        """The node object (one per node id and class, kept across runs)."""
        key = (node_id, spec.name)
        obj = self.ex._objects.get(key)
        if obj is None:
            obj = spec.cls()
            self.ex._objects[key] = obj
        return obj

    async def map_call(
        self, fn: Callable[..., Any], inputs: dict[str, list[Any]], spec: NodeSpec, ctx: NodeContext
    ) -> list[Any]:
        """Call ``fn`` once per list index (or once with whole lists for INPUT_IS_LIST)."""
        if spec.input_is_list:
            calls: list[dict[str, Any]] = [inputs]
        elif not inputs:
            calls = [{}]
        else:
            lengths = [len(v) for v in inputs.values()]
            n = 0 if min(lengths) == 0 else max(lengths)
            calls = [{k: v[i] if i < len(v) else v[-1] for k, v in inputs.items()} for i in range(n)]
        results: list[Any] = []
        for index, kwargs in enumerate(calls):
            ctx.check_interrupt()
            block = None
            for value in kwargs.values():
                if spec.input_is_list:
                    value = next((e for e in value if isinstance(e, ExecutionBlocker)), value)
                if isinstance(value, ExecutionBlocker):
                    block = value
                    break
            if block is not None:
                if block.message is not None:
                    self.emit(NodeBlocked(self.prompt_id, ctx.node_id or "", spec.name, block.message))
                    block = ExecutionBlocker(None)
                results.append(block)
                continue
            ctx.call_index = index
            token = _CURRENT.set(ctx)
            try:
                result = fn(**kwargs)
                if asyncio.iscoroutine(result):
                    result = await result
            except KeyboardInterrupt:
                step, total = ctx.last_step if ctx.last_step else (None, None)
                raise ExecutionInterrupted(
                    node_id=ctx.node_id,
                    node_type=spec.name,
                    step=None if step is None else int(step),
                    total=None if total is None else int(total),
                ) from None
            finally:
                _CURRENT.reset(token)
            results.append(result)
        return results

    def _expand(self, node_id: str, subgraph: Any) -> list[str]:
        """Add an ``expand`` subgraph; returns its output-node ids."""
        if isinstance(subgraph, Graph):
            graph = subgraph
        else:
            clean = {k: {kk: vv for kk, vv in v.items() if kk != "override_display_id"} for k, v in subgraph.items()}
            graph = Graph.from_api(clean)
        display = self.display.get(node_id, node_id)
        new_outputs = []
        for nid, node in graph.nodes.items():
            if nid in self.nodes:
                raise GraphError(
                    f"expansion of node {node_id} adds node id {nid!r}, which already exists. "
                    "Fix: build the subgraph with GraphBuilder() so ids get a unique prefix"
                )
            spec = self.registry.get(node.class_type)
            if spec is None:
                raise GraphError(f"expansion of node {node_id} uses unknown node class {node.class_type!r}")
            self.nodes[nid] = node
            self.parents[nid] = node_id
            self.display[nid] = display
            if spec.output_node:
                new_outputs.append(nid)
        return new_outputs

    def _finish(self, node_id: str, spec: NodeSpec, results: list[Any], uis: list[Any], t0: float) -> None:
        """Merge per-call results (OUTPUT_IS_LIST concatenates), store, emit, release."""
        n_out = len(spec.return_types)
        outputs: list[list[Any]] = []
        for i in range(n_out):
            if spec.output_is_list[i]:
                merged: list[Any] = []
                for r in results:
                    if isinstance(r[i], ExecutionBlocker):
                        merged.append(r[i])
                    else:
                        merged.extend(r[i])
                outputs.append(merged)
            else:
                outputs.append([r[i] for r in results])
        out = tuple(outputs)
        ui = _merge_ui(uis)
        self.cache.put(self.sigs[node_id], out, ui)
        self.executed.append(node_id)
        self.complete(node_id, out, ui)
        self.emit(NodeFinished(self.prompt_id, node_id, spec.name, time.perf_counter() - t0, ui))

    async def execute(self, node_id: str) -> None:
        """Run one ready node (possibly sending it back to pending)."""
        self.needed.pop(node_id, None)
        self.current = node_id
        node = self.nodes[node_id]
        spec = self.registry.get(node.class_type)
        inputs: dict[str, list[Any]] = {}
        try:
            if spec is None:
                raise GraphError(f"unknown node class {node.class_type!r}")
            t0 = time.perf_counter()
            ctx = NodeContext(node_id, spec.name, self.prompt_id, self.ex.services, self.emit, self.flag)
            inputs = self.gather(node_id, node, spec)
            pending = self.subgraph_results.pop(node_id, None)
            if pending is not None:
                self._resolve_subgraph(node_id, spec, pending, t0)
                return
            if spec.has_check_lazy:
                obj = self.instance(node_id, spec)
                asked = await self.map_call(obj.check_lazy_status, inputs, spec, ctx)
                if self._add_lazy(node_id, node, asked):
                    return
            self.emit(NodeStarted(self.prompt_id, node_id, spec.name, self.display.get(node_id, node_id)))
            obj = self.instance(node_id, spec)
            raw = await self.map_call(getattr(obj, spec.function), inputs, spec, ctx)
            self._handle_returns(node_id, spec, raw, t0)
        except (ExecutionInterrupted, NodeExecutionError):
            raise
        except Exception as exc:
            class_type = node.class_type
            err = NodeExecutionError(
                node_id, class_type, exc, traceback.format_exc(), _summary(inputs), prompt_id=self.prompt_id
            )
            err.__cause__ = exc
            self.emit(NodeFailed(self.prompt_id, node_id, class_type, err))
            raise err from exc

    def _add_lazy(self, node_id: str, node: Node, asked: list[Any]) -> bool:
        """Add inputs named by check_lazy_status that are not evaluated yet; True if any."""
        srcs: list[str] = []
        for names in asked:
            if isinstance(names, ExecutionBlocker) or not names:
                continue
            for name in names:
                value = node.inputs.get(name)
                if isinstance(value, Link) and value.node_id not in self.values and value.node_id in self.nodes:
                    srcs.append(value.node_id)
        if not srcs:
            return False
        self.needed[node_id] = set()
        for src in dict.fromkeys(srcs):
            self.add_dependency(node_id, src)
        self.require(srcs)
        if not self.needed[node_id]:
            self._push_ready(node_id)
        return True

    def _handle_returns(self, node_id: str, spec: NodeSpec, raw: list[Any], t0: float) -> None:
        """ComfyUI return conventions: tuple, {ui, result, expand}, ExecutionBlocker."""
        n_out = len(spec.return_types)
        results: list[Any] = []
        uis: list[Any] = []
        sub: list[tuple[bool, Any]] = []
        expanded = False
        for r in raw:
            if isinstance(r, dict):
                if r.get("ui") is not None:
                    uis.append(r["ui"])
                if r.get("expand") is not None:
                    expanded = True
                    new_outputs = self._expand(node_id, r["expand"])
                    result = r.get("result", ())
                    self.require(new_outputs)
                    sub.append((True, tuple(result)))
                    continue
                result = r.get("result")
                if result is None:
                    result = (None,) * n_out
                elif isinstance(result, ExecutionBlocker):
                    result = (result,) * n_out
            elif isinstance(r, ExecutionBlocker):
                result = (r,) * n_out
            elif r is None:
                result = (None,) * n_out
            else:
                result = r
            if not isinstance(result, tuple | list) or len(result) < n_out:
                raise TypeError(
                    f"{spec.name}.{spec.function} returned {type(result).__name__} {result!r:.80}; "
                    f"expected a tuple of {n_out} values for RETURN_TYPES {spec.return_types}"
                )
            results.append(tuple(result))
            sub.append((False, tuple(result)))
        if not expanded:
            self._finish(node_id, spec, results, uis, t0)
            return
        self.subgraph_results[node_id] = sub
        if uis:
            self.ui[node_id] = _merge_ui(uis)
        self.needed[node_id] = set()
        srcs = [v[0] for is_sub, res in sub if is_sub for v in res if is_link(v)]
        for src in dict.fromkeys(srcs):
            if src not in self.values:
                self.add_dependency(node_id, src)
        self.require(srcs)
        if not self.needed[node_id]:
            self._push_ready(node_id)

    def _resolve_subgraph(self, node_id: str, spec: NodeSpec, pending: list[tuple[bool, Any]], t0: float) -> None:
        """Re-entry of an expanded node: resolve its result links from the subgraph."""
        results = []
        for is_sub, result in pending:
            if not is_sub:
                results.append(result)
                continue
            resolved: list[Any] = []
            for r in result:
                if is_link(r):
                    resolved.extend(self.values[r[0]][r[1]])
                else:
                    resolved.append(r)
            results.append(tuple(resolved))
        ui = self.ui.pop(node_id, None)
        self._finish(node_id, spec, results, [ui] if ui else [], t0)

    # -- drivers ------------------------------------------------------------------------
    def check_between(self) -> None:
        """Interrupt check between nodes."""
        if self.flag.is_set():
            queue = self.ready_sync or self.ready_async
            nxt = queue[-1] if queue else None
            raise ExecutionInterrupted(nxt, self.nodes[nxt].class_type if nxt else None)

    def drive(self) -> None:
        """Run everything scheduled; switches to asyncio when an async node is ready."""
        ready_sync = self.ready_sync
        while True:
            if self.flag.is_set():
                self.check_between()
            if self.ready_async:
                run_coroutine_blocking(self.drive_async(), on_interrupt=self.flag.set)
                return
            if ready_sync:
                coro = self.execute(ready_sync.pop())
                try:
                    coro.send(None)
                except StopIteration:
                    continue
                coro.close()
                raise RuntimeError("a synchronous node awaited; mark its function async def")
            if self.needed:
                raise self.cycle_error()
            return

    async def drive_async(self) -> None:
        """The same loop with async nodes started as concurrent tasks."""
        tasks: dict[asyncio.Future[None], str] = {}
        try:
            while True:
                self.check_between()
                while self.ready_async:
                    nid = self.ready_async.pop()
                    self.running.add(nid)
                    tasks[asyncio.ensure_future(self.execute(nid))] = nid
                if self.ready_sync:
                    await self.execute(self.ready_sync.pop())
                    continue
                if tasks:
                    done, _ = await asyncio.wait(tasks, timeout=0.05, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        self.running.discard(tasks.pop(task))
                    for task in done:
                        task.result()
                    continue
                if self.needed:
                    raise self.cycle_error()
                return
        finally:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)


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
        Mapping exposed to nodes as ``current_context().services``.
    """

    def __init__(
        self,
        registry: Registry,
        cache: Cache,
        *,
        emit: Callable[[Event], None] | None = None,
        services: Mapping[str, Any] | None = None,
    ) -> None:
        self.registry = registry
        self.cache = cache
        self.emit: Callable[[Event], None] = emit if emit is not None else (lambda event: None)
        self.services: Mapping[str, Any] = services if services is not None else {}
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
        # Validation runs with the session's services in context: combo lists (INPUT_TYPES)
        # read the session's folders.
        token = _CURRENT.set(NodeContext(services=self.services))
        try:
            validated = validate(graph, self.registry, targets)
        finally:
            _CURRENT.reset(token)
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
        run = _Run(self, validated.graph, pid, extra_data or {}, api)
        self.emit(RunStarted(pid, tuple(validated.graph.nodes)))
        try:
            run.require(validated.outputs)
            run.drive()
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
            raise ExecutionInterrupted(node, cls) from None
        finally:
            self.interrupt_flag.clear()
        return self._result(run, validated, time.perf_counter() - t0)

    def _result(self, run: _Run, validated: Validated, seconds: float) -> PromptResult:
        outputs: dict[str, tuple[Any, ...]] = {}
        for node_id, lists in run.values.items():
            spec = self.registry.get(run.nodes[node_id].class_type)
            is_list = spec.output_is_list if spec is not None else ()
            outputs[node_id] = tuple(
                slot[0] if len(slot) == 1 and not (i < len(is_list) and is_list[i]) else slot
                for i, slot in enumerate(lists)
            )
        executed = set(run.executed)
        cached = set(run.cached)
        self.emit(RunFinished(run.prompt_id, frozenset(executed), frozenset(cached), seconds))
        return PromptResult(
            prompt_id=run.prompt_id,
            outputs=outputs,
            output_lists=dict(run.values),
            ui=dict(run.ui),
            executed=executed,
            cached=cached,
            signatures=dict(run.sigs),
            seconds=seconds,
            node_errors=validated.node_errors,
        )
