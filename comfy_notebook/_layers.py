"""The rooms of the package and their order: the one table the import-layer test reads.

Each room may import only rooms listed *after* it (lower layers) and itself; see
``shared/design/architecture.md``.  ``tests/test_layers.py`` walks every module's imports
(lazy imports inside functions included) and fails on an arrow that runs back up.
Rooms that do not exist yet (``backends``, ``interop``, ``families``) have their place already.
"""

from __future__ import annotations

__all__ = ["ALLOWED_UPWARD", "FORBIDDEN", "LAYERS", "room_of"]

# (room, module prefixes relative to ``comfy_notebook``), top first.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("root", ("__init__", "demo", "testing")),  # the public facade and the tools around it
    ("kernel_ext", ("kernel_ext",)),
    ("widgets", ("widgets", "plot")),
    ("realmode", ("realmode",)),
    ("session", ("_session",)),
    ("backends", ("backends",)),
    ("interop", ("interop",)),
    ("nodes", ("nodes",)),
    ("services", ("services",)),
    ("families", ("families",)),
    ("runtime", ("runtime",)),
    ("sampling", ("sampling",)),
    ("models", ("models",)),
    ("folders", ("folders", "pnginfo")),
    ("engine", ("engine",)),
    ("errors", ("errors", "_units", "_layers", "data")),
)

# (importing module, imported module) -> why this arrow (upward, or FORBIDDEN below) is
# tolerated for now.  Each entry is a to-do with its reason; the test fails once it is gone.
ALLOWED_UPWARD: dict[tuple[str, str], str] = {}


# Downward arrows that are still wrong: (importing room, imported room) -> why.
FORBIDDEN: dict[tuple[str, str], str] = {
    ("runtime", "sampling"): (
        "runtime moves and patches models; noise schedules are built where sampling is called "
        "(nodes/, later families/)"
    ),
}


def room_of(module: str) -> str:
    """The room of ``comfy_notebook.<module>`` (``module`` without the package prefix)."""
    best = ""
    room = ""
    for name, prefixes in LAYERS:
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
                best, room = prefix, name
    if not room:
        raise KeyError(f"module comfy_notebook.{module} is in no room; add it to comfy_notebook/_layers.py")
    return room


def rank(room: str) -> int:
    """Position of ``room`` from the top (0)."""
    return [name for name, _ in LAYERS].index(room)
