"""File faults for the reliability tests: every file read and every file (PNG) write the product
makes, found from the product's own functions, never from a hand-written list.

:class:`FileInjector` is the harness's :class:`~harness.Injector` plus hooks on the primitives
files are opened or written with (``open``, ``os.open``, ``PIL.Image.open``,
``PIL.Image.Image.save``, ``torch.load``, ``safetensors``' ``load_file`` / ``safe_open``).  A
call is an injection site when the function calling the primitive belongs to
``comfy_notebook``; the site is named for that function (``read:runtime.loading.__init__``,
``write:nodes.image_io.write_png``), so a new loader or writer is covered the day it lands.
Reads fail with ``EIO``; writes with ``ENOSPC`` (a full disk).
"""

from __future__ import annotations

import builtins
import errno
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import PIL.Image
import safetensors
import safetensors.torch
import torch
from harness import Injector, Point

from comfy_notebook.folders import identity

# (owner, attribute, what it does: "read", "write", or "mode" = decided by the open mode)
PRIMITIVES: list[tuple[Any, str, str]] = [
    (builtins, "open", "mode"),
    (os, "open", "flags"),
    (PIL.Image, "open", "read"),
    (PIL.Image.Image, "save", "write"),
    (torch, "load", "read"),
    (safetensors.torch, "load_file", "read"),
    (safetensors, "safe_open", "read"),
]
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _what(how: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    if how == "mode":
        mode = kwargs.get("mode", args[1] if len(args) > 1 else "r")
        return "write" if any(c in str(mode) for c in "wxa+") else "read"
    if how == "flags":
        flags = kwargs.get("flags", args[1] if len(args) > 1 else 0)
        return "write" if flags & _WRITE_FLAGS else "read"
    return how


def fault_for(point: Point) -> OSError:
    """The error a failed read (EIO) or write (a full disk: ENOSPC) raises."""
    if point.site.startswith("write:"):
        return OSError(errno.ENOSPC, "No space left on device (injected)")
    return OSError(errno.EIO, "Input/output error (injected)")


class FileInjector(Injector):
    """An :class:`Injector` whose sites also include every file read and write of the product
    (file identities are forgotten on entry, so each run reads what a fresh process would)."""

    @contextmanager
    def installed(self, session: Any) -> Iterator[Injector]:
        identity._cache.clear()
        saved = [(owner, name, getattr(owner, name)) for owner, name, _ in PRIMITIVES]

        def wrap(fn: Callable[..., Any], how: str) -> Callable[..., Any]:
            def wrapped(*args: Any, **kwargs: Any) -> Any:
                import sys

                caller = sys._getframe(1)
                module = caller.f_globals.get("__name__", "")
                if module.startswith("comfy_notebook.") and module != "comfy_notebook.testing":
                    short = module.removeprefix("comfy_notebook.")
                    self.reach(f"{_what(how, args, kwargs)}:{short}.{caller.f_code.co_name}")
                return fn(*args, **kwargs)

            return wrapped

        for (owner, name, how), (_, _, fn) in zip(PRIMITIVES, saved, strict=True):
            setattr(owner, name, wrap(fn, how))
        try:
            with super().installed(session) as injector:
                yield injector
        finally:
            for owner, name, fn in saved:
                setattr(owner, name, fn)
