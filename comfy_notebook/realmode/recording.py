"""The graph behind real-mode handles: recorded node calls, their ancestry, API export.

Each real-mode or virtual-mode node call becomes a :class:`RecordedNode` whose inputs are
constants or :class:`NodeOutput` references to upstream recorded nodes (never values, so the
graph behind a handle does not keep upstream results alive).  Raw values (tensors, arrays,
images) become ``RealModeValue`` nodes keyed by their fingerprint.
"""

from __future__ import annotations

import json
from contextvars import ContextVar
from typing import Any

from comfy_notebook.errors import NodeError
from comfy_notebook.realmode.fingerprint import fingerprint

__all__ = ["RAW_VALUE_NODE", "NodeOutput", "RealModeValue", "RecordedNode", "Workflow", "to_api"]

RAW_VALUE_NODE = "RealModeValue"
UI_TYPE = "UI"  # the type of the handle an output node without outputs returns
NO_RAW = object()
WORKFLOW: ContextVar[Workflow | None] = ContextVar("comfy_notebook_workflow", default=None)


def _session(session: Any) -> Any:
    if session is not None:
        return session
    from comfy_notebook._session import session as current

    return current()


class RecordedNode:
    """One node call in the graph behind handles: class, inputs (constants or NodeOutput refs)."""

    __slots__ = ("__weakref__", "class_type", "inputs", "raw", "refs", "signature", "spec", "ui")

    def __init__(self, spec: Any, class_type: str, inputs: dict[str, Any], raw: Any = NO_RAW) -> None:
        self.spec = spec
        self.class_type = class_type
        self.inputs = inputs
        self.raw = raw  # the value itself, for RAW_VALUE_NODE nodes
        self.signature: str | None = None
        self.ui: Any = None
        n = max(1, len(spec.return_types)) if spec is not None else 1
        self.refs = tuple(NodeOutput(self, i) for i in range(n))

    def __repr__(self) -> str:
        return f"<RecordedNode {self.class_type}>"


class NodeOutput:
    """Output ``slot`` of a recorded node (virtual mode returns these; no value)."""

    __slots__ = ("__weakref__", "node", "slot")

    def __init__(self, node: RecordedNode, slot: int) -> None:
        self.node = node
        self.slot = slot

    @property
    def signature(self) -> str | None:
        """The cache key of the node that makes this output (``None`` until it ran)."""
        return self.node.signature

    @property
    def type(self) -> str:
        """The ComfyUI type name of this output (``IMAGE``, ``LATENT``, ...); ``UI`` for the
        result of an output node without outputs (``SaveImage``: what it saved)."""
        spec = self.node.spec
        if spec is None:
            return "*"
        if self.slot >= len(spec.return_types):
            return UI_TYPE
        return spec.return_types[self.slot]  # type: ignore[no-any-return]

    def to_api(self) -> dict[str, Any]:
        """The API-format prompt of this output's ancestry (ids numbered topologically)."""
        return to_api([self])

    def api_format_json(self, indent: int | None = 2) -> str:
        """:meth:`to_api` as JSON text."""
        return json.dumps(to_api([self]), indent=indent)

    def graph(self) -> Any:
        """The ancestry as an engine :class:`~comfy_notebook.engine.Graph`."""
        return build_graph(collect([self.node]))[0]

    def __repr__(self) -> str:
        return f"<NodeOutput {self.node.class_type}[{self.slot}] {self.type}>"


def collect(roots: list[RecordedNode]) -> list[RecordedNode]:
    """The roots and their ancestors, parents before children (iterative DFS)."""
    order: list[RecordedNode] = []
    done: set[int] = set()
    seen: set[int] = set()
    stack: list[tuple[RecordedNode, bool]] = [(r, False) for r in reversed(roots)]
    while stack:
        node, expanded = stack.pop()
        key = id(node)
        if expanded:
            if key not in done:
                done.add(key)
                order.append(node)
            continue
        if key in seen:
            continue
        seen.add(key)
        stack.append((node, True))
        for value in reversed(list(node.inputs.values())):
            if isinstance(value, NodeOutput) and id(value.node) not in seen:
                stack.append((value.node, False))
    return order


def build_graph(order: list[RecordedNode]) -> tuple[Any, dict[int, str]]:
    """An engine Graph of ``order`` with ids "1", "2", ... in topological order."""
    from comfy_notebook.engine.graph import Graph, Link, Node

    ids = {id(n): str(i + 1) for i, n in enumerate(order)}
    nodes = {}
    for n in order:
        inputs = {
            k: Link(ids[id(v.node)], v.slot) if isinstance(v, NodeOutput) else v
            for k, v in n.inputs.items()
        }
        nodes[ids[id(n)]] = Node(ids[id(n)], n.class_type, inputs, n.class_type)
    return Graph(nodes), ids


def to_api(outputs: list[NodeOutput] | list[RecordedNode]) -> dict[str, Any]:
    """The API-format prompt behind ``outputs`` (handles, node outputs or recorded nodes)."""
    roots = [o.node if isinstance(o, NodeOutput) else o for o in outputs]
    return build_graph(collect(roots))[0].to_api()  # type: ignore[no-any-return]


_RAW_VALUES: dict[str, list[Any]] = {}  # fingerprint -> values, only while a run needs them


def publish_raw(order: list[RecordedNode]) -> list[str]:
    """Make the raw values of ``order`` reachable by RealModeValue nodes during a run."""
    keys = []
    for n in order:
        if n.raw is not NO_RAW:
            fp = n.inputs["fingerprint"]
            _RAW_VALUES.setdefault(fp, []).append(n.raw)
            keys.append(fp)
    return keys


def unpublish_raw(keys: list[str]) -> None:
    for fp in keys:
        values = _RAW_VALUES.get(fp)
        if values:
            values.pop()
            if not values:
                del _RAW_VALUES[fp]


class _AnyType(str):
    """A type name that matches every input type (ComfyUI's wildcard convention)."""

    def __ne__(self, other: object) -> bool:
        return False

    __hash__ = str.__hash__


class RealModeValue:
    """Internal node: yields a raw value (tensor, array, image) passed to a real-mode call."""

    CATEGORY = "comfy_notebook/internal"
    RETURN_TYPES = (_AnyType("*"),)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"fingerprint": ("STRING", {"default": ""})}}

    def run(self, fingerprint: str) -> tuple[Any]:
        """Return the published value for ``fingerprint``."""
        values = _RAW_VALUES.get(fingerprint)
        if not values:
            raise NodeError("the raw value behind this input is no longer available",
                            node_type=RAW_VALUE_NODE, input_name="fingerprint",
                            fix="pass the tensor/array/image again in a real-mode call")
        return (values[-1],)




def raw_node(value: Any) -> NodeOutput:
    """A RAW_VALUE_NODE node carrying ``value`` under its fingerprint."""
    node = RecordedNode(None, RAW_VALUE_NODE, {"fingerprint": fingerprint(value)}, raw=value)
    return node.refs[0]


class Workflow:
    """Virtual mode: node calls inside ``with Workflow() as wf:`` record a graph, run nothing.

    Examples
    --------
    >>> with Workflow() as wf:                      # doctest: +SKIP
    ...     image = VAEDecode(KSampler(...), vae)
    ...     SaveImage(image, "out")
    >>> wf.api_format_json()                        # doctest: +SKIP
    >>> comfy_notebook.session().run(wf.graph())    # doctest: +SKIP
    """

    def __init__(self) -> None:
        self.nodes: list[RecordedNode] = []
        self._token: Any = None

    def __enter__(self) -> Workflow:
        self._token = WORKFLOW.set(self)
        return self

    def __exit__(self, *exc: object) -> None:
        WORKFLOW.reset(self._token)

    def to_api(self) -> dict[str, Any]:
        """The recorded graph (and the ancestry of real handles used in it) in API format."""
        return to_api(self.nodes)

    def api_format_json(self, indent: int | None = 2) -> str:
        """:meth:`to_api` as JSON text."""
        return json.dumps(self.to_api(), indent=indent)

    def graph(self) -> Any:
        """The recorded graph as an engine :class:`~comfy_notebook.engine.Graph`."""
        return build_graph(collect(self.nodes))[0]

    def run(self, session: Any = None, *, targets: list[str] | None = None) -> Any:
        """Run the whole workflow once through the session's executor; returns PromptResult.

        Without output nodes (and without ``targets``) the recorded nodes nobody consumes run.
        """
        session = _session(session)
        order = collect(self.nodes)
        graph, ids = build_graph(order)
        if targets is None and not any(n.spec is not None and n.spec.output_node for n in order):
            used = {id(v.node) for n in order for v in n.inputs.values() if isinstance(v, NodeOutput)}
            targets = [ids[id(n)] for n in self.nodes if id(n) not in used]  # no output node: the leaves
        if any(n.raw is not NO_RAW for n in order) and RAW_VALUE_NODE not in session.registry:
            session.register({RAW_VALUE_NODE: RealModeValue})
        raws = publish_raw(order)
        try:
            return session.run(graph, targets=targets)
        finally:
            unpublish_raw(raws)
