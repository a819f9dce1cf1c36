"""A ``.pyi`` stub of the installed nodes, so editors complete node calls and their arguments.

``write_stub(registry, path)`` writes one function per registered node: positional-or-keyword
parameters in ``INPUT_TYPES`` order (required, then optional with their defaults), combo inputs
typed as ``Literal[...]`` (up to :data:`MAX_LITERAL` options) or ``str``, return types named
after ComfyUI's types, and a docstring with the display name, category, description and
outputs.  Names that are not identifiers are sanitised with the enum rule.

Where stubs go (:func:`default_stub_dir`): ``$COMFY_NOTEBOOK_STUBS``, else
``$XDG_CACHE_HOME/comfy_notebook/stubs`` (default ``~/.cache/comfy_notebook/stubs``), as
``<dir>/comfy_notebook/nodes/__init__.pyi`` — never into the installed package or a checkout
of it.  Editors find that folder when told to: Pyright / Pylance ``"stubPath"`` (VS Code:
``python.analysis.stubPath``), mypy ``MYPYPATH``.  The notebook's own completion needs no stub
(``dir(comfy_notebook.nodes)`` lists the session's nodes).
"""

from __future__ import annotations

import keyword
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from comfy_notebook.errors import ComfyNotebookError
from comfy_notebook.realmode.enums import GLOBAL_ENUM_KINDS, member_name

__all__ = ["MAX_LITERAL", "STUBS_ENV", "StubLocationError", "default_stub_dir", "render_stub", "write_stub"]

STUBS_ENV = "COMFY_NOTEBOOK_STUBS"


class StubLocationError(ComfyNotebookError):
    """A stub was to be written into the installed package or an environment's site-packages."""


def default_stub_dir() -> Path:
    """The user folder stubs go to (see the module docstring)."""
    env = os.environ.get(STUBS_ENV)
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "comfy_notebook" / "stubs"


def _forbidden(target: Path) -> str | None:
    """Why ``target`` is not a place for a user's stub (None: it is fine)."""
    real = target.expanduser().absolute().resolve()
    package = Path(__file__).resolve().parents[1]  # the comfy_notebook package
    checkout = package.parent
    if real.is_relative_to(package):
        return f"it is inside the installed package {package}"
    if "site-packages" in real.parts or "dist-packages" in real.parts:
        return "it is inside an environment's site-packages"
    if (checkout / "pyproject.toml").is_file() and real.is_relative_to(checkout / "comfy_notebook"):
        return f"it is inside the checkout {checkout}"
    return None

MAX_LITERAL = 200
_PRIMITIVES = {"INT": "int", "FLOAT": "float", "STRING": "str", "BOOLEAN": "bool"}
_SIMPLE_DEFAULTS = (int, float, str, bool, type(None))


def _ident(name: str) -> str:
    out = member_name(name) if not name.isidentifier() or keyword.iskeyword(name) else name
    return out


def _type_alias(comfy_type: str) -> str:
    """The stub name of a ComfyUI socket type (``"IMAGE"`` -> ``IMAGE``; unions -> ``Any``)."""
    if comfy_type in _PRIMITIVES:
        return _PRIMITIVES[comfy_type]
    if comfy_type == "*" or "," in comfy_type or not comfy_type.isidentifier():
        return "Any"
    return comfy_type


def _annotation(inp: Any) -> str:
    if isinstance(inp.type, tuple):
        opts = [o for o in inp.type if isinstance(o, str)]
        if opts and len(opts) == len(inp.type) and len(opts) <= MAX_LITERAL:
            return "Literal[" + ", ".join(repr(o) for o in opts) + "] | str"
        return "str"
    return _type_alias(str(inp.type))


def _default(inp: Any) -> str | None:
    if "default" in inp.options and isinstance(inp.options["default"], _SIMPLE_DEFAULTS):
        value = inp.options["default"]
        return repr(value) if not isinstance(value, float) or value == value else None
    if isinstance(inp.type, tuple) and inp.type and isinstance(inp.type[0], str):
        return repr(inp.type[0])
    return None


def _returns(spec: Any) -> str:
    types = [_type_alias(str(t)) for t in spec.return_types]
    if spec.output_node and not types:
        return "dict[str, Any]"
    if not types:
        return "None"
    if len(types) == 1:
        return types[0]
    return "tuple[" + ", ".join(types) + "]"


def _doc(spec: Any) -> str:
    lines = [spec.display_name if spec.display_name != spec.name else spec.name, ""]
    lines.append(f"Category: {spec.category or '-'}")
    if spec.description:
        lines += ["", spec.description.strip()]
    if spec.return_types:
        outs = ", ".join(f"{n} ({t})" for n, t in zip(spec.return_names, spec.return_types, strict=False))
        lines += ["", f"Returns: {outs}"]
    if spec.output_node:
        lines.append("Output node.")
    text = "\n    ".join(line.replace("\\", "\\\\").replace('"""', '\\"\\"\\"') for line in lines)
    return f'    """{text}\n    """'


def _function(spec: Any) -> str:
    params: list[str] = []
    seen_default = False
    used: set[str] = set()
    for inp in spec.inputs.values():
        name = _ident(inp.name)
        while name in used:
            name += "_"
        used.add(name)
        ann = _annotation(inp)
        default = _default(inp)
        if inp.category == "optional" and default is None:
            ann, default = f"{ann} | None", "None"
        if default is not None:
            params.append(f"{name}: {ann} = {default}")
            seen_default = True
        elif seen_default:
            params.append(f"{name}: {ann} = ...")
        else:
            params.append(f"{name}: {ann}")
    signature = ", ".join(params)
    return f"def {_ident(spec.name)}({signature}) -> {_returns(spec)}:\n{_doc(spec)}\n    ..."


def render_stub(registry: Any, names: Iterable[str] | None = None) -> str:
    """The text of the stub for ``registry`` (all nodes, or ``names``)."""
    chosen = sorted(names if names is not None else list(registry))
    specs = [registry[n] for n in chosen]
    aliases: set[str] = set()
    for spec in specs:
        for inp in spec.inputs.values():
            if isinstance(inp.type, str):
                aliases.add(_type_alias(inp.type))
        aliases.update(_type_alias(str(t)) for t in spec.return_types)
    aliases -= {"int", "float", "str", "bool", "Any", "None"}
    head = [
        '"""Generated by comfy_notebook.realmode.stubs.write_stub: the installed nodes (do not edit)."""',
        "",
        "from enum import StrEnum",
        "from typing import Any, Literal",
        "",
    ]
    head += [f"{a} = Any" for a in sorted(aliases)]
    head.append("")
    head += [f"class {name}(StrEnum): ..." for name in [*GLOBAL_ENUM_KINDS, "Samplers", "Schedulers"]]
    body = [_function(spec) for spec in specs]
    return "\n".join(head) + "\n\n" + "\n\n".join(body) + "\n"


def write_stub(registry: Any, path: str | os.PathLike[str] | None = None) -> Path:
    """Write the ``.pyi`` stub of every node in ``registry`` to ``path``.

    Parameters
    ----------
    registry:
        A :class:`comfy_notebook.engine.Registry` (e.g. ``comfy_notebook.session().registry``).
    path:
        A ``.pyi`` file, or a folder (the stub goes to ``<folder>/comfy_notebook/nodes/__init__.pyi``);
        default :func:`default_stub_dir`.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    StubLocationError
        When the target is inside the installed package, a checkout of it or site-packages.
    """
    target = Path(path).expanduser() if path is not None else default_stub_dir()
    if target.suffix != ".pyi":
        target = target / "comfy_notebook" / "nodes" / "__init__.pyi"
    reason = _forbidden(target)
    if reason is not None:
        raise StubLocationError(
            f"not writing the stub to {target}: {reason}. Fix: write it to a user folder "
            f"(default {default_stub_dir()}, or set ${STUBS_ENV}) and point the editor there")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render_stub(registry), encoding="utf-8")
    return target
