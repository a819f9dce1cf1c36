"""ComfyUI V3 node classes (``comfy_api.latest.io.ComfyNode``) as V1-shaped classes.

A V3 node declares itself with ``define_schema() -> Schema`` and runs with the classmethod
``execute(**inputs) -> NodeOutput``; optional classmethods ``fingerprint_inputs`` (IS_CHANGED),
``validate_inputs`` (VALIDATE_INPUTS) and ``check_lazy_status``.  Hidden values (unique id,
prompt, extra_pnginfo, ...) reach the node as ``cls.hidden`` on a per-call clone of the class.

:func:`adapt_v3` reads the schema through its published shape only (``Schema.inputs`` of
objects with ``id``, ``optional``, ``get_io_type()``, ``as_dict()``; ``Schema.outputs`` with
``io_type``, ``display_name``, ``is_output_list``, ``tooltip``; ``Schema.hidden`` of str enums;
the ``is_*`` flags), so the same code serves ComfyUI's own ``comfy_api`` (an attached ComfyUI)
and the compatibility copy that :mod:`comfy_notebook.interop` provides — and the engine never
imports either.  The adapter is a plain V1 class, so validation, the cache key, list mapping,
lazy inputs, expansion and blockers go through the one executor unchanged.

Reference: ComfyUI ``comfy_api/latest/_io.py`` (``Schema.get_v1_info``, ``HiddenHolder``,
``_ComfyNodeBaseInternal.EXECUTE_NORMALIZED`` / ``PREPARE_CLASS_CLONE``) and ``execution.py``
(``get_output_from_returns``) at commit 004b1b5.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from comfy_notebook.engine.graph import ExecutionBlocker
from comfy_notebook.errors import GraphError

__all__ = ["adapt_v3", "is_v3_class"]

_HOOKS = ("fingerprint_inputs", "validate_inputs", "check_lazy_status")


def is_v3_class(cls: Any) -> bool:
    """Whether ``cls`` is a V3 node class (has ``define_schema`` and ``execute`` classmethods)."""
    return (isinstance(cls, type) and callable(getattr(cls, "define_schema", None))
            and callable(getattr(cls, "execute", None)))


def _own(cls: type, name: str) -> Callable[..., Any] | None:
    """``cls.name`` when the node class (not the V3 base classes) defines it, else ``None``.

    ComfyUI's base class defines every hook with a default that raises or asks for every
    input (``first_real_override``); only an override by the node counts.
    """
    base: Any = None
    get_base = getattr(cls, "GET_BASE_CLASS", None)
    if callable(get_base):
        try:
            base = get_base()
        except Exception:  # a broken base hook: treat every hook as the node's own
            base = None
    fn = getattr(cls, name, None)
    if fn is None:
        return None
    base_fn = getattr(base, name, None) if base is not None else None
    if base_fn is not None and getattr(fn, "__func__", fn) is getattr(base_fn, "__func__", base_fn):
        return None
    return fn  # type: ignore[no-any-return]


def _schema(cls: type) -> Any:
    schema = cls.define_schema()  # type: ignore[attr-defined]
    finalize = getattr(schema, "finalize", None)
    if callable(finalize):
        finalize()
    validate = getattr(schema, "validate", None)
    if callable(validate):
        try:
            validate()
        except Exception as exc:
            raise GraphError(f"V3 node class {cls.__name__}: its schema is invalid ({exc}). "
                             "Fix: give every input and output a unique id") from exc
    return schema


def _v1_inputs(schema: Any) -> dict[str, dict[str, Any]]:
    """``INPUT_TYPES()`` of a schema: ``{"required": {id: (type, options)}, "optional", "hidden"}``."""
    out: dict[str, dict[str, Any]] = {"required": {}}
    for inp in schema.inputs or ():
        options = dict(inp.as_dict())
        options.pop("optional", None)
        io_type = inp.get_io_type()
        if io_type == "COMBO" and "options" in options:  # V1 combos are list-typed inputs
            entry: tuple[Any, ...] = (list(options["options"]), options)
        else:
            entry = (str(io_type), options)
        out.setdefault("optional" if inp.optional else "required", {})[inp.id] = entry
    for hidden in schema.hidden or ():
        value = getattr(hidden, "value", hidden)
        out.setdefault("hidden", {})[_hidden_name(hidden)] = (str(value),)
    return out


def _hidden_name(hidden: Any) -> str:
    """The keyword a hidden input travels under (the enum member's name, as ComfyUI's V1 info)."""
    name = getattr(hidden, "name", None)
    return str(name) if isinstance(name, str) else str(hidden).lower()


class _Hidden:
    """``cls.hidden`` of a call: the requested hidden values; anything else reads as ``None``."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.__dict__.update(values)

    def __getattr__(self, name: str) -> Any:
        return None


def _clone(cls: type, hidden: Mapping[str, Any], kinds: Mapping[str, str]) -> Any:
    """A per-call clone of the node class carrying the hidden values (never mutate the class)."""
    prepare = getattr(cls, "PREPARE_CLASS_CLONE", None)
    if callable(prepare):  # ComfyUI's own (or the compatibility) base class
        by_kind = {kinds[name]: value for name, value in hidden.items()}
        return prepare({"hidden_inputs": by_kind})
    return type(cls.__name__, (cls,), {"hidden": _Hidden(hidden), "__module__": cls.__module__})


def _normalize(cls: type, result: Any, n_outputs: int, expandable: bool) -> Any:
    """A V3 return value as the V1 conventions the executor knows (tuple / dict / blocker)."""
    if result is None or isinstance(result, tuple | ExecutionBlocker):
        return result
    if isinstance(result, dict):
        return result
    if not hasattr(result, "args") or not hasattr(result, "ui"):
        message = getattr(result, "message", None)
        if type(result).__name__ == "ExecutionBlocker":  # ComfyUI's own blocker class
            return ExecutionBlocker(message)
        raise TypeError(f"{cls.__name__}.execute returned {type(result).__name__}; expected "
                        "io.NodeOutput(...), a tuple, a dict or None")
    block = getattr(result, "block_execution", None)
    if block is not None:
        return (ExecutionBlocker(block),) * n_outputs
    out: dict[str, Any] = {"result": tuple(result.args)}
    ui = result.ui
    if ui is not None:
        out["ui"] = ui.as_dict() if callable(getattr(ui, "as_dict", None)) else dict(ui)
    expand = getattr(result, "expand", None)
    if expand is not None:
        if not expandable:
            raise TypeError(f"{cls.__name__} returned an expansion but its schema has "
                            "enable_expand=False; set enable_expand=True in define_schema")
        out["expand"] = expand
    return out


def _with_signature(fn: Callable[..., Any], like: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` reporting ``like``'s parameters (the engine reads VALIDATE_INPUTS' signature)."""
    try:
        params = list(inspect.signature(like).parameters.values())
    except (TypeError, ValueError):
        return fn
    first = inspect.Parameter("cls", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    fn.__signature__ = inspect.Signature([first, *params])  # type: ignore[attr-defined]
    return fn


def adapt_v3(cls: type) -> type:
    """A V1 node class that runs the V3 class ``cls`` with ComfyUI's V3 semantics.

    Raises
    ------
    GraphError
        When ``define_schema`` fails or returns a malformed schema.
    """
    try:
        schema = _schema(cls)
    except GraphError:
        raise
    except Exception as exc:
        raise GraphError(f"V3 node class {cls.__name__}: define_schema() raised "
                         f"{type(exc).__name__}: {exc}. Fix: the node pack's schema") from exc
    outputs = list(schema.outputs or ())
    hidden_kinds = {_hidden_name(h): str(getattr(h, "value", h)) for h in schema.hidden or ()}
    n_out = len(outputs)
    expandable = bool(getattr(schema, "enable_expand", False))
    is_async = inspect.iscoroutinefunction(cls.execute)  # type: ignore[attr-defined]

    def split(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        hidden = {k: kwargs.pop(k) for k in list(kwargs) if k in hidden_kinds}
        return kwargs, hidden

    def run(self: Any, **kwargs: Any) -> Any:
        kwargs, hidden = split(kwargs)
        return _normalize(cls, _clone(cls, hidden, hidden_kinds).execute(**kwargs), n_out, expandable)

    async def run_async(self: Any, **kwargs: Any) -> Any:
        kwargs, hidden = split(kwargs)
        result = await _clone(cls, hidden, hidden_kinds).execute(**kwargs)
        return _normalize(cls, result, n_out, expandable)

    raw_inputs = _v1_inputs(schema)
    attrs: dict[str, Any] = {
        "__module__": cls.__module__,
        "__doc__": cls.__doc__,
        "V3_CLASS": cls,
        "V3_DISPLAY_NAME": getattr(schema, "display_name", None),
        "INPUT_TYPES": classmethod(lambda c: _v1_inputs(_schema(cls))),
        "RETURN_TYPES": tuple(str(o.io_type) for o in outputs),
        "RETURN_NAMES": tuple(str(o.display_name or o.io_type) for o in outputs),
        "OUTPUT_IS_LIST": tuple(bool(o.is_output_list) for o in outputs),
        "OUTPUT_TOOLTIPS": tuple(getattr(o, "tooltip", None) for o in outputs),
        "FUNCTION": "execute_v3",
        "execute_v3": run_async if is_async else run,
        "CATEGORY": str(getattr(schema, "category", "") or ""),
        "DESCRIPTION": str(getattr(schema, "description", "") or ""),
        "OUTPUT_NODE": bool(getattr(schema, "is_output_node", False)),
        "INPUT_IS_LIST": bool(getattr(schema, "is_input_list", False)),
        "NOT_IDEMPOTENT": bool(getattr(schema, "not_idempotent", False)),
        "DEPRECATED": bool(getattr(schema, "is_deprecated", False)),
        "EXPERIMENTAL": bool(getattr(schema, "is_experimental", False)),
        "API_NODE": bool(getattr(schema, "is_api_node", False)),
        "RELATIVE_PYTHON_MODULE": getattr(cls, "RELATIVE_PYTHON_MODULE", None) or cls.__module__,
    }
    del raw_inputs  # INPUT_TYPES re-reads the schema, so combo lists stay current
    fingerprint = _own(cls, "fingerprint_inputs")
    if fingerprint is not None:
        attrs["IS_CHANGED"] = classmethod(
            _with_signature(lambda c, **kw: fingerprint(**split(kw)[0]), fingerprint))
    validate = _own(cls, "validate_inputs")
    if validate is not None:
        attrs["VALIDATE_INPUTS"] = classmethod(
            _with_signature(lambda c, **kw: validate(**kw), validate))
    lazy = _own(cls, "check_lazy_status")
    if lazy is not None:
        if inspect.iscoroutinefunction(lazy):
            async def check_lazy_async(self: Any, **kw: Any) -> Any:
                return await lazy(**split(kw)[0])
            attrs["check_lazy_status"] = check_lazy_async
        else:
            attrs["check_lazy_status"] = lambda self, **kw: lazy(**split(kw)[0])
    return type(str(getattr(schema, "node_id", cls.__name__)), (), attrs)
