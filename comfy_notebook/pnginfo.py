"""PNG metadata in ComfyUI's format, and conversion between API prompts and UI workflows.

A PNG saved by ``SaveImage`` carries a ``prompt`` text chunk (the API-format prompt that made
it, JSON) and a ``workflow`` chunk (UI format: nodes with positions, links, widget values) plus
one chunk per other ``extra_pnginfo`` key, as ComfyUI writes them.  Dragging such a PNG into
ComfyUI's web UI restores the graph; :func:`read_prompt` gives the prompt back to
``Session.run_prompt``.

Conversion rules (ComfyUI front end ``graphToPrompt``, summarised in comfyui-reference.md §4):
UI-only nodes (Reroute, PrimitiveNode, Note, MarkdownNote) and muted / bypassed nodes are not
part of the prompt; a link becomes ``[str(src), slot]``; other widget inputs take the next
``widgets_values`` entry in ``INPUT_TYPES`` order, with one extra entry after a seed (the
``control_after_generate`` value); list constants are ``{"__value__": [...]}``.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, Any, TypeGuard

from comfy_notebook.errors import ComfyNotebookError, GraphError

__all__ = [
    "UI_ONLY_NODES",
    "FilledDefault",
    "FilledDefaultsWarning",
    "MetadataError",
    "PngPrompt",
    "api_to_workflow",
    "missing_defaults",
    "png_text_chunks",
    "read_prompt",
    "read_workflow",
    "workflow_to_api",
]

log = logging.getLogger(__name__)

UI_ONLY_NODES = frozenset({"Reroute", "PrimitiveNode", "Note", "MarkdownNote"})
_WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
_SEED_NAMES = frozenset({"seed", "noise_seed"})
_MODE_MUTED, _MODE_BYPASS = 2, 4
# Where we keep what ComfyUI's UI format has no field for (ignored by ComfyUI itself).
_PROP_ID = "comfy_notebook_id"
_PROP_WIDGETS = "comfy_notebook_widgets"


class MetadataError(ComfyNotebookError):
    """A PNG has no (or unreadable) ComfyUI metadata, or a workflow cannot be converted."""


# ---------------------------------------------------------------------------------------------
# Reading PNGs
# ---------------------------------------------------------------------------------------------


def _text_chunk(path: str | os.PathLike[str] | IO[bytes], key: str) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            text = getattr(img, "text", None) or img.info
            raw = text.get(key) if isinstance(text, Mapping) else None
            keys = sorted(text) if isinstance(text, Mapping) else []
    except (UnidentifiedImageError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        # not an image, a damaged one, or text chunks past Pillow's limits (MAX_TEXT_MEMORY)
        raise MetadataError(
            f"{path!s} could not be read as a PNG ({type(exc).__name__}: {exc}). "
            "Fix: use the PNG ComfyUI or SaveImage wrote") from exc
    if raw is None:
        raise MetadataError(
            f"{path!s} has no {key!r} text chunk (chunks found: {keys}). Expected a PNG saved by "
            "ComfyUI or comfy_notebook's SaveImage with metadata. Fix: use the original PNG "
            "(web services often strip metadata)"
        )
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise MetadataError(f"the {key!r} chunk of {path!s} is not valid JSON: {exc}") from exc
    except RecursionError:
        raise MetadataError(
            f"the {key!r} chunk of {path!s} nests JSON too deeply to be a ComfyUI prompt or "
            "workflow. Fix: use the PNG ComfyUI or SaveImage wrote") from None


class FilledDefaultsWarning(UserWarning):
    """A PNG's prompt lacked inputs added to ComfyUI later; their defaults were filled in."""


@dataclass(frozen=True)
class FilledDefault:
    """One input an older prompt or workflow lacked, and the default it was given."""

    node_id: str
    class_type: str
    input: str
    value: Any

    def __str__(self) -> str:
        return f"node {self.node_id} ({self.class_type}).{self.input}={self.value!r}"


class PngPrompt(dict):  # type: ignore[type-arg]
    """The prompt read from a PNG (a plain API prompt dict) and how it was obtained.

    ``source`` is ``"prompt"`` (the ``prompt`` chunk as stored), ``"workflow"`` (the
    ``workflow`` chunk converted, because the prompt lacked inputs that have defaults) or
    ``"prompt+defaults"`` (no usable workflow: the defaults were filled into the prompt);
    ``filled_defaults`` lists what was filled.
    """

    source: str = "prompt"
    filled_defaults: tuple[FilledDefault, ...] = ()


def missing_defaults(api: Mapping[str, Any], registry: Any) -> list[FilledDefault]:
    """Required inputs with a default that ``api``'s nodes lack (older ComfyUI versions' prompts).

    Nodes whose class is not registered are skipped (validation reports them).
    """
    out = []
    for node_id, node in api.items():
        if not isinstance(node, Mapping):
            continue
        spec = _spec(registry, str(node.get("class_type")))
        if spec is None:
            continue
        inputs = node.get("inputs") or {}
        for inp in spec.inputs.values():
            if inp.category == "required" and inp.name not in inputs and "default" in inp.options:
                out.append(FilledDefault(str(node_id), str(node.get("class_type")), inp.name,
                                         inp.options["default"]))
    return out


def read_prompt(png_path: str | os.PathLike[str] | IO[bytes], registry: Any = None) -> PngPrompt:
    """The API-format prompt stored in a PNG's ``prompt`` chunk.

    Parameters
    ----------
    png_path:
        A path or binary file object of a PNG saved by ComfyUI or ``SaveImage``.
    registry:
        A session's registry (``comfy_notebook.read_prompt`` passes the current session's).
        With it, a prompt saved by an older ComfyUI that lacks inputs added since (e.g.
        ``VAEEncodeForInpaint.grow_mask_by``) is replaced by the conversion of the PNG's
        ``workflow`` chunk, where those inputs get their defaults, as ComfyUI's web UI does;
        a :class:`FilledDefaultsWarning` names each default filled.

    Returns
    -------
    PngPrompt
        ``{node_id: {"class_type", "inputs", "_meta"?}}``, ready for ``Session.run_prompt``;
        ``.source`` and ``.filled_defaults`` say whether defaults were filled.

    Raises
    ------
    MetadataError
        When there is no ``prompt`` chunk or it is not JSON.

    Examples
    --------
    >>> import comfy_notebook
    >>> api = comfy_notebook.read_prompt("output/ComfyUI_00001_.png")  # doctest: +SKIP
    >>> comfy_notebook.session().run_prompt(api)                        # doctest: +SKIP
    """
    prompt = _text_chunk(png_path, "prompt")
    if not isinstance(prompt, dict):
        raise MetadataError(f"the prompt chunk of {png_path!s} is {type(prompt).__name__}, not a dict")
    result = PngPrompt(prompt)
    if registry is None:
        return result
    missing = missing_defaults(prompt, registry)
    if not missing:
        return result
    filled: list[FilledDefault] = []
    try:
        if hasattr(png_path, "seek"):
            png_path.seek(0)
        result = PngPrompt(workflow_to_api(read_workflow(png_path), registry, filled=filled))
        result.source = "workflow"
    except (MetadataError, GraphError) as exc:  # no usable workflow: fill the prompt itself
        log.info("workflow chunk of %s not used: %s", png_path, exc)
        result = PngPrompt({k: dict(v) for k, v in prompt.items()})
        for item in missing:
            node = result[item.node_id] = dict(result[item.node_id])
            node["inputs"] = {**node.get("inputs", {}), item.input: _wrap(item.value)}
        filled, result.source = missing, "prompt+defaults"
    result.filled_defaults = tuple(filled)
    how = "converted its workflow chunk" if result.source == "workflow" else "filled them into the prompt"
    warnings.warn(
        f"{png_path!s}: the stored API prompt lacks inputs that newer ComfyUI versions require "
        f"({', '.join(str(m) for m in missing)}); {how}, with these defaults: "
        f"{', '.join(str(f) for f in filled) or 'none'}", FilledDefaultsWarning, stacklevel=2)
    return result


def read_workflow(png_path: str | os.PathLike[str] | IO[bytes]) -> dict[str, Any]:
    """The UI-format workflow stored in a PNG's ``workflow`` chunk (see :func:`read_prompt`)."""
    workflow = _text_chunk(png_path, "workflow")
    if not isinstance(workflow, dict):
        raise MetadataError(f"the workflow chunk of {png_path!s} is not a JSON object")
    return workflow


def png_text_chunks(
    prompt: Mapping[str, Any] | None,
    extra_pnginfo: Mapping[str, Any] | None,
    registry: Any = None,
) -> dict[str, str]:
    """The text chunks ``SaveImage`` writes: ``prompt``, then every ``extra_pnginfo`` key.

    When ``extra_pnginfo`` has no ``workflow`` (a prompt run from Python rather than from the
    web UI), one is generated from the prompt with :func:`api_to_workflow`.  A prompt holding
    values that are not JSON (tensors passed in from Python) is left out with a log message.
    """
    chunks: dict[str, str] = {}
    if prompt is not None:
        try:
            chunks["prompt"] = json.dumps(prompt)
        except (TypeError, ValueError) as exc:
            log.warning("prompt not stored in the PNG: it holds non-JSON values (%s)", exc)
    extra = dict(extra_pnginfo or {})
    if "workflow" not in extra and "prompt" in chunks and prompt is not None:
        try:
            extra = {"workflow": api_to_workflow(prompt, registry), **extra}
        except ComfyNotebookError as exc:  # pragma: no cover - defensive
            log.warning("workflow not stored in the PNG: %s", exc)
    for key, value in extra.items():
        try:
            chunks[str(key)] = json.dumps(value)
        except (TypeError, ValueError) as exc:
            log.warning("extra_pnginfo[%r] not stored in the PNG: %s", key, exc)
    return chunks


# ---------------------------------------------------------------------------------------------
# Shared helpers over a registry's NodeSpec (duck-typed: .inputs, .return_types, ...)
# ---------------------------------------------------------------------------------------------


def _spec(registry: Any, class_type: str) -> Any:
    if registry is None:
        return None
    getter = getattr(registry, "get", None)
    return getter(class_type) if getter is not None else None


def _is_link(value: Any) -> TypeGuard[list[Any] | tuple[Any, ...]]:
    return (
        isinstance(value, list | tuple)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def _is_widget(inp: Any) -> bool:
    """Whether an input is shown as a widget (primitive or combo, not ``forceInput``)."""
    if inp.options.get("forceInput"):
        return False
    return bool(isinstance(inp.type, tuple) or inp.type in _WIDGET_TYPES)


def _has_control(inp: Any) -> bool:
    """Whether the front end adds a ``control_after_generate`` widget after this one."""
    flag = inp.options.get("control_after_generate")
    if flag is not None:
        return bool(flag)
    return inp.type == "INT" and inp.name in _SEED_NAMES


def _default(inp: Any) -> Any:
    if "default" in inp.options:
        return inp.options["default"]
    if isinstance(inp.type, tuple):
        return inp.type[0] if inp.type else None
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(inp.type)


def _socket_type(inp: Any) -> str:
    return "COMBO" if isinstance(inp.type, tuple) else str(inp.type)


# ---------------------------------------------------------------------------------------------
# API -> UI
# ---------------------------------------------------------------------------------------------


def _depths(api: Mapping[str, Any]) -> tuple[dict[str, int], list[str]]:
    """Longest-path depth of every node and a topological order (iterative Kahn)."""
    deps: dict[str, set[str]] = {}
    users: dict[str, list[str]] = {n: [] for n in api}
    for nid, node in api.items():
        srcs = {v[0] for v in (node.get("inputs") or {}).values() if _is_link(v) and v[0] in api}
        deps[nid] = srcs
        for s in srcs:
            users[s].append(nid)
    remaining = {n: len(d) for n, d in deps.items()}
    ready = [n for n in api if remaining[n] == 0]
    depth = dict.fromkeys(api, 0)
    order: list[str] = []
    while ready:
        nid = ready.pop(0)
        order.append(nid)
        for u in users[nid]:
            depth[u] = max(depth[u], depth[nid] + 1)
            remaining[u] -= 1
            if remaining[u] == 0:
                ready.append(u)
    order += [n for n in api if n not in set(order)]  # a cycle: keep them, in prompt order
    return depth, order


def api_to_workflow(api: Mapping[str, Any], registry: Any = None) -> dict[str, Any]:
    """Build a ComfyUI UI-format workflow (version 0.4) from an API-format prompt.

    Nodes are laid out in columns by topological depth; links carry the output types; widget
    values follow ``INPUT_TYPES`` order with ``"fixed"`` after seeds, so ComfyUI's web UI
    shows the graph and :func:`workflow_to_api` gives the prompt back.

    Parameters
    ----------
    api:
        ``{node_id: {"class_type", "inputs", "_meta"?}}``.
    registry:
        The session's registry (for input order, widget kinds and output types).  Classes it
        does not know are kept with their inputs in prompt order.

    Returns
    -------
    dict
        ``{"last_node_id", "last_link_id", "nodes", "links", "groups", "config", "extra",
        "version"}``.  Widget inputs missing from the prompt get their default value;
        non-numeric node ids are renumbered (the original is kept in the node's properties).
    """
    ids = list(api)
    numeric = {i: int(i) for i in ids if isinstance(i, str) and i.isdigit()}
    next_id = max(numeric.values(), default=0) + 1
    ui_id: dict[str, int] = {}
    for i in ids:
        if i in numeric and numeric[i] not in ui_id.values():
            ui_id[i] = numeric[i]
        else:
            ui_id[i], next_id = next_id, next_id + 1
    depth, order = _depths(api)
    rank = {nid: k for k, nid in enumerate(order)}

    nodes: list[dict[str, Any]] = []
    links: list[list[Any]] = []
    out_links: dict[tuple[str, int], list[int]] = {}
    column_y: dict[int, float] = {}
    for nid in ids:
        node = api[nid]
        class_type = str(node.get("class_type"))
        values = dict(node.get("inputs") or {})
        spec = _spec(registry, class_type)
        sockets: list[dict[str, Any]] = []
        widgets: list[Any] = []
        props: dict[str, Any] = {"Node name for S&R": class_type}
        if spec is not None:
            upload = False
            for inp in spec.inputs.values():
                value = values.get(inp.name)
                if _is_widget(inp):
                    if _is_link(value):
                        sockets.append({"name": inp.name, "type": _socket_type(inp), "link": None,
                                        "widget": {"name": inp.name}})
                        widgets.append(_default(inp))
                    else:
                        if value is None and inp.name not in values:
                            value = _default(inp)
                        if isinstance(value, dict) and set(value) == {"__value__"}:
                            value = value["__value__"]
                        widgets.append(value)
                    if _has_control(inp):
                        widgets.append("fixed")
                    upload = upload or bool(inp.options.get("image_upload"))
                else:
                    sockets.append({"name": inp.name, "type": _socket_type(inp), "link": None})
            if upload:
                widgets.append("image")
            outputs = [
                {"name": n, "type": t, "links": None, "slot_index": k}
                for k, (n, t) in enumerate(zip(spec.return_names, spec.return_types, strict=False))
            ]
        else:
            names = []
            for name, value in values.items():
                if _is_link(value):
                    sockets.append({"name": name, "type": "*", "link": None})
                else:
                    names.append(name)
                    widgets.append(value["__value__"] if isinstance(value, dict)
                                   and set(value) == {"__value__"} else value)
            props[_PROP_WIDGETS] = names
            used = [v[1] for n in api.values() for v in (n.get("inputs") or {}).values()
                    if _is_link(v) and v[0] == nid]
            outputs = [{"name": "*", "type": "*", "links": None, "slot_index": k}
                       for k in range(max(used, default=-1) + 1)]
        if str(ui_id[nid]) != nid:
            props[_PROP_ID] = nid
        height = 46 + 24 * (len(sockets) + len(widgets)) + 20 * len(outputs)
        x = 50 + 360 * depth[nid]
        y = column_y.get(depth[nid], 50.0)
        column_y[depth[nid]] = y + height + 60
        ui: dict[str, Any] = {
            "id": ui_id[nid], "type": class_type, "pos": [x, y], "size": [315, height],
            "flags": {}, "order": rank[nid], "mode": 0, "inputs": sockets, "outputs": outputs,
            "properties": props, "widgets_values": widgets,
        }
        title = (node.get("_meta") or {}).get("title")
        if title is not None:
            ui["title"] = title
        nodes.append(ui)

    by_id = {ui["id"]: ui for ui in nodes}
    for nid in ids:
        dst = by_id[ui_id[nid]]
        for k, sock in enumerate(dst["inputs"]):
            value = (api[nid].get("inputs") or {}).get(sock["name"])
            if not _is_link(value) or value[0] not in ui_id:
                continue
            src = by_id[ui_id[value[0]]]
            slot = value[1]
            while len(src["outputs"]) <= slot:  # a slot the spec does not declare
                src["outputs"].append({"name": "*", "type": "*", "links": None,
                                       "slot_index": len(src["outputs"])})
            link_type = src["outputs"][slot]["type"]
            link_id = len(links) + 1
            links.append([link_id, src["id"], slot, dst["id"], k, link_type])
            sock["link"] = link_id
            out_links.setdefault((value[0], slot), []).append(link_id)
            src["outputs"][slot]["links"] = out_links[(value[0], slot)]
    return {
        "last_node_id": max(ui_id.values(), default=0),
        "last_link_id": len(links),
        "nodes": nodes,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {"ds": {"scale": 1.0, "offset": [0, 0]}},
        "version": 0.4,
    }


# ---------------------------------------------------------------------------------------------
# UI -> API
# ---------------------------------------------------------------------------------------------


def _link_table(workflow: Mapping[str, Any]) -> dict[int, tuple[int, int, str]]:
    """link id -> (origin node id, origin slot, type), from list or object link records."""
    table: dict[int, tuple[int, int, str]] = {}
    for link in workflow.get("links") or []:
        if isinstance(link, Mapping):
            table[int(link["id"])] = (link["origin_id"], int(link["origin_slot"]), link.get("type", "*"))
        else:
            table[int(link[0])] = (link[1], int(link[2]), link[5] if len(link) > 5 else "*")
    return table


def _resolve(
    link_id: int, links: dict[int, tuple[int, int, str]], nodes: dict[Any, Mapping[str, Any]]
) -> tuple[str, Any] | None:
    """Follow a link through Reroutes and bypassed nodes to a real output or a primitive value."""
    seen: set[int] = set()
    current: int | None = link_id
    while current is not None and current not in seen:
        seen.add(current)
        if current not in links:
            return None
        origin, slot, typ = links[current]
        src = nodes.get(origin)
        if src is None:
            return None
        kind, mode = src.get("type"), src.get("mode", 0)
        if kind == "PrimitiveNode":
            values = src.get("widgets_values") or [None]
            return ("value", values[0])
        if kind == "Reroute" or mode == _MODE_BYPASS:
            current = None
            for inp in src.get("inputs") or []:
                if inp.get("link") is not None and (
                    kind == "Reroute" or inp.get("type") in (typ, "*") or typ == "*"
                ):
                    current = int(inp["link"])
                    break
            continue
        if kind in UI_ONLY_NODES or mode == _MODE_MUTED:
            return None
        api_id = (src.get("properties") or {}).get(_PROP_ID, str(origin))
        return ("link", [api_id, slot])
    return None


def _wrap(value: Any) -> Any:
    return {"__value__": value} if isinstance(value, list) else value


def workflow_to_api(workflow: Mapping[str, Any], registry: Any = None, *,
                    filled: list[FilledDefault] | None = None) -> dict[str, Any]:
    """Convert a ComfyUI UI-format workflow into an API-format prompt.

    Parameters
    ----------
    workflow:
        A UI workflow (``nodes``, ``links``, ``widgets_values``), e.g. from :func:`read_workflow`.
    registry:
        The session's registry: it gives each node's input order and widget kinds.
    filled:
        When given, every widget input the workflow has no value for (a workflow saved by an
        older version) is appended as a :class:`FilledDefault`.

    Returns
    -------
    dict
        ``{node_id: {"inputs", "class_type", "_meta": {"title"}}}``.

    Raises
    ------
    MetadataError
        When a node's class is not registered (its widget values cannot be named), or the
        workflow is malformed (a field of the wrong shape or type, named in the message).
    """
    try:
        return _workflow_to_api(workflow, registry, filled)
    except (MetadataError, GraphError):
        raise
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, OverflowError,
            RecursionError) as exc:  # untrusted input (a PNG from anywhere): one clear error
        raise MetadataError(
            f"the UI workflow is malformed and cannot be converted to a prompt: "
            f"{type(exc).__name__}: {exc}. Expected ComfyUI's workflow format (nodes with id, "
            "type, inputs, widgets_values; links as [id, from node, from slot, to node, to slot, "
            "type]). Fix: export the workflow again from ComfyUI, or use the PNG's prompt "
            "chunk") from exc


def _workflow_to_api(workflow: Mapping[str, Any], registry: Any,
                     filled: list[FilledDefault] | None) -> dict[str, Any]:
    if not isinstance(workflow, Mapping):
        raise MetadataError(f"a UI workflow is a JSON object; received {type(workflow).__name__}")
    nodes = {n["id"]: n for n in workflow.get("nodes") or []}
    links = _link_table(workflow)
    api: dict[str, Any] = {}
    ordered = sorted(nodes.values(), key=lambda n: (n.get("order", 0), str(n["id"])))
    for node in ordered:
        class_type = node.get("type")
        if class_type in UI_ONLY_NODES or node.get("mode", 0) in (_MODE_MUTED, _MODE_BYPASS):
            continue
        props = node.get("properties") or {}
        spec = _spec(registry, class_type)
        linked: dict[str, Any] = {}
        for sock in node.get("inputs") or []:
            if sock.get("link") is None:
                continue
            found = _resolve(int(sock["link"]), links, nodes)
            if found is not None:
                linked[sock["name"]] = found
        raw_values = node.get("widgets_values")
        values = list(raw_values) if isinstance(raw_values, list) else []
        inputs: dict[str, Any] = {}
        if spec is not None:
            k = 0
            for inp in spec.inputs.values():
                if _is_widget(inp):
                    if isinstance(raw_values, Mapping):
                        absent = inp.name not in raw_values
                        value = raw_values.get(inp.name, _default(inp))
                    else:
                        absent = k >= len(values)
                        value = _default(inp) if absent else values[k]
                    k += 2 if _has_control(inp) else 1
                    if absent and filled is not None and inp.name not in linked:
                        filled.append(FilledDefault(str(props.get(_PROP_ID, node["id"])),
                                                    str(class_type), inp.name, value))
                    if inp.name not in linked:
                        inputs[inp.name] = _wrap(value)
                if inp.name in linked:
                    kind, found = linked[inp.name]
                    inputs[inp.name] = found if kind == "link" else _wrap(found)
            title = node.get("title") or getattr(spec, "display_name", class_type)
        elif _PROP_WIDGETS in props:
            inputs.update(zip(props[_PROP_WIDGETS], (_wrap(v) for v in values), strict=False))
            title = node.get("title") or class_type
        else:
            raise MetadataError(
                f"workflow node {node['id']} has class {class_type!r}, which is not registered; "
                "its widget values cannot be matched to inputs. Fix: register the node pack "
                "that provides it (session.register(...)) before converting"
            )
        for name, (kind, found) in linked.items():
            if name not in inputs:
                inputs[name] = found if kind == "link" else _wrap(found)
        api_id = props.get(_PROP_ID, str(node["id"]))
        api[api_id] = {"inputs": inputs, "class_type": class_type, "_meta": {"title": title}}
    if not api and nodes:
        raise GraphError("the workflow has no executable nodes (all are UI-only, muted or bypassed)")
    return api
