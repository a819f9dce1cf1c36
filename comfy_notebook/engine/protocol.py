"""ComfyUI V1 node classes parsed once into frozen ``NodeSpec`` descriptions.

A node class is accepted unchanged: ``INPUT_TYPES`` (required / optional / hidden),
``RETURN_TYPES``, ``RETURN_NAMES``, ``FUNCTION`` (sync or ``async def``), ``OUTPUT_NODE``,
``INPUT_IS_LIST``, ``OUTPUT_IS_LIST``, ``IS_CHANGED``, ``VALIDATE_INPUTS``,
``check_lazy_status``, ``NOT_IDEMPOTENT``, ``DEPRECATED`` / ``EXPERIMENTAL`` and the display
metadata.  Reference: ComfyUI ``comfy/comfy_types/node_typing.py`` and ``server.py node_info``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from comfy_notebook.errors import GraphError

__all__ = ["HIDDEN_KINDS", "InputSpec", "NodeSpec", "parse_node_class"]

HIDDEN_KINDS = frozenset(
    {"PROMPT", "DYNPROMPT", "EXTRA_PNGINFO", "UNIQUE_ID", "AUTH_TOKEN_COMFY_ORG", "API_KEY_COMFY_ORG"}
)


@dataclass(frozen=True)
class InputSpec:
    """One declared input: its type (a type name, a comma union, or a tuple of combo options)."""

    name: str
    type: str | tuple[Any, ...]
    options: Mapping[str, Any]
    category: str  # "required" | "optional"
    raw: tuple[Any, ...]  # the INPUT_TYPES entry as declared, for /object_info

    @property
    def lazy(self) -> bool:
        """Whether the input is only evaluated when ``check_lazy_status`` asks for it."""
        return bool(self.options.get("lazy", False))

    @property
    def raw_link(self) -> bool:
        """Whether the node receives the ``[node_id, slot]`` link itself instead of the value."""
        return bool(self.options.get("rawLink", False))

    @property
    def is_combo(self) -> bool:
        """Whether the input is a V1 combo (a list of options)."""
        return isinstance(self.type, tuple)


@dataclass(frozen=True)
class NodeSpec:
    """Everything the engine needs to know about one node class, read once at registration.

    Attributes mirror ComfyUI's V1 class attributes in snake_case; ``cls`` is the class itself
    (instances are created by the executor, one per node id and class).
    """

    name: str
    cls: type
    display_name: str
    category: str
    description: str
    python_module: str
    inputs: Mapping[str, InputSpec]
    hidden: Mapping[str, str]
    return_types: tuple[str, ...]
    return_names: tuple[str, ...]
    output_is_list: tuple[bool, ...]
    output_tooltips: tuple[str | None, ...]
    function: str
    is_async: bool
    output_node: bool
    input_is_list: bool
    not_idempotent: bool
    deprecated: bool
    experimental: bool
    api_node: bool
    has_is_changed: bool
    has_check_lazy: bool
    has_validate: bool
    validate_args: frozenset[str]
    validate_has_kwargs: bool
    raw_input_types: Mapping[str, Any] = field(repr=False)

    @property
    def needs_loop(self) -> bool:
        """Whether any hook of this node is a coroutine function (needs an asyncio loop)."""
        return self.is_async

    @property
    def uses_unique_id(self) -> bool:
        """Whether a hidden ``UNIQUE_ID`` input makes the node id part of the cache key."""
        return "UNIQUE_ID" in self.hidden.values()

    def input(self, name: str) -> InputSpec | None:
        """The declared input called ``name``, or ``None`` for an undeclared one."""
        return self.inputs.get(name)


def _bad(name: str, message: str, fix: str) -> GraphError:
    return GraphError(f"node class {name!r}: {message}. Fix: {fix}")


def _parse_input(node: str, name: str, category: str, entry: Any) -> InputSpec:
    """Parse one ``INPUT_TYPES`` entry ``(TYPE,)`` or ``(TYPE, options)``."""
    if isinstance(entry, str):  # tolerated shorthand: bare type name
        entry = (entry,)
    if not isinstance(entry, tuple | list) or not entry:
        raise _bad(node, f"input {name!r} is {entry!r}", "declare it as (TYPE,) or (TYPE, {options})")
    typ = entry[0]
    options = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
    if isinstance(typ, list | tuple):
        parsed: str | tuple[Any, ...] = tuple(typ)
    elif isinstance(typ, str):
        parsed = typ
    else:
        raise _bad(node, f"input {name!r} has type {typ!r}", "use a type name string or a list of options")
    return InputSpec(name, parsed, dict(options), category, tuple(entry))


def _is_coroutine(fn: Any) -> bool:
    return inspect.iscoroutinefunction(fn)


def parse_node_class(name: str, cls: type, display_name: str | None = None) -> NodeSpec:
    """Parse a ComfyUI V1 node class into a :class:`NodeSpec`.

    Parameters
    ----------
    name:
        The class_type under which the class is registered (a key of ``NODE_CLASS_MAPPINGS``).
    cls:
        The node class, unchanged.
    display_name:
        From ``NODE_DISPLAY_NAME_MAPPINGS``; defaults to ``name``.

    Raises
    ------
    GraphError
        When a required attribute is missing or malformed.
    """
    if not isinstance(cls, type):
        raise _bad(name, f"expected a class, received {cls!r}", "register the class, not an instance")
    if not hasattr(cls, "INPUT_TYPES"):
        raise _bad(name, "has no INPUT_TYPES classmethod", "add @classmethod INPUT_TYPES(s) -> dict")
    raw = cls.INPUT_TYPES()
    if not isinstance(raw, dict):
        raise _bad(name, f"INPUT_TYPES() returned {type(raw).__name__}", "return a dict")
    inputs: dict[str, InputSpec] = {}
    for category in ("required", "optional"):
        section = raw.get(category) or {}
        for input_name, entry in section.items():
            inputs[input_name] = _parse_input(name, input_name, category, entry)
    hidden_section = raw.get("hidden") or {}
    hidden: dict[str, str] = {}
    for input_name, kind in hidden_section.items():
        hidden[input_name] = kind[0] if isinstance(kind, tuple | list) else str(kind)
    function = getattr(cls, "FUNCTION", None)
    if not isinstance(function, str) or not hasattr(cls, function):
        raise _bad(name, f"FUNCTION is {function!r}", "set FUNCTION to the name of a method of the class")
    return_types = tuple(getattr(cls, "RETURN_TYPES", ()))
    names = getattr(cls, "RETURN_NAMES", None)
    return_names = tuple(names) if names is not None else return_types
    is_list = getattr(cls, "OUTPUT_IS_LIST", None)
    output_is_list = tuple(bool(x) for x in is_list) if is_list is not None else (False,) * len(return_types)
    output_is_list += (False,) * (len(return_types) - len(output_is_list))
    tooltips = getattr(cls, "OUTPUT_TOOLTIPS", None)
    output_tooltips = tuple(tooltips) if tooltips else (None,) * len(return_types)
    validate = getattr(cls, "VALIDATE_INPUTS", None)
    validate_args: frozenset[str] = frozenset()
    validate_has_kwargs = False
    if validate is not None:
        params = inspect.signature(validate).parameters.values()
        validate_args = frozenset(
            p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        ) - {"self", "cls", "s"}
        validate_has_kwargs = any(p.kind is p.VAR_KEYWORD for p in params)
    lazy_hook = getattr(cls, "check_lazy_status", None)
    is_changed = getattr(cls, "IS_CHANGED", None)
    is_async = any(
        _is_coroutine(fn) for fn in (getattr(cls, function), validate, lazy_hook, is_changed) if fn
    )
    return NodeSpec(
        name=name,
        cls=cls,
        display_name=display_name or name,
        category=str(getattr(cls, "CATEGORY", "")),
        description=str(getattr(cls, "DESCRIPTION", "")),
        python_module=str(getattr(cls, "RELATIVE_PYTHON_MODULE", cls.__module__)),
        inputs=inputs,
        hidden=hidden,
        return_types=return_types,
        return_names=return_names,
        output_is_list=output_is_list,
        output_tooltips=output_tooltips,
        function=function,
        is_async=is_async,
        output_node=bool(getattr(cls, "OUTPUT_NODE", False)),
        input_is_list=bool(getattr(cls, "INPUT_IS_LIST", False)),
        not_idempotent=bool(getattr(cls, "NOT_IDEMPOTENT", False)),
        deprecated=bool(getattr(cls, "DEPRECATED", False)),
        experimental=bool(getattr(cls, "EXPERIMENTAL", False)),
        api_node=bool(getattr(cls, "API_NODE", False)),
        has_is_changed=is_changed is not None,
        has_check_lazy=lazy_hook is not None,
        has_validate=validate is not None,
        validate_args=validate_args,
        validate_has_kwargs=validate_has_kwargs,
        raw_input_types=raw,
    )
