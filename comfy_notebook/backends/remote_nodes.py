"""Node classes made from a server's ``/object_info``: the server's nodes, known locally.

Registered in a session whose backend is a server, they make validation, combo lists (model
files), enums and stubs reflect what the server has.  Their function never runs here: calling
one raises a ``BackendError`` that says the node runs on the server.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from comfy_notebook.errors import BackendError

__all__ = ["node_classes"]

log = logging.getLogger(__name__)


def _entry(value: Any) -> tuple[Any, ...]:
    """An /object_info input entry (JSON lists) as an INPUT_TYPES tuple."""
    if isinstance(value, list) and value:
        head = value[0]
        head = tuple(head) if isinstance(head, list) else head  # a combo's option list
        return (head, *value[1:]) if len(value) > 1 else (head,)
    return (value,)


def _make(name: str, info: Mapping[str, Any], where: str) -> type:
    inputs = info.get("input") or {}
    types = {section: {k: _entry(v) for k, v in (inputs.get(section) or {}).items()}
             for section in ("required", "optional")}
    hidden = dict(inputs.get("hidden") or {})
    outputs = tuple(info.get("output") or ())

    def INPUT_TYPES(cls: type) -> dict[str, Any]:
        return {**types, "hidden": hidden}

    def run(self: Any, **kwargs: Any) -> Any:
        raise BackendError(f"{name} is a node of the ComfyUI server at {where}; it runs there, not in "
                           "this process.\nFix: run the prompt with session.run_prompt / submit "
                           "(they go to the server).", backend=where)

    attrs = {
        "INPUT_TYPES": classmethod(INPUT_TYPES),
        "RETURN_TYPES": outputs,
        "RETURN_NAMES": tuple(info.get("output_name") or outputs),
        "OUTPUT_IS_LIST": tuple(bool(x) for x in (info.get("output_is_list") or [False] * len(outputs))),
        "OUTPUT_NODE": bool(info.get("output_node", False)),
        "CATEGORY": str(info.get("category", "")),
        "DESCRIPTION": str(info.get("description", "")),
        "FUNCTION": "run",
        "run": run,
        "REMOTE": where,
    }
    return type(name, (), attrs)


def node_classes(object_info: Mapping[str, Any], where: str) -> dict[str, type]:
    """``{class_type: class}`` for every node in ``object_info``."""
    out = {}
    for name, info in object_info.items():
        try:
            out[name] = _make(name, info, where)
        except Exception:  # one odd definition must not hide the others
            log.warning("skipped node %s from %s", name, where, exc_info=True)
    return out
