"""Binding a real-mode call's arguments to a node's inputs, from a plan parsed once per class.

Positional arguments follow ``INPUT_TYPES`` order (required, then optional), keywords are
checked against the declared inputs, defaults come from the input options, and two-value
combos such as enable/disable accept ``bool`` (ComfyScript's convention).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from comfy_notebook.errors import NodeCallError

__all__ = ["Plan", "bind", "make_plan"]

_BOOL_COMBOS = (
    ("enable", "disable"), ("enabled", "disabled"), ("true", "false"), ("on", "off"), ("yes", "no"),
)
_PRIMITIVES: dict[str, type] = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}


@dataclass(frozen=True)
class Plan:
    """Per-class call plan, parsed once: argument order, defaults, bool combos, fast keying."""

    spec: Any
    names: tuple[str, ...]
    required: tuple[str, ...]
    defaults: dict[str, Any]
    bool_maps: dict[str, tuple[Any, Any]]
    accepts_kwargs: bool
    coerce: dict[str, type]  # the engine's coercion of primitive constants (INT, FLOAT, ...)
    fast: bool  # the cache key is computable here (no id in the key; no IS_CHANGED or a cheap one)
    fingerprint: bool = False  # fast, with the class's cheap IS_CHANGED in the key


def make_plan(spec: Any) -> Plan:
    """Parse a NodeSpec into a call plan."""
    names, required, defaults, bool_maps, coerce = [], [], {}, {}, {}
    for name, inp in spec.inputs.items():
        names.append(name)
        if isinstance(inp.type, str) and inp.type in _PRIMITIVES:
            coerce[name] = _PRIMITIVES[inp.type]
        if inp.category == "required":
            required.append(name)
        if "default" in inp.options:
            defaults[name] = inp.options["default"]
        if inp.is_combo and len(inp.type) == 2:
            low = tuple(str(v).lower() for v in inp.type)
            for true_name, false_name in _BOOL_COMBOS:
                if low == (true_name, false_name):
                    bool_maps[name] = (inp.type[0], inp.type[1])
                elif low == (false_name, true_name):
                    bool_maps[name] = (inp.type[1], inp.type[0])
    fn = getattr(spec.cls, spec.function)
    accepts = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())
    # FAST_IS_CHANGED: the class's IS_CHANGED is cheap (no file read while files are unchanged,
    # e.g. CLIPTextEncode's embedding identities), so real mode keys the call itself with it
    cheap = bool(spec.has_is_changed and getattr(spec.cls, "FAST_IS_CHANGED", False))
    fast = not ((spec.has_is_changed and not cheap) or spec.not_idempotent or spec.uses_unique_id)
    return Plan(spec, tuple(names), tuple(required), defaults, bool_maps, accepts, coerce, fast, cheap)


def bind(plan: Plan, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Positional + keyword arguments -> inputs by name, with defaults; clear errors."""
    spec = plan.spec
    if len(args) > len(plan.names):
        raise NodeCallError(
            f"takes {len(plan.names)} inputs but {len(args)} positional arguments were given",
            node_type=spec.name, expected=f"inputs {list(plan.names)}", fix="pass fewer arguments",
        )
    bound = dict(zip(plan.names, args, strict=False))
    for name, value in kwargs.items():
        if name in bound:
            raise NodeCallError("given twice (positional and keyword)", node_type=spec.name,
                                input_name=name, fix="pass it once")
        if name not in spec.inputs and not plan.accepts_kwargs:
            raise NodeCallError("is not an input of this node", node_type=spec.name, input_name=name,
                                expected=f"one of {list(plan.names)}", fix="check the spelling")
        bound[name] = value
    for name, value in plan.defaults.items():
        bound.setdefault(name, value)
    for name in plan.required:
        if name not in bound:
            inp = spec.inputs[name]
            expected = f"one of {list(inp.type)[:20]}" if inp.is_combo else f"a {inp.type} value"
            raise NodeCallError("required input is missing", node_type=spec.name, input_name=name,
                                expected=expected, fix=f"pass {name}=...")
    return bound
