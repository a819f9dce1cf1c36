"""The Python API behind the ``%comfy`` magics: each magic is one call here, and a script can
make the same call.

>>> from comfy_notebook.realmode import control
>>> print(control.status())                          # doctest: +SKIP
>>> control.set_cache_budget("8GB", "2GB")           # doctest: +SKIP
>>> control.run_file("wf.json", ["KSampler.seed=7"])  # doctest: +SKIP

Every function acts on ``session`` (default: the current session) and raises a
:class:`~comfy_notebook.errors.ComfyNotebookError` subclass with a one-line message on bad input.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from comfy_notebook._units import human_bytes, parse_bytes
from comfy_notebook.engine.policies import MemoryBudget
from comfy_notebook.errors import ComfyNotebookError
from comfy_notebook.realmode.state import state

__all__ = [
    "CommandError",
    "apply_overrides",
    "attach_comfyui",
    "cache_summary",
    "clear_cache",
    "export_last",
    "load_custom_nodes",
    "manager",
    "models_dir_summary",
    "run_file",
    "run_workflow",
    "set_cache_budget",
    "set_models_dir",
    "status",
    "write_stubs",
]


class CommandError(ComfyNotebookError):
    """A command of the Python API (and so of its magic) got input it cannot use."""


def _session(session: Any) -> Any:
    if session is not None:
        return session
    from comfy_notebook._session import session as current

    return current()


def models_dir_summary(session: Any = None) -> str:
    """Where the session looks for models, and whether that was configured."""
    folders = _session(session).services.folders
    root = folders.models_dir
    if folders.configured:
        return f"{root}" + ("" if root.is_dir() else " (does not exist)")
    return (f"none configured (looking in {root}"
            + ("" if root.is_dir() else ", which does not exist")
            + "; set one with %comfy models-dir PATH, session.set_models_dir(PATH) or $COMFY_NOTEBOOK_MODELS)")


def status(session: Any = None) -> str:
    """Session, cache, real-mode and model summary (what ``%comfy status`` prints)."""
    s = _session(session)
    st = state(s)
    stats = s.cache.stats()
    manager = s.services.models_loaded
    folders = s.services.folders
    lines = [
        f"nodes registered: {len(s.registry)}",
        f"models folder: {models_dir_summary(s)}",
        f"input folder: {folders.input_dir}",
        f"output folder: {folders.output_dir}",
        f"cache: {stats.entries} entries, {stats.bytes / 2**20:.1f} MB, {stats.hits} hits / "
        f"{stats.misses} misses, policy {s.cache.policy!r}",
        f"real-mode calls: {st.calls}, node functions run: {st.executed}",
    ]
    if manager is None:
        lines.append("models: no models loaded")
    else:
        infos = manager.list()
        on_device = sum(i.loaded_bytes for i in infos if i.location in ("gpu", "partial"))
        lines.append(f"models: {len(infos)} managed, {human_bytes(on_device)} on the compute device")
    return "\n".join(lines)


def set_models_dir(path: str | os.PathLike[str] | None, session: Any = None) -> Any:
    """Use ``path`` (a models folder or a ComfyUI installation) from now on; returns the folders.

    ``None`` goes back to ``$COMFY_NOTEBOOK_MODELS`` / the config file.
    """
    s = _session(session)
    if path is not None and not Path(path).expanduser().is_dir():
        raise CommandError(f"models folder {path} does not exist. Fix: pass an existing folder "
                           "(ComfyUI's models/ folder, or the ComfyUI installation)")
    s.set_models_dir(None if path is None else str(Path(path).expanduser()))
    return s.services.folders


def cache_summary(session: Any = None) -> str:
    """Cache statistics in one line (what ``%comfy cache`` prints)."""
    cache = _session(session).cache
    st = cache.stats()
    return (f"{st.entries} entries, {st.bytes / 2**20:.1f} MB, {st.hits} hits, {st.misses} misses, "
            f"{st.evictions} evictions, policy {cache.policy!r}")


def clear_cache(session: Any = None) -> int:
    """Drop every cached result; returns how many entries there were."""
    cache = _session(session).cache
    n = len(cache)
    cache.clear()
    return n


def set_cache_budget(ram: int | str | None, vram: int | str | None = None, session: Any = None) -> int:
    """Evict least recently used results beyond ``ram`` / ``vram`` bytes (``"8GB"``, ``None``:
    unbounded) from now on, and at once; returns how many entries were evicted now."""
    try:
        sizes = [None if v is None or v == "none" else (v if isinstance(v, int) else parse_bytes(v)) for v in (ram, vram)]
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    cache = _session(session).cache
    cache.policy = MemoryBudget(*sizes)
    entries = OrderedDict((k, cache.peek(k)) for k in cache.keys())  # noqa: SIM118 - least recent first
    return len([k for k in list(cache.policy.victims(entries, 0)) if cache.release(k)])


def export_last(path: str | os.PathLike[str], session: Any = None) -> dict[str, Any]:
    """Write the graph behind the last cell's (or script's) real-mode outputs as API JSON."""
    from comfy_notebook.realmode.recording import to_api

    outputs = state(_session(session)).last_outputs or state(_session(session)).cell_outputs
    if not outputs:
        raise CommandError("no real-mode outputs yet; run a cell with node calls first")
    api = to_api(outputs)
    Path(path).write_text(json.dumps(api, indent=2), encoding="utf-8")
    return api


def _parse_value(text: str) -> Any:
    """JSON when it parses (numbers, booleans, lists), else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(api: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``NODE.INPUT=VALUE`` overrides to an API prompt (NODE: id, title or class_type).

    Raises
    ------
    CommandError
        When an override is malformed or names no (or more than one) node.
    """
    for item in overrides:
        target, sep, raw = item.partition("=")
        node_name, dot, input_name = target.rpartition(".")
        if not sep or not dot or not node_name or not input_name:
            raise CommandError(f"--set expects NODE.INPUT=VALUE, received {item!r}")
        if node_name in api:
            matches = [node_name]
        else:
            matches = [
                nid for nid, node in api.items()
                if (node.get("_meta") or {}).get("title") == node_name or node.get("class_type") == node_name
            ]
        if len(matches) != 1:
            found = "no node" if not matches else f"{len(matches)} nodes ({', '.join(matches)})"
            raise CommandError(f"--set {item!r}: {found} named {node_name!r}. Fix: use the node id")
        api[matches[0]].setdefault("inputs", {})[input_name] = _parse_value(raw)
    return api


def run_file(path: str | os.PathLike[str], overrides: Iterable[str] = (), session: Any = None) -> Any:
    """Run an API-format prompt file (or a ``/prompt`` request body) with overrides applied.

    A ``.png`` runs the prompt ComfyUI stored in it; a prompt from an older ComfyUI that lacks
    inputs added since is replaced by the PNG's workflow converted with defaults (see
    :func:`comfy_notebook.pnginfo.read_prompt`, which warns which defaults it filled).
    """
    try:
        if os.fspath(path).lower().endswith(".png"):
            from comfy_notebook.pnginfo import read_prompt

            api: Any = dict(read_prompt(path, _session(session).registry))
        else:
            api = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, ComfyNotebookError) as exc:  # bad JSON, no PNG metadata
        raise CommandError(f"cannot read {path}: {exc}") from None
    if isinstance(api, dict) and isinstance(api.get("prompt"), dict):
        api = api["prompt"]  # a /prompt request body
    return _session(session).run_prompt(apply_overrides(api, overrides))


def write_stubs(path: str | os.PathLike[str] | None = None, session: Any = None) -> Path:
    """Write the ``.pyi`` stub of the session's nodes (default: the user stub folder)."""
    from comfy_notebook.realmode.stubs import write_stub

    return write_stub(_session(session).registry, path)


def manager(session: Any = None) -> Any:
    """The session's model manager, or a :class:`CommandError` when no model was loaded yet."""
    found = _session(session).services.models_loaded
    if found is None:
        raise CommandError("no models loaded yet (a loader node makes the model manager)")
    return found


def unload_all(session: Any = None, *, wait: float = 0.0) -> None:
    """``%comfy unload all``: free every model's weights — the local manager's and, when the
    session runs on a remote backend (a ComfyUI server), that backend's (its ``/free``).

    A prompt running on another thread (a widget's, the queue's) is waited for up to ``wait``
    seconds; if it is still running, nothing is unloaded and a
    :class:`~comfy_notebook.runtime.manager.ModelInUseError` says which models it holds.
    """
    s = _session(session)
    backend = getattr(s, "_backend", None)
    if backend is not None and callable(getattr(backend, "free", None)) and getattr(backend, "name", "") != "in-process":
        backend.free(unload_models=True, free_memory=False)
    local = s.services.models_loaded
    if local is None:
        if backend is None:
            raise CommandError("no models loaded yet (a loader node makes the model manager)")
        return
    lock = getattr(s, "_run_lock", None)
    if lock is None:
        local.unload_all(wait=wait)
        return
    if not lock.acquire(timeout=wait) if wait > 0 else not lock.acquire(blocking=False):
        from comfy_notebook.runtime.manager import ModelInUseError

        busy = ", ".join(repr(i.name) for i in local.list() if i.in_use) or "the models it loads"
        waited = f" after waiting {wait:g} s" if wait > 0 else ""
        raise ModelInUseError(
            f"unload all refused: a prompt is still running on this session{waited} (using "
            f"{busy}); nothing was unloaded, so the run keeps its weights. Fix: wait for it to "
            "finish or interrupt it (session.interrupt(), the run view's button), or run "
            "%comfy unload all --wait SECONDS (control.unload_all(wait=SECONDS)).")
    try:  # no prompt starts while the models go
        local.unload_all(wait=wait)
    finally:
        lock.release()


def run_workflow(workflow: Any, session: Any = None) -> Any:
    """Run a recorded :class:`~comfy_notebook.realmode.Workflow` once (what ``%%comfy`` does);
    returns a :class:`~comfy_notebook.realmode.display.RunOutputs`: images inline, one line."""
    from comfy_notebook.realmode.display import run_outputs
    from comfy_notebook.realmode.recording import build_graph, collect

    s = _session(session)
    if not workflow.nodes:
        raise CommandError("the workflow made no node calls")
    state(s)  # attaches the progress bars
    order = collect(workflow.nodes)
    _, ids = build_graph(order)  # the ids Workflow.run gives the same nodes
    result = workflow.run(s)
    return run_outputs(result, order, ids, s.services.folders)


def load_custom_nodes(path: str | os.PathLike[str], session: Any = None) -> Any:
    """``%comfy nodes load PATH``: import ComfyUI custom node packs into the session (one report
    per pack; see :meth:`comfy_notebook.Session.load_custom_nodes`)."""
    return _session(session).load_custom_nodes(path)


def attach_comfyui(path: str | os.PathLike[str], *, prefer: str = "comfyui", session: Any = None) -> Any:
    """``%comfy attach PATH``: import the ComfyUI installation at PATH and register its nodes
    (see :meth:`comfy_notebook.Session.attach_comfyui`)."""
    return _session(session).attach_comfyui(path, prefer=prefer)

