"""Prompt validation with ComfyUI's error types and ``node_errors`` shape, plus cycles.

Reference: ComfyUI ``execution.py`` ``validate_prompt`` / ``validate_inputs`` and
``comfy_execution/validation.py`` ``validate_node_input``.  Unlike ComfyUI, a static dependency
cycle is reported (type ``dependency_cycle``) naming the nodes in the cycle, and everything is
iterative so a 10,000-node chain validates.
"""

from __future__ import annotations

import asyncio
import difflib
import math
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from comfy_notebook.engine._value_kinds import value_kind_problem
from comfy_notebook.engine.graph import BadLink, Graph, Link, Node
from comfy_notebook.engine.protocol import InputSpec, NodeSpec
from comfy_notebook.engine.registry import Registry
from comfy_notebook.errors import ValidationError

__all__ = ["Validated", "find_cycle", "validate", "validate_node_input"]

_COERCE: dict[str, type] = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}


@dataclass(frozen=True)
class Validated:
    """A validated prompt: the graph with coerced constants, the outputs to run, the errors
    of outputs that were skipped (ComfyUI runs the valid outputs and reports the others)."""

    graph: Graph
    outputs: tuple[str, ...]
    node_errors: Mapping[str, Any]


def validate_node_input(received: Any, expected: Any, strict: bool = False) -> bool:
    """Whether an output of type ``received`` may feed an input of type ``expected``.

    Comma-separated types are unions that match when they overlap (``strict``: received must
    be a subset).  A ``str`` subclass overriding ``__ne__`` is a wildcard; a plain ``"*"`` is not.
    """
    if not (received != expected):  # noqa: SIM202 - __ne__ is the wildcard hook
        return True
    if isinstance(expected, tuple | list):  # a V1 combo accepts combo outputs
        return received == "COMBO" or isinstance(received, tuple | list)
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    got = {t.strip() for t in received.split(",")}
    want = {t.strip() for t in expected.split(",")}
    return got <= want if strict else bool(got & want)


def _err(kind: str, message: str, details: str, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


def _prompt_error(kind: str, message: str, details: str) -> ValidationError:
    return ValidationError(_err(kind, message, details), {})


def find_cycle(graph: Graph, roots: Iterable[str]) -> tuple[list[str], list[str] | None]:
    """Iterative DFS from ``roots`` over every link: ``(post_order, cycle_or_None)``.

    ``post_order`` lists reachable nodes, upstream first; links to missing nodes are ignored.
    """
    nodes = graph.nodes
    state: dict[str, int] = {}  # 1 = on stack, 2 = done
    order: list[str] = []
    for root in roots:
        if root in state or root not in nodes:
            continue
        stack: list[tuple[str, Any]] = [(root, iter(list(nodes[root].links())))]
        state[root] = 1
        while stack:
            node_id, it = stack[-1]
            for _, link in it:
                src = link.node_id
                if src not in nodes:
                    continue
                s = state.get(src)
                if s is None:
                    state[src] = 1
                    stack.append((src, iter(list(nodes[src].links()))))
                    break
                if s == 1:
                    path = [n for n, _ in stack]
                    return order, [*path[path.index(src):], src]
            else:
                stack.pop()
                state[node_id] = 2
                order.append(node_id)
    return order, None


def _run_maybe_async(value: Any) -> Any:
    """Await ``value`` when a hook returned a coroutine (validation is synchronous)."""
    if asyncio.iscoroutine(value):
        from comfy_notebook.engine._drive import run_coroutine_blocking

        return run_coroutine_blocking(value)
    return value


def _check_constant(
    name: str, spec: InputSpec, value: Any, skip_limits: bool, errors: list[dict[str, Any]]
) -> Any:
    """Coerce a constant and check min / max / combo membership; returns the coerced value."""
    info = list(spec.raw)
    typ = spec.type
    if isinstance(value, BadLink):
        errors.append(
            _err(
                "bad_linked_input",
                "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                name,
                input_name=name,
                input_config=info,
                received_value=list(value.raw),
            )
        )
        return value
    if isinstance(typ, str) and typ in _COERCE:
        try:
            value = _COERCE[typ](value)
        except Exception as exc:
            errors.append(
                _err(
                    "invalid_input_type",
                    f"Failed to convert an input value to a {typ} value",
                    f"{name}, {value}, {exc}",
                    input_name=name,
                    input_config=info,
                    received_value=value,
                    exception_message=str(exc),
                )
            )
            return value
    if typ == "FLOAT" and isinstance(value, float) and not math.isfinite(value):
        # Stricter than ComfyUI on purpose: nan / inf run silently there and give black images.
        errors.append(
            _err(
                "value_not_finite",
                f"Value {value} is not a finite number",
                f"{name}: FLOAT inputs must be finite (nan and inf are refused). Fix: pass a finite number",
                input_name=name,
                input_config=info,
                received_value=value,
            )
        )
        return value
    if skip_limits:
        return value
    opts = spec.options
    try:
        if "min" in opts and value < opts["min"]:
            errors.append(
                _err(
                    "value_smaller_than_min",
                    f"Value {value} smaller than min of {opts['min']}",
                    name,
                    input_name=name,
                    input_config=info,
                    received_value=value,
                )
            )
        if "max" in opts and value > opts["max"]:
            errors.append(
                _err(
                    "value_bigger_than_max",
                    f"Value {value} bigger than max of {opts['max']}",
                    name,
                    input_name=name,
                    input_config=info,
                    received_value=value,
                )
            )
    except TypeError as exc:
        errors.append(
            _err("invalid_input_type", f"Cannot compare {value!r} with min/max", f"{name}, {exc}", input_name=name)
        )
    if isinstance(typ, tuple):
        try:
            ok = value in typ
        except Exception:
            ok = False
        if not ok:
            long = len(typ) > 20
            listing = f"(list of length {len(typ)})" if long else str(list(typ))
            close = difflib.get_close_matches(str(value), [str(o) for o in typ], n=3, cutoff=0.75)
            hint = f"; close matches: {close}" if close else ""
            errors.append(
                _err(
                    "value_not_in_list",
                    "Value not in list",
                    f"{name}: '{value}' not in {listing}{hint}",
                    input_name=name,
                    input_config=None if long else info,
                    received_value=value,
                )
            )
    return value


def _validate_node(
    node: Node, spec: NodeSpec, graph: Graph, registry: Registry, invalid: set[str]
) -> tuple[bool, list[dict[str, Any]], dict[str, Any] | None]:
    """Check one node; upstream nodes are already done.  Returns (valid, errors, coerced)."""
    errors: list[dict[str, Any]] = []
    valid = True
    coerced: dict[str, Any] | None = None
    received_types: dict[str, Any] = {}
    v_args = spec.validate_args
    check_types = "input_types" not in v_args
    for name, ispec in spec.inputs.items():
        if name not in node.inputs:
            if ispec.category == "required":
                errors.append(_err("required_input_missing", "Required input is missing", name, input_name=name))
            continue
        value = node.inputs[name]
        if isinstance(value, Link):
            src = graph.nodes.get(value.node_id)
            src_spec = registry.get(src.class_type) if src is not None else None
            if src is None or src_spec is None:
                errors.append(
                    _err(
                        "bad_linked_input",
                        "Bad linked input, source node does not exist",
                        f"{name}: node {value.node_id!r} is not in the prompt",
                        input_name=name,
                        input_config=list(ispec.raw),
                        received_value=value.to_api(),
                    )
                )
                continue
            if not 0 <= value.output < len(src_spec.return_types):
                errors.append(
                    _err(
                        "bad_linked_input",
                        "Bad linked input, output slot out of range",
                        f"{name}: {src.class_type} has {len(src_spec.return_types)} outputs, link asks for slot {value.output}",
                        input_name=name,
                        received_value=value.to_api(),
                    )
                )
                continue
            received = src_spec.return_types[value.output]
            received_types[name] = received
            if check_types and not validate_node_input(received, ispec.type):
                errors.append(
                    _err(
                        "return_type_mismatch",
                        "Return type mismatch between linked nodes",
                        f"{name}, received_type({received}) mismatch input_type({ispec.type})",
                        input_name=name,
                        input_config=list(ispec.raw),
                        received_type=received,
                        linked_node=value.to_api(),
                    )
                )
                continue
            if value.node_id in invalid:
                valid = False
            continue
        problem = value_kind_problem(ispec.type, value) if check_types else None
        if problem is not None:
            errors.append(_err("invalid_input_type", "Wrong kind of value", f"{name}: {problem}",
                               input_name=name, input_config=list(ispec.raw), received_value=value))
            continue
        skip = spec.validate_has_kwargs or name in v_args
        new = _check_constant(name, ispec, value, skip, errors)
        if new is not value:
            if coerced is None:
                coerced = dict(node.inputs)
            coerced[name] = new
    for name, value in node.inputs.items():  # undeclared links still need their source
        if name not in spec.inputs and isinstance(value, Link):
            if value.node_id not in graph.nodes:
                errors.append(
                    _err("bad_linked_input", "Bad linked input, source node does not exist", name, input_name=name)
                )
            elif value.node_id in invalid:
                # the executor runs every linked source (as ComfyUI's ExecutionList does), so an
                # invalid one fails validation here instead of failing at run time
                valid = False
    if errors:
        return False, errors, coerced
    if spec.has_validate and (v_args or spec.validate_has_kwargs):
        inputs = coerced if coerced is not None else node.inputs
        kwargs: dict[str, Any] = {
            k: v
            for k, v in inputs.items()
            if not isinstance(v, Link) and k in spec.inputs and (spec.validate_has_kwargs or k in v_args)
        }
        if "input_types" in v_args:
            kwargs["input_types"] = received_types
        try:
            result = _run_maybe_async(spec.cls.VALIDATE_INPUTS(**kwargs))  # type: ignore[attr-defined]
        except Exception as exc:
            errors.append(
                _err(
                    "exception_during_validation",
                    "Exception when validating node",
                    str(exc),
                    exception_type=type(exc).__name__,
                    traceback=traceback.format_tb(exc.__traceback__),
                )
            )
            return False, errors, coerced
        if result is not True:
            details = node.class_type if result is False else f"{node.class_type} - {result}"
            errors.append(_err("custom_validation_failed", "Custom validation failed for node", details))
            return False, errors, coerced
    return valid, errors, coerced


def validate(graph: Graph, registry: Registry, targets: Iterable[str] | None = None) -> Validated:
    """Validate a graph the way ComfyUI's ``validate_prompt`` does.

    Parameters
    ----------
    graph:
        The prompt.
    registry:
        Known node classes.
    targets:
        Node ids to run instead of every ``OUTPUT_NODE`` (partial execution); any node may be a
        target.  An empty list is ``prompt_no_outputs``.

    Returns
    -------
    Validated
        The coerced graph, the outputs that passed and the ``node_errors`` of those that did not.

    Raises
    ------
    ValidationError
        ``invalid_prompt`` (unknown class or target), ``prompt_no_outputs``, or
        ``prompt_outputs_failed_validation`` when no output is valid (with ``node_errors``).
    """
    nodes = graph.nodes
    for node_id, node in nodes.items():
        if node.class_type not in registry:
            raise _prompt_error(
                "invalid_prompt",
                f"Cannot execute because node {node.class_type} does not exist.",
                f"Node ID '#{node_id}'",
            )
    if targets is None:
        outputs = [nid for nid, n in nodes.items() if registry[n.class_type].output_node]
    else:
        outputs = list(dict.fromkeys(targets))
        for t in outputs:
            if t not in nodes:
                raise _prompt_error(
                    "invalid_prompt", f"Target node {t} is not in the prompt.", f"Node ID '#{t}'"
                )
    if not outputs:
        raise _prompt_error("prompt_no_outputs", "Prompt has no outputs", "")
    order, cycle = find_cycle(graph, outputs)
    results: dict[str, tuple[bool, list[dict[str, Any]]]] = {}
    invalid: set[str] = set()
    new_nodes: dict[str, Node] | None = None
    in_cycle: set[str] = set()
    while cycle is not None:  # report each cycle, then keep looking past it
        names = " -> ".join(f"{n} ({nodes[n].class_type})" for n in cycle)
        for n in cycle[:-1]:
            in_cycle.add(n)
            err = _err("dependency_cycle", "Dependency cycle detected", names, cycle=list(cycle))
            results[n] = (False, [err])
            invalid.add(n)
        pruned = {
            k: v if k not in in_cycle else replace(v, inputs={a: b for a, b in v.inputs.items() if not isinstance(b, Link)})
            for k, v in nodes.items()
        }
        order, cycle = find_cycle(Graph(pruned), outputs)
    for node_id in order:
        if node_id in in_cycle:
            continue
        node = nodes[node_id]
        spec = registry.current(node.class_type)
        try:
            ok, errs, coerced = _validate_node(node, spec, graph, registry, invalid)
        except Exception as exc:
            ok, coerced = False, None
            errs = [
                _err(
                    "exception_during_validation",
                    "Exception when validating node",
                    str(exc),
                    exception_type=type(exc).__name__,
                    traceback=traceback.format_tb(exc.__traceback__),
                )
            ]
        if not ok:
            invalid.add(node_id)
        results[node_id] = (ok, errs)
        if coerced is not None:
            if new_nodes is None:
                new_nodes = dict(nodes)
            new_nodes[node_id] = replace(node, inputs=coerced)
    good: list[str] = []
    node_errors: dict[str, Any] = {}
    for out in outputs:
        if out not in invalid:
            good.append(out)
            continue
        ancestors, _ = find_cycle(Graph({k: v for k, v in nodes.items() if k not in in_cycle}), [out])
        for n in [*ancestors, *(c for c in in_cycle if c not in ancestors)]:
            ok_errs = results.get(n)
            if ok_errs is None or not ok_errs[1]:
                continue
            entry = node_errors.setdefault(
                n, {"errors": ok_errs[1], "dependent_outputs": [], "class_type": nodes[n].class_type}
            )
            entry["dependent_outputs"].append(out)
    if not good:
        raise ValidationError(
            _err("prompt_outputs_failed_validation", "Prompt outputs failed validation", ""), node_errors
        )
    final = Graph(new_nodes) if new_nodes is not None else graph
    return Validated(final, tuple(good), node_errors)
