"""Results: one call's return value, merging a node's calls, and the :class:`PromptResult` of a run.

ComfyUI's return conventions: a node function returns a tuple, ``None``, an
:class:`ExecutionBlocker`, or a dict with ``ui`` / ``result`` / ``expand``.  A node called once per
list index has its per-call tuples merged slot by slot (``OUTPUT_IS_LIST`` slots concatenate).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from comfy_notebook.engine.graph import ExecutionBlocker, Node
from comfy_notebook.engine.protocol import NodeSpec
from comfy_notebook.engine.registry import Registry

__all__ = ["Outputs", "PromptResult", "call_outputs", "merge_outputs", "merge_ui", "unwrap_outputs"]

Outputs = tuple[list[Any], ...]


@dataclass(repr=False)
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

    def __repr__(self) -> str:
        """One short line (the values themselves are in ``outputs``; they can be huge)."""
        ui = f", ui from {sorted(self.ui)}" if self.ui else ""
        return (f"<PromptResult {self.prompt_id[:8]}: {len(self.executed)} executed, {len(self.cached)} cached, "
                f"outputs of {len(self.outputs)} nodes{ui}, {self.seconds:.2f} s>")


def merge_ui(uis: list[Any]) -> dict[str, Any] | None:
    """The ``ui`` dicts of a node's calls as one (list values concatenate, others: last wins)."""
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


def call_outputs(spec: NodeSpec, result: Any) -> tuple[Any, ...]:
    """One call's result (a dict's ``result`` entry, or the plain return) as a tuple of outputs."""
    n_out = len(spec.return_types)
    if result is None:
        result = (None,) * n_out
    elif isinstance(result, ExecutionBlocker):
        result = (result,) * n_out
    if not isinstance(result, tuple | list) or len(result) < n_out:
        raise TypeError(
            f"{spec.name}.{spec.function} returned {type(result).__name__} {result!r:.80}; "
            f"expected a tuple of {n_out} values for RETURN_TYPES {spec.return_types}"
        )
    return tuple(result)


def merge_outputs(spec: NodeSpec, results: list[Any]) -> Outputs:
    """Per-call output tuples as per-slot lists (OUTPUT_IS_LIST slots concatenate)."""
    outputs: list[list[Any]] = []
    for i in range(len(spec.return_types)):
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
    return tuple(outputs)


def unwrap_outputs(
    registry: Registry, nodes: Mapping[str, Node], values: Mapping[str, Outputs]
) -> dict[str, tuple[Any, ...]]:
    """``node_id -> outputs`` with one-element slot lists unwrapped (not OUTPUT_IS_LIST slots)."""
    outputs: dict[str, tuple[Any, ...]] = {}
    for node_id, lists in values.items():
        spec = registry.get(nodes[node_id].class_type)
        is_list = spec.output_is_list if spec is not None else ()
        outputs[node_id] = tuple(
            slot[0] if len(slot) == 1 and not (i < len(is_list) and is_list[i]) else slot
            for i, slot in enumerate(lists)
        )
    return outputs
