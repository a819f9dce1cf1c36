"""comfy_notebook: ComfyUI-style node graphs run in the notebook kernel (real mode).

Public surface (imported lazily so that ``import comfy_notebook`` stays cheap and never
imports torch by itself):

- ``Session``: registry + executor + cache (+ model manager once models are used).
- ``session()`` / ``use_session(s)``: the session that real-mode node calls act on.
- ``load_ipython_extension``: ``%load_ext comfy_notebook``.
- the errors (``NodeCallError``, ``ValidationError``, ...), also in ``comfy_notebook.errors``.

The package root is the top of the rooms (see ``_layers.py``): it wires real mode's user
namespace into the node pack, which never imports real mode itself.
"""

from __future__ import annotations

from typing import Any

# Torch-free and cheap, so imported eagerly.  The module is private (``_session``) so that
# ``comfy_notebook.session`` is always the function, never a submodule of the same name.
from comfy_notebook import errors as _errors
from comfy_notebook import nodes as _nodes
from comfy_notebook._session import Session, session, use_session
from comfy_notebook.errors import (
    ComfyNotebookError,
    ExecutionInterrupted,
    GraphError,
    ModelLoadError,
    ModelMemoryError,
    NodeCallError,
    NodeError,
    NodeExecutionError,
    UnsupportedModelError,
    ValidationError,
)

__version__ = "0.1.0"

__all__ = [
    "ComfyNotebookError",
    "ExecutionInterrupted",
    "GraphError",
    "ModelLoadError",
    "ModelMemoryError",
    "NodeCallError",
    "NodeError",
    "NodeExecutionError",
    "Session",
    "UnsupportedModelError",
    "ValidationError",
    "__version__",
    "load_ipython_extension",
    "read_prompt",
    "session",
    "unload_ipython_extension",
    "use_session",
]

def read_prompt(png_path: Any, registry: Any = None) -> Any:
    """The API prompt of a PNG saved by ComfyUI (see :func:`comfy_notebook.pnginfo.read_prompt`).

    Checked against the current session's nodes (or ``registry``): a prompt saved by an older
    ComfyUI that lacks inputs with defaults falls back to the PNG's workflow chunk, and a
    warning says which defaults were filled.
    """
    from comfy_notebook.pnginfo import read_prompt as _read

    return _read(png_path, registry if registry is not None else session().registry)


def _node_namespace(name: str) -> Any:
    """``comfy_notebook.nodes.<name>`` for node and enum names: real mode's user namespace."""
    from comfy_notebook.realmode.namespace import lookup

    return lookup(name)


_nodes.namespace = _node_namespace
# Errors show under their public home: ``comfy_notebook.NodeCallError: ...`` in a traceback.
for _name in _errors.__all__:
    getattr(_errors, _name).__module__ = __name__
del _name


def __getattr__(name: str) -> Any:
    raise AttributeError(f"module 'comfy_notebook' has no attribute {name!r}")


def load_ipython_extension(ipython: Any) -> None:
    """Entry point of ``%load_ext comfy_notebook``."""
    from comfy_notebook.kernel_ext import load_ipython_extension as _load

    _load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """Entry point of ``%unload_ext comfy_notebook``."""
    from comfy_notebook.kernel_ext import unload_ipython_extension as _unload

    _unload(ipython)
