"""One run of a prompt: its state and scheduling (cache hits, lazy inputs, expansion, cycles).

Scheduling is a dependency count "dissolve" from the requested outputs: cached nodes are
satisfied on sight, lazy inputs are added when ``check_lazy_status`` asks, and ``expand``
results add nodes at run time.  Nothing recurses on the graph depth.  The loops that run ready
nodes are in :mod:`._drive`; calling one node is in :mod:`._node_call`.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from comfy_notebook.engine._node_call import gather_inputs, instance, map_call, summarize_inputs
from comfy_notebook.engine._results import Outputs, call_outputs, merge_outputs, merge_ui
from comfy_notebook.engine._signature import run_signature
from comfy_notebook.engine.context import NodeContext, services_context
from comfy_notebook.engine.events import NodeCached, NodeFailed, NodeFinished, NodeStarted
from comfy_notebook.engine.graph import ExecutionBlocker, Graph, Link, Node, is_link
from comfy_notebook.engine.protocol import NodeSpec
from comfy_notebook.errors import ExecutionInterrupted, GraphError, NodeExecutionError

if TYPE_CHECKING:
    from comfy_notebook.engine.executor import Executor

__all__ = ["PromptRun"]


class PromptRun:
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
        # The context of each node that started, so an interrupt that bypasses the node's own
        # handler (asyncio cancelling an async node) still reports the node's last step.
        self.contexts: dict[str, NodeContext] = {}

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

    def sig(self, node_id: str) -> str:
        """The cache key of a node, computing upstream keys iteratively."""
        s = self.sigs.get(node_id)
        if s is not None:
            return s
        with services_context(self.ex.services):  # IS_CHANGED reads this session's folders (LoadImage)
            return run_signature(self.nodes, self.registry, self.sigs, node_id)

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

    def _wait_for(self, node_id: str, srcs: list[str]) -> None:
        """Send ``node_id`` back to pending until ``srcs`` (not yet evaluated) are done."""
        self.needed[node_id] = set()
        for src in dict.fromkeys(srcs):
            if src not in self.values:
                self.add_dependency(node_id, src)
        self.require(srcs)
        if not self.needed[node_id]:
            self._push_ready(node_id)

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
    async def execute(self, node_id: str) -> None:
        """Run one ready node (possibly sending it back to pending)."""
        self.needed.pop(node_id, None)
        if node_id not in self.subgraph_results and self._twin_done(node_id):
            return
        self.current = node_id
        node = self.nodes[node_id]
        spec = self.registry.get(node.class_type)
        inputs: dict[str, list[Any]] = {}
        try:
            if spec is None:
                raise GraphError(f"unknown node class {node.class_type!r}")
            t0 = time.perf_counter()
            ctx = NodeContext(node_id, spec.name, self.prompt_id, self.ex.services, self.emit, self.flag)
            self.contexts[node_id] = ctx
            inputs = gather_inputs(self, node_id, node, spec)
            pending = self.subgraph_results.pop(node_id, None)
            if pending is not None:
                self._resolve_subgraph(node_id, spec, pending, t0)
                return
            objects = self.ex._objects
            if spec.has_check_lazy:
                obj = instance(objects, node_id, spec)
                asked = await map_call(self, obj.check_lazy_status, inputs, spec, ctx)
                if self._add_lazy(node_id, node, asked):
                    return
            self.emit(NodeStarted(self.prompt_id, node_id, spec.name, self.display.get(node_id, node_id)))
            obj = instance(objects, node_id, spec)
            raw = await map_call(self, getattr(obj, spec.function), inputs, spec, ctx)
            self._handle_returns(node_id, spec, raw, t0)
        except (ExecutionInterrupted, NodeExecutionError):
            raise
        except Exception as exc:
            class_type = node.class_type
            err = NodeExecutionError(
                node_id, class_type, exc, traceback.format_exc(), summarize_inputs(inputs), prompt_id=self.prompt_id
            )
            err.__cause__ = exc
            self.emit(NodeFailed(self.prompt_id, node_id, class_type, err))
            raise err from exc

    def _twin_done(self, node_id: str) -> bool:
        """An identical node (same signature, another id) of this prompt already ran and stored
        its outputs: take them from the cache instead of running again, as ComfyUI does."""
        try:
            key = self.sig(node_id)
        except Exception:  # reported when the node runs
            return False
        if key[0] == "~" or self.cache.peek(key) is None:
            return False
        return self._try_cache(node_id)

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
        self._wait_for(node_id, srcs)
        return True

    def _handle_returns(self, node_id: str, spec: NodeSpec, raw: list[Any], t0: float) -> None:
        """ComfyUI return conventions: tuple, {ui, result, expand}, ExecutionBlocker."""
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
                    self.require(new_outputs)
                    sub.append((True, tuple(r.get("result", ()))))
                    continue
                r = r.get("result")
            result = call_outputs(spec, r)
            results.append(result)
            sub.append((False, result))
        if not expanded:
            self._finish(node_id, spec, results, uis, t0)
            return
        self.subgraph_results[node_id] = sub
        if uis:
            self.ui[node_id] = merge_ui(uis)
        self._wait_for(node_id, [v[0] for is_sub, res in sub if is_sub for v in res if is_link(v)])

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

    def _finish(self, node_id: str, spec: NodeSpec, results: list[Any], uis: list[Any], t0: float) -> None:
        """Merge per-call results, store, emit, release."""
        out = merge_outputs(spec, results)
        ui = merge_ui(uis)
        self.cache.put(self.sigs[node_id], out, ui)
        self.executed.append(node_id)
        self.complete(node_id, out, ui)
        self.emit(NodeFinished(self.prompt_id, node_id, spec.name, time.perf_counter() - t0, ui))
