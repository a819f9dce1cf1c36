"""Graphs as frozen dataclasses, ComfyUI API-format JSON in and out, and ``GraphBuilder``.

API format (what ComfyUI's ``/prompt`` receives)::

    {"<id>": {"inputs": {name: constant | ["src_id", slot]}, "class_type": str,
              "_meta": {"title": str}}}

A list constant is written ``{"__value__": [...]}`` so it cannot be mistaken for a link.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from comfy_notebook.errors import GraphError

__all__ = ["BadLink", "ExecutionBlocker", "Graph", "GraphBuilder", "Link", "Node", "NodeRef", "is_link"]


@dataclass(frozen=True, slots=True)
class Link:
    """A reference to output ``output`` of node ``node_id`` (API form ``["id", slot]``)."""

    node_id: str
    output: int

    def to_api(self) -> list[Any]:
        """``[node_id, output]``."""
        return [self.node_id, self.output]


@dataclass(frozen=True, slots=True)
class BadLink:
    """A bare JSON list that is not a ``[str, int]`` link; validation reports it."""

    raw: tuple[Any, ...]


class ExecutionBlocker:
    """Returned as an output value to block every node that consumes it.

    With a message the block is reported (``NodeBlocked`` event, "Execution Blocked: ...");
    with ``None`` it blocks silently.
    """

    __slots__ = ("message",)

    def __init__(self, message: str | None) -> None:
        self.message = message

    def __repr__(self) -> str:
        return f"ExecutionBlocker({self.message!r})"


def is_link(value: Any) -> bool:
    """Whether ``value`` is an API-format link ``[str, int]`` (or a :class:`Link`)."""
    if isinstance(value, Link):
        return True
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def _input_from_api(value: Any) -> Any:
    """Decode one API input value: link, wrapped list constant, bad link or constant."""
    if isinstance(value, list):
        if is_link(value):
            return Link(value[0], value[1])
        return BadLink(tuple(value))
    if isinstance(value, dict) and len(value) == 1 and "__value__" in value:
        inner = value["__value__"]
        return list(inner) if isinstance(inner, list) else inner
    return value


def _input_to_api(value: Any) -> Any:
    if isinstance(value, Link):
        return [value.node_id, value.output]
    if isinstance(value, BadLink):
        return list(value.raw)
    if isinstance(value, list):
        return {"__value__": value}
    return value


@dataclass(frozen=True, eq=True)
class Node:
    """One node: id, class_type, inputs (constants or :class:`Link`) and an optional title."""

    id: str
    class_type: str
    inputs: Mapping[str, Any] = field(default_factory=dict)
    title: str | None = None
    meta: Mapping[str, Any] | None = None  # other _meta keys, kept for round trips

    def links(self) -> Iterator[tuple[str, Link]]:
        """``(input_name, link)`` for every linked input."""
        for name, value in self.inputs.items():
            if isinstance(value, Link):
                yield name, value

    def to_api(self) -> dict[str, Any]:
        """This node in API format."""
        out: dict[str, Any] = {
            "inputs": {k: _input_to_api(v) for k, v in self.inputs.items()},
            "class_type": self.class_type,
        }
        if self.meta is not None or self.title is not None:
            meta = dict(self.meta or {})
            if self.title is not None:
                meta["title"] = self.title
            out["_meta"] = meta
        return out


@dataclass(frozen=True, eq=True)
class Graph:
    """An immutable graph: ``nodes`` maps node id -> :class:`Node` in prompt order."""

    nodes: Mapping[str, Node] = field(default_factory=dict)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self.nodes

    def __getitem__(self, node_id: str) -> Node:
        return self.nodes[node_id]

    def __len__(self) -> int:
        return len(self.nodes)

    @classmethod
    def from_api(cls, api: Mapping[str, Any]) -> Graph:
        """Parse an API-format prompt dict.

        Raises
        ------
        GraphError
            When the prompt is not a dict of nodes, a node is not a dict, or it lacks a string
            ``class_type``.  ``GraphError.node_id`` is set where a node is to blame.
        """
        if not isinstance(api, Mapping):
            raise GraphError(
                f"an API prompt must be a dict of nodes, received {type(api).__name__}. "
                "Fix: pass the 'prompt' part of the /prompt body"
            )
        nodes: dict[str, Node] = {}
        for raw_id, data in api.items():
            node_id = str(raw_id)
            if not isinstance(data, Mapping):
                err = GraphError(f"node {node_id}: expected a dict with class_type and inputs, received {type(data).__name__}")
                err.node_id = node_id  # type: ignore[attr-defined]
                raise err
            class_type = data.get("class_type")
            if not isinstance(class_type, str):
                err = GraphError(f"node {node_id}: missing class_type property")
                err.node_id = node_id  # type: ignore[attr-defined]
                raise err
            inputs = data.get("inputs", {})
            if not isinstance(inputs, Mapping):
                err = GraphError(f"node {node_id}: inputs must be a dict, received {type(inputs).__name__}")
                err.node_id = node_id  # type: ignore[attr-defined]
                raise err
            meta = data.get("_meta")
            title = None
            rest = None
            if isinstance(meta, Mapping):
                title = meta.get("title") if isinstance(meta.get("title"), str) else None
                rest = {k: v for k, v in meta.items() if k != "title" or title is None}
            nodes[node_id] = Node(
                node_id, class_type, {str(k): _input_from_api(v) for k, v in inputs.items()}, title, rest
            )
        return cls(nodes)

    def to_api(self) -> dict[str, Any]:
        """The graph in API format (``from_api(g.to_api()) == g``)."""
        return {node_id: node.to_api() for node_id, node in self.nodes.items()}

    @classmethod
    def from_json(cls, text: str) -> Graph:
        """Parse API-format JSON text."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise GraphError(f"prompt is not valid JSON: {exc}") from exc
        return cls.from_api(data)

    def to_json(self, **kwargs: Any) -> str:
        """API-format JSON text (``json.dumps`` keyword arguments pass through)."""
        return json.dumps(self.to_api(), **kwargs)


class NodeRef:
    """A node under construction in a :class:`GraphBuilder` (ComfyUI's ``Node`` helper)."""

    def __init__(self, node_id: str, class_type: str, inputs: dict[str, Any]) -> None:
        self.id = node_id
        self.class_type = class_type
        self.inputs = inputs
        self.override_display_id: str | None = None

    def out(self, index: int) -> list[Any]:
        """A link to output ``index``, in API form."""
        return [self.id, index]

    def set_input(self, key: str, value: Any) -> None:
        """Set (or with ``None`` remove) an input."""
        if value is None:
            self.inputs.pop(key, None)
        else:
            self.inputs[key] = value

    def get_input(self, key: str) -> Any:
        """The value of an input, or ``None``."""
        return self.inputs.get(key)

    def set_override_display_id(self, override_display_id: str) -> None:
        """Show this node's progress under another node id."""
        self.override_display_id = override_display_id

    def serialize(self) -> dict[str, Any]:
        """API-format dict of this node."""
        out: dict[str, Any] = {
            "class_type": self.class_type,
            "inputs": {k: v.to_api() if isinstance(v, Link) else v for k, v in self.inputs.items()},
        }
        if self.override_display_id is not None:
            out["override_display_id"] = self.override_display_id
        return out


class GraphBuilder:
    """Builds API-format subgraphs, for node expansion (ComfyUI-compatible API).

    Inside a running node the default prefix is ``"{node_id}.{call_index}.{graph_index}."``
    so that expanded ids never collide; outside a run it is empty.

    Examples
    --------
    >>> g = GraphBuilder()
    >>> a = g.node("StubInt", value=1)
    >>> b = g.node("IntAdd", a=a.out(0), b=2)
    >>> sorted(g.finalize())
    ['1', '2']
    """

    def __init__(self, prefix: str | None = None) -> None:
        if prefix is None:
            from comfy_notebook.engine.context import current_context

            prefix = current_context().alloc_prefix()
        self.prefix = prefix
        self.nodes: dict[str, NodeRef] = {}
        self._id_gen = 1

    def node(self, class_type: str, id: str | None = None, **kwargs: Any) -> NodeRef:
        """Add (or fetch, when ``id`` exists) a node and return it."""
        if id is None:
            id = str(self._id_gen)
            self._id_gen += 1
        full_id = self.prefix + id
        if full_id in self.nodes:
            return self.nodes[full_id]
        ref = NodeRef(full_id, class_type, dict(kwargs))
        self.nodes[full_id] = ref
        return ref

    def lookup_node(self, id: str) -> NodeRef | None:
        """The node with (unprefixed) ``id``, or ``None``."""
        return self.nodes.get(self.prefix + id)

    def remove_node(self, id: str) -> None:
        """Remove the node with (unprefixed) ``id``."""
        self.nodes.pop(self.prefix + id, None)

    def finalize(self) -> dict[str, Any]:
        """The subgraph in API format (what a node returns under ``"expand"``)."""
        return {node_id: ref.serialize() for node_id, ref in self.nodes.items()}

    def build(self) -> Graph:
        """The subgraph as a :class:`Graph`."""
        return Graph.from_api(self.finalize())
