"""The cache key of a node inside a run: :func:`node_signature` over the node and its ancestors.

Keys are computed iteratively (no recursion on the graph depth) and memoised in the run's
``sigs`` dict; a missing or cyclic upstream gets an uncacheable key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from comfy_notebook.engine._drive import run_coroutine_blocking
from comfy_notebook.engine.cache import node_signature
from comfy_notebook.engine.graph import Link, Node
from comfy_notebook.engine.protocol import NodeSpec
from comfy_notebook.engine.registry import Registry

__all__ = ["is_changed", "run_signature"]


def is_changed(node: Node, spec: NodeSpec) -> Any:
    """IS_CHANGED with the constant inputs only (linked inputs are None); raises -> NaN."""
    kwargs = {k: (None if isinstance(v, Link) else v) for k, v in node.inputs.items() if k in spec.inputs}
    try:
        result = spec.cls.IS_CHANGED(**kwargs)  # type: ignore[attr-defined]
        if asyncio.iscoroutine(result):
            result = run_coroutine_blocking(result)
    except Exception:
        return float("nan")
    return result


def run_signature(nodes: Mapping[str, Node], registry: Registry, sigs: dict[str, str], node_id: str) -> str:
    """The cache key of ``node_id``, filling ``sigs`` with the keys of its ancestors."""
    stack = [node_id]
    visiting: set[str] = set()
    while stack:
        n = stack[-1]
        if n in sigs:
            stack.pop()
            continue
        node = nodes[n]
        if n not in visiting:
            visiting.add(n)
            pushed = False
            for _, link in node.links():
                src = link.node_id
                if src in sigs:
                    continue
                if src in visiting or src not in nodes:
                    sigs[src] = node_signature("cycle", float("nan"), None, {}, {})
                else:
                    stack.append(src)
                    pushed = True
            if pushed:
                continue
        spec = registry.get(node.class_type)
        fingerprint = None
        uid = None
        if spec is not None:
            if spec.has_is_changed:
                fingerprint = is_changed(node, spec)
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
