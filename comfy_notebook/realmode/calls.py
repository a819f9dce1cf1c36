"""Real mode: every node call runs at once through the session's executor and cache.

``node_function("KSampler")`` returns a callable.  Calling it binds the arguments in
``INPUT_TYPES`` order (required, then optional), fills defaults, maps two-value combos from
``bool`` and ``Enum`` members to their values, records the call as a graph node, and runs it:

- **hit**: the node's cache key is computed from its class, its constants and the keys of the
  upstream handles (the same key the engine computes for this node inside the full graph, so
  running the exported API JSON hits the same entries); a cached result comes back without
  touching the executor;
- **miss**: the call's ancestry (recorded behind every handle) goes to the executor as one small
  graph whose target is the new node.  Upstream results are already cached, so only the new node
  runs, and an output node receives the ancestry as its hidden ``PROMPT``.

Inside ``with Workflow() as wf:`` calls only record (virtual mode).  The node classes themselves
are never touched (naked mode: ``KSampler().sample(...)`` stays plain Python).
"""

from __future__ import annotations

import enum
import inspect
from typing import Any

from comfy_notebook.errors import (
    ExecutionInterrupted,
    NodeExecutionError,
    ValidationError,
)
from comfy_notebook.realmode.binding import Plan, bind
from comfy_notebook.realmode.failures import execution_error, validation_error
from comfy_notebook.realmode.fingerprint import is_raw_value, versions
from comfy_notebook.realmode.recording import (
    NO_RAW,
    RAW_VALUE_NODE,
    WORKFLOW,
    NodeOutput,
    RealModeValue,
    RecordedNode,
    build_graph,
    collect,
    publish_raw,
    raw_node,
    unpublish_raw,
)
from comfy_notebook.realmode.remote import is_remote, remote_execute
from comfy_notebook.realmode.state import State, state

__all__ = ["Handle", "NodeFunction", "call", "node_function"]



class Handle(NodeOutput):
    """A real-mode result: ``.value`` plus provenance (``.node``, ``.slot``, ``.signature``).

    Accepted wherever a value is; displays inline in notebooks (images as PNG, latents as a
    preview, models as a one-line summary).
    """

    __slots__ = ("_outputs", "_ui", "_versions", "files", "value")

    def __init__(self, node: RecordedNode, slot: int, value: Any, outputs: Any, ui: Any,
                 files: tuple[Any, ...] = ()) -> None:
        super().__init__(node, slot)
        self.value = value
        self._outputs = outputs  # the cache entry's per-slot lists, to restore an evicted entry
        self._ui = ui
        self._versions = versions(outputs)
        self.files = files  # for an output node's ui handle: the image files it wrote / showed

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        from comfy_notebook.realmode.display import mimebundle

        return mimebundle(self)

    def _repr_png_(self) -> bytes | None:
        from comfy_notebook.realmode.display import png_bytes

        return png_bytes(self)

    def __repr__(self) -> str:
        from comfy_notebook.realmode.display import summary

        return summary(self)


def _current_session(session: Any) -> Any:
    if session is not None:
        return session
    from comfy_notebook._session import session as current

    return current()


def _value_of_slot(spec: Any, outputs: Any, slot: int) -> Any:
    """The value of one output slot from the cache entry's per-slot lists."""
    values = outputs[slot]
    if spec is not None and spec.output_is_list[slot]:
        return values
    return values[0] if len(values) == 1 else values


def _normalise(value: Any, st: State | None) -> Any:
    """Enum -> value; mutated handle -> raw value node; tensors -> raw value node."""
    if isinstance(value, NodeOutput):
        if isinstance(value, Handle) and value._versions is not None and versions(value._outputs) != value._versions:
            return raw_node(value.value)  # changed in place by user code: key by content
        return value.node.refs[value.slot]
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if is_raw_value(value):
        return raw_node(value)
    return value


def call(class_type: str, args: tuple[Any, ...], kwargs: dict[str, Any], session: Any = None) -> Any:
    """Call node ``class_type`` in real mode (or record it inside a :class:`Workflow`).

    Returns
    -------
    Handle | tuple[Handle, ...] | NodeOutput | ...
        One handle per output (a single one unwrapped); for a node without outputs, a handle
        of its ``ui`` result (``.value`` is the ui dict).
    """
    session = _current_session(session)
    st = state(session)
    plan = st.plan(class_type)
    spec = plan.spec
    bound = bind(plan, args, kwargs)
    inputs: dict[str, Any] = {}
    for name, value in bound.items():
        if name in plan.bool_maps and isinstance(value, bool):
            value = plan.bool_maps[name][0 if value else 1]
        inputs[name] = _normalise(value, st)
    node = RecordedNode(spec, class_type, inputs)
    wf = WORKFLOW.get()
    if wf is not None:
        wf.nodes.append(node)
        return node.refs[0] if len(node.refs) == 1 else node.refs
    st.calls += 1
    outputs, ui = _run(session, st, plan, node)
    return _handles(session, st, node, outputs, ui)


def _ui_files(session: Any, ui: Any) -> tuple[Any, ...]:
    """The image files an output node's ``ui`` names (``{"images": [{filename, subfolder, type}]}``)."""
    images = ui.get("images") if isinstance(ui, dict) else None
    if not images:
        return ()
    folders = session.services.folders
    roots = {"output": folders.output_dir, "temp": folders.temp_dir, "input": folders.input_dir}
    files = []
    for item in images:
        if isinstance(item, dict) and item.get("filename") and item.get("type", "output") in roots:
            files.append(roots[item.get("type", "output")] / (item.get("subfolder") or "") / item["filename"])
    return tuple(files)


def _handles(session: Any, st: State, node: RecordedNode, outputs: Any, ui: Any) -> Any:
    """Wrap a node's outputs into handles and note them for the current cell."""
    node.ui = ui
    spec = node.spec
    if not spec.return_types:
        handles = [Handle(node, 0, ui, outputs, ui, files=_ui_files(session, ui))]
    else:
        handles = [Handle(node, i, _value_of_slot(spec, outputs, i), outputs, ui) for i in range(len(spec.return_types))]
    st.note(node.signature, handles)  # type: ignore[arg-type]
    return handles[0] if len(handles) == 1 else tuple(handles)


def _fingerprint(session: Any, plan: Plan, constants: dict[str, Any]) -> Any:
    """The class's cheap IS_CHANGED over the constant inputs (links are None), as the engine
    calls it (a failure: NaN, an uncacheable key)."""
    from comfy_notebook.engine.context import services_context

    spec = plan.spec
    kwargs = {name: constants.get(name) for name in spec.inputs}
    try:
        with services_context(session.services):
            return spec.cls.IS_CHANGED(**kwargs)
    except Exception:
        return float("nan")


def _fast_key(plan: Plan, node: RecordedNode, session: Any = None) -> str | None:
    """The engine's cache key for ``node``, composed from upstream keys (None: ask the engine)."""
    from comfy_notebook.engine.cache import node_signature

    constants: dict[str, Any] = {}
    links: dict[str, tuple[str, int]] = {}
    for name, value in node.inputs.items():
        if isinstance(value, NodeOutput):
            up = value.node
            if up.signature is None:
                if up.raw is NO_RAW:
                    return None
                up.signature = node_signature(RAW_VALUE_NODE, None, None, up.inputs, {})
            links[name] = (up.signature, value.slot)
        elif name in plan.coerce:
            try:
                constants[name] = plan.coerce[name](value)
            except (TypeError, ValueError):
                return None  # the engine reports it as invalid_input_type
        else:
            constants[name] = value
    fingerprint = _fingerprint(session, plan, constants) if plan.fingerprint else None
    return node_signature(node.class_type, fingerprint, None, constants, links)


def _run(session: Any, st: State, plan: Plan, node: RecordedNode) -> tuple[Any, Any]:
    """Cache lookup, else one executor run of the call's ancestry."""
    cache = session.cache
    key = None
    if plan.fast and node.class_type not in st.slow_keys:
        key = _fast_key(plan, node, session)
        if key is not None:
            entry = cache.get(key)
            if entry is not None:
                now = versions(entry.outputs)
                seen = st.snapshots.setdefault(key, now)  # first sight: take it as stored
                if seen == now:
                    node.signature = key
                    return entry.outputs, entry.ui
                cache.release(key)  # changed in place since it was stored: recompute
    return _execute(session, st, node, key)


def _execute(session: Any, st: State, node: RecordedNode, fast_key: str | None) -> tuple[Any, Any]:
    """Run the ancestry of ``node`` with ``node`` as the target; returns (outputs, ui)."""
    order = collect([node])
    graph, ids = build_graph(order)
    if is_remote(session):  # a ComfyUI server: runs there, cached here (realmode/remote.py)
        return remote_execute(session, node, graph, ids[id(node)], fast_key)
    if any(n.raw is not NO_RAW for n in order) and RAW_VALUE_NODE not in session.registry:
        session.register({RAW_VALUE_NODE: RealModeValue})
    for value in node.inputs.values():  # restore evicted entries that live handles still hold
        if isinstance(value, NodeOutput) and value.node.signature is not None:
            _restore(session.cache, st, value.node)
    target = ids[id(node)]
    raws = publish_raw(order)
    try:
        result = session.run(graph, targets=[target])
    except ValidationError as exc:
        raise validation_error(node.class_type, exc, session) from exc
    except NodeExecutionError as exc:
        culprit = _node_by_id(order, ids, exc.node_id)
        raise execution_error(exc, culprit.class_type if culprit else exc.node_type) from exc.original
    except ExecutionInterrupted as exc:
        culprit = _node_by_id(order, ids, exc.node_id)
        raise ExecutionInterrupted(node_id=culprit.class_type if culprit else exc.node_type,
                                   step=exc.step, total=exc.total) from None
    finally:
        unpublish_raw(raws)
    st.executed += len(result.executed)
    by_id = {ids[id(n)]: n for n in order}
    for node_id, sig in result.signatures.items():
        n = by_id.get(node_id)
        if n is not None and n.signature is None:
            n.signature = sig
        st.used_now.add(sig)
        if st.cell is not None:
            cache_tag = "cell:" + st.cell
            session.cache.tag(sig, cache_tag)
    from comfy_notebook.engine.cache import is_cacheable

    key = result.signatures[target]
    if fast_key is not None and fast_key != key and is_cacheable(key):
        st.slow_keys.add(node.class_type)  # the engine keys this class differently: ask it
    node.signature = key
    entry = session.cache.peek(key)
    if entry is not None:
        st.snapshots[key] = versions(entry.outputs)
        return entry.outputs, entry.ui
    values = result.outputs.get(target, ())
    return tuple([v] for v in values), result.ui.get(target)


def _restore(cache: Any, st: State, node: RecordedNode) -> None:
    """Put a held handle's outputs back in the cache if its entry was released."""
    sig = node.signature
    if sig is None or sig in cache:
        return
    for ref in st.live.get(sig, ()):
        h = ref()
        if h is not None:
            cache.put(sig, h._outputs, h._ui)
            return


def _node_by_id(order: list[RecordedNode], ids: dict[int, str], node_id: Any) -> RecordedNode | None:
    for n in order:
        if ids[id(n)] == node_id:
            return n
    return None


class NodeFunction:
    """The real-mode callable of one node class (``CLIPTextEncode("a cat", clip)``)."""

    __slots__ = ("__weakref__", "_session", "name")

    def __init__(self, name: str, session: Any = None) -> None:
        self.name = name
        self._session = session

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return call(self.name, args, kwargs, self._session)

    @property
    def __name__(self) -> str:  # type: ignore[override]
        return self.name

    @property
    def spec(self) -> Any:
        """The node's parsed :class:`~comfy_notebook.engine.NodeSpec`."""
        return _current_session(self._session).registry[self.name]

    @property
    def cls(self) -> type:
        """The node class itself (naked mode: ``KSampler.cls().sample(...)``)."""
        return self.spec.cls  # type: ignore[no-any-return]

    @property
    def __signature__(self) -> inspect.Signature:
        """Inputs in call order; a default is shown only where every later input has one."""
        plan = state(_current_session(self._session)).plan(self.name)
        params: list[inspect.Parameter] = []
        trailing = True
        for name in reversed(plan.names):
            default = plan.defaults.get(name, inspect.Parameter.empty)
            if name not in plan.required and default is inspect.Parameter.empty:
                default = None  # an optional input left out
            trailing = trailing and default is not inspect.Parameter.empty
            params.append(inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                            default=default if trailing else inspect.Parameter.empty))
        return inspect.Signature(params[::-1])

    @property
    def __doc__(self) -> str:  # type: ignore[override]
        spec = self.spec
        lines = [f"{spec.display_name} ({spec.category}): {spec.description}".rstrip(": "), "", "Inputs:"]
        for name, inp in spec.inputs.items():
            typ = f"one of {list(inp.type)[:10]}" if inp.is_combo else inp.type
            lines.append(f"  {name}: {typ} ({inp.category}{', default ' + repr(inp.options['default']) if 'default' in inp.options else ''})")
        lines.append(f"Returns: {', '.join(spec.return_types) or 'ui result'}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<node {self.name}>"


def node_function(name: str, session: Any = None) -> NodeFunction:
    """The real-mode callable of node ``name``.

    Parameters
    ----------
    name:
        A registered class_type (built-in or added with ``session.register``).
    session:
        Bind to this session; ``None`` uses the current session at call time.

    Raises
    ------
    KeyError
        When no node ``name`` is registered.
    """
    if name not in _current_session(session).registry:
        raise KeyError(name)
    return NodeFunction(name, session)
