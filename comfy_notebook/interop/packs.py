"""Load ComfyUI custom node packs into a session, the way ComfyUI's ``nodes.py`` does.

A pack is a folder with ``__init__.py`` or a single ``.py`` file exporting
``NODE_CLASS_MAPPINGS`` (+ ``NODE_DISPLAY_NAME_MAPPINGS``, ``WEB_DIRECTORY``) and/or a V3
``comfy_entrypoint()`` returning a ``ComfyExtension`` whose (possibly async) ``get_node_list()``
names its node classes.  A folder of packs (``custom_nodes/``) loads each one; names ending in
``.disabled`` and hidden files are skipped, as in ComfyUI.

Every pack is reported: loaded with its nodes, or failed with the exception, the missing module
and the traceback — never silently.  What packs import from ComfyUI's host (``folder_paths``,
``comfy.utils.ProgressBar``, ``server.PromptServer``, ``comfy_execution.graph_utils``,
``comfy_api.latest``) comes from :mod:`comfy_notebook.interop.shims`, put on ``sys.path`` only
when packs are loaded.  Packs that reach into ``comfy.model_management``, ``comfy.model_patcher``,
``comfy.sd`` or ``comfy.ldm`` need ComfyUI itself, and their report says so.

Reference: ComfyUI ``nodes.py`` (``load_custom_node``, ``init_external_custom_nodes``) at 004b1b5.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import os
import sys
import threading
import time
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from comfy_notebook.errors import ComfyNotebookError

__all__ = ["PackReport", "PackReports", "install_shims", "load_custom_nodes", "pack_paths"]

SHIMS = Path(__file__).with_name("shims")
# Modules only a real ComfyUI provides (the shims cover folder_paths, comfy.utils, server, ...).
_COMFYUI_ONLY = ("comfy", "comfy_extras", "nodes", "execution", "latent_preview", "node_helpers",
                 "comfy_execution", "comfy_api", "app", "server", "folder_paths")


class PackLoadError(ComfyNotebookError):
    """A path given to ``load_custom_nodes`` is not a pack or a folder of packs."""


@dataclass(frozen=True)
class PackReport:
    """What loading one pack did."""

    name: str
    path: str
    nodes: tuple[str, ...] = ()
    web_directory: str | None = None
    error: str | None = None
    missing_module: str | None = None
    traceback: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether the pack imported and its nodes registered."""
        return self.error is None

    @property
    def needs_comfyui(self) -> bool:
        """Whether the pack failed on a module that only a real ComfyUI provides."""
        root = (self.missing_module or "").split(".")[0]
        return root in _COMFYUI_ONLY

    def __str__(self) -> str:
        if self.ok:
            web = f", web directory {self.web_directory}" if self.web_directory else ""
            return f"{self.name}: loaded {len(self.nodes)} nodes ({self.seconds:.2f} s){web}"
        hint = ""
        if self.needs_comfyui:
            hint = (f" — this pack needs ComfyUI itself (it imports {self.missing_module}); "
                    "attach an installation with Session(comfyui='~/ComfyUI')")
        elif self.missing_module:
            hint = f" — install the missing package: pip install {self.missing_module.split('.')[0]}"
        return f"{self.name}: FAILED {self.error}{hint}"


class PackReports(list[PackReport]):
    """The reports of one ``load_custom_nodes`` call; prints one line per pack."""

    def __str__(self) -> str:
        return "\n".join(str(r) for r in self) or "no node packs found"

    def __repr__(self) -> str:
        return str(self)

    @property
    def failed(self) -> list[PackReport]:
        """Packs that did not load."""
        return [r for r in self if not r.ok]


_shim_lock = threading.Lock()


def install_shims() -> None:
    """Put the compatibility modules on ``sys.path`` (once; not when ComfyUI is attached)."""
    with _shim_lock:
        shim = str(SHIMS)
        if shim in sys.path or getattr(sys.modules.get("comfy"), "__comfyui_attached__", False):
            return
        sys.path.insert(0, shim)


def pack_paths(path: str | os.PathLike[str]) -> list[Path]:
    """The packs at ``path``: itself if it is a pack, else each pack inside the folder."""
    p = Path(path).expanduser()
    if not p.exists():
        raise PackLoadError(f"no node pack at {p}: the path does not exist. Fix: give a pack "
                            "folder (with __init__.py), a .py file or a custom_nodes folder")
    if p.is_file() or (p / "__init__.py").exists():
        return [p]
    found = []
    for child in sorted(p.iterdir()):
        if child.name.startswith((".", "__")) or child.name.endswith(".disabled"):
            continue
        if (child.is_file() and child.suffix == ".py") or (child / "__init__.py").exists():
            found.append(child)
    return found


def _run_coroutine(value: Any) -> Any:
    """Await ``value`` if it is a coroutine, also from inside a running event loop (Jupyter)."""
    if not inspect.isawaitable(value):
        return value
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_awaited(value))
    box: dict[str, Any] = {}

    def worker() -> None:
        try:
            box["value"] = asyncio.run(_awaited(value))
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    t = threading.Thread(target=worker, name="comfy-pack-loader")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


async def _awaited(value: Any) -> Any:
    return await value


def _import(path: Path) -> ModuleType:
    name = path.stem if path.is_file() else path.name
    init = path if path.is_file() else path / "__init__.py"
    spec = importlib.util.spec_from_file_location(name, init)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {init}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _v3_nodes(module: ModuleType) -> dict[str, type]:
    entry = getattr(module, "comfy_entrypoint", None)
    if entry is None:
        return {}
    extension = _run_coroutine(entry())
    on_load = getattr(extension, "on_load", None)
    if callable(on_load):
        _run_coroutine(on_load())
    classes = _run_coroutine(extension.get_node_list())
    found: dict[str, type] = {}
    for cls in classes:
        schema = cls.define_schema()
        found[str(schema.node_id)] = cls
    return found


def _load_one(session: Any, path: Path) -> PackReport:
    start = time.perf_counter()
    name = path.stem if path.is_file() else path.name
    try:
        module = _import(path)
        mappings = dict(getattr(module, "NODE_CLASS_MAPPINGS", None) or {})
        mappings.update(_v3_nodes(module))
        if not mappings:
            raise ImportError(f"{name} exports neither NODE_CLASS_MAPPINGS nor comfy_entrypoint()")
        display = dict(getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", None) or {})
        session.register(mappings, display_names=display)
    except Exception as exc:
        missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
        return PackReport(name, str(path), error=f"{type(exc).__name__}: {exc}",
                          missing_module=missing, traceback=traceback.format_exc(),
                          seconds=time.perf_counter() - start)
    web = getattr(module, "WEB_DIRECTORY", None)
    web_dir = str((path.parent if path.is_file() else path) / web) if web else None
    return PackReport(name, str(path), nodes=tuple(mappings), web_directory=web_dir,
                      seconds=time.perf_counter() - start)


def load_custom_nodes(session: Any, paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> PackReports:
    """Import node packs and register their nodes in ``session``.

    Parameters
    ----------
    session:
        The :class:`~comfy_notebook.Session` to register into.
    paths:
        A pack folder, a single-file pack, a folder of packs, or several of these.

    Returns
    -------
    PackReports
        One :class:`PackReport` per pack, in load order; a failing pack never stops the others.
    """
    install_shims()
    items = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    reports = PackReports()
    for item in items:
        for pack in pack_paths(item):
            reports.append(_load_one(session, pack))
    return reports
