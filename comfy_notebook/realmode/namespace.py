"""What ``from comfy_notebook.nodes import *`` gives: the current session's nodes as real-mode
callables, and the ComfyScript-style enums (``Checkpoints``, ``Samplers``, ...).

``comfy_notebook.nodes`` (the node pack, a room below) delegates its unknown attributes to
:func:`lookup`; the package root installs that delegation.
"""

from __future__ import annotations

from typing import Any

from comfy_notebook._session import session
from comfy_notebook.realmode import enums
from comfy_notebook.realmode.calls import node_function
from comfy_notebook.realmode.recording import RAW_VALUE_NODE

__all__ = ["lookup", "names"]


def _enums() -> dict[str, Any]:
    return dict(enums.global_enums(session()))


def names() -> list[str]:
    """Every node name of the current session, then every enum name (``__all__``)."""
    nodes = [n for n in session().registry.names() if n != RAW_VALUE_NODE]
    return sorted(nodes) + sorted(_enums())


def lookup(name: str) -> Any:
    """``__all__``, an enum, or the real-mode callable of node ``name``.

    Raises
    ------
    AttributeError
        When ``name`` is neither a registered node nor an enum (the misspelling's closest
        registered names are suggested).
    """
    if name == "__all__":
        return names()
    found = _enums()
    if name in found:
        return found[name]
    try:
        return node_function(name)
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, session().registry.names(), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise AttributeError(
            f"no node named {name!r} is registered in the current session.{hint} "
            "Fix: check the spelling, or register it with comfy_notebook.session().register({...})"
        ) from None
