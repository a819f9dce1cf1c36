"""How a failed real-mode call is told: one short :class:`NodeCallError` per failure.

Each message names the node, the input, what was expected and what arrived, and carries one
"Fix:".  Nothing here mentions the ``%comfy`` magics: a plain script gets the same text, and the
IPython extension adds its own pointer to ``%comfy traceback``.
"""

from __future__ import annotations

import difflib
from typing import Any

from comfy_notebook.errors import NodeCallError, NodeError, NodeExecutionError, ValidationError

__all__ = ["CONVERTERS", "execution_error", "validation_error"]

# (what arrived, what the input takes) -> the built-in node that turns one into the other.
CONVERTERS: dict[tuple[str, str], str] = {
    ("IMAGE", "LATENT"): "VAEEncode",
    ("LATENT", "IMAGE"): "VAEDecode",
    ("IMAGE", "MASK"): "ImageToMask",
    ("MASK", "IMAGE"): "MaskToImage",
}


def _has_fix(text: str) -> bool:
    return "Fix:" in text or "fix:" in text


def execution_error(exc: NodeExecutionError, node_type: str) -> NodeCallError:
    """The node function raised: its own message, and one fix."""
    original = exc.original
    if isinstance(original, NodeError):  # already says input / expected / received / fix
        err = NodeCallError(original.message, node_type=node_type, input_name=original.input_name,
                            expected=original.expected, received=original.received,
                            fix=original.fix or "check this input")
    else:
        text = f"failed: {type(original).__name__}: {original}"
        fix = None if _has_fix(str(original)) else "check the node's inputs; the traceback shows where it failed"
        err = NodeCallError(text, node_type=node_type, fix=fix)
    err.traceback_text = exc.traceback_text
    images = getattr(original, "images", None)  # an OutputWriteError keeps what it could not save
    if images is not None:
        err.images = images
    return err


def _expected(config: Any) -> str | None:
    if not config:
        return None
    typ = config[0] if isinstance(config, list | tuple) else config
    if isinstance(typ, list | tuple):
        return None  # a combo: its choices are named once, in the fix
    return str(typ)


def _not_in_list(err: dict[str, Any], class_type: str, session: Any) -> NodeCallError:
    extra = err.get("extra_info", {}) or {}
    name = extra.get("input_name")
    value = extra.get("received_value")
    config = extra.get("input_config")
    choices = list(config[0]) if config and isinstance(config[0], list | tuple) else []
    if not config and session is not None:  # a long list is left out of the error: ask the spec
        spec = session.registry.get(class_type)
        inp = spec.inputs.get(str(name)) if spec is not None else None
        if inp is not None and inp.is_combo:
            choices = list(inp.type)
    from comfy_notebook.folders import FILE_INPUTS

    kind = FILE_INPUTS.get(str(name))
    if kind is not None and session is not None:
        folders = session.services.folders
        try:
            listed = folders.list(kind)
        except Exception:
            listed = None
        if listed is not None and sorted(map(str, choices)) == listed:
            message, fix = folders.missing(kind, str(value))
            return NodeCallError(message, node_type=class_type, input_name=name, fix=fix)
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=3, cutoff=0.5)
    if close:
        fix = f"did you mean {', '.join(repr(c) for c in close)}?"
    elif choices:
        shown = ", ".join(repr(c) for c in choices[:12]) + (", ..." if len(choices) > 12 else "")
        fix = f"use one of {len(choices)} choices: {shown}"
    else:
        fix = "this input has no choices yet"
    return NodeCallError(f"{value!r} is not one of the choices", node_type=class_type, input_name=name, fix=fix)


def _type_mismatch(err: dict[str, Any], class_type: str) -> NodeCallError:
    extra = err.get("extra_info", {}) or {}
    received = str(extra.get("received_type"))
    expected = _expected(extra.get("input_config")) or "?"
    converter = CONVERTERS.get((received, expected))
    fix = (f"insert {converter} between them: {converter}(...) turns {received} into {expected}"
           if converter else f"link an output of type {expected}")
    return NodeCallError(f"an {received} output is linked where {expected} goes", node_type=class_type,
                         input_name=extra.get("input_name"), expected=expected, received=received, fix=fix)


def validation_error(class_type: str, exc: ValidationError, session: Any = None) -> NodeCallError:
    """One short message for the first validation error: node, input, expected, received, fix."""
    for entry in exc.node_errors.values():
        for err in entry.get("errors", []):
            node_type = entry.get("class_type", class_type)
            kind = err.get("type")
            if kind == "value_not_in_list":
                out = _not_in_list(err, node_type, session)
            elif kind == "return_type_mismatch":
                out = _type_mismatch(err, node_type)
            elif kind == "custom_validation_failed":  # the node's VALIDATE_INPUTS said why
                details = str(err.get("details") or "")
                text = details.split(" - ", 1)[1] if " - " in details else "the node's VALIDATE_INPUTS refused the inputs"
                out = NodeCallError(text, node_type=node_type,
                                    fix=None if _has_fix(text) else "change the inputs the message names")
            else:
                extra = err.get("extra_info", {}) or {}
                message = err.get("message", "invalid input")
                details = err.get("details")
                if details:
                    message += f" ({details})"
                out = NodeCallError(message, node_type=node_type, input_name=extra.get("input_name"),
                                    expected=_expected(extra.get("input_config")),
                                    received=extra.get("received_value"),
                                    fix=None if _has_fix(message) else "change this input to a valid value")
            out.traceback_text = str(exc)
            return out
    out = NodeCallError(str(exc), node_type=class_type)
    out.traceback_text = str(exc)
    return out
