"""Every import goes down the rooms (the table is ``comfy_notebook/_layers.py``)."""

from __future__ import annotations

import ast
from pathlib import Path

from comfy_notebook._layers import ALLOWED_UPWARD, FORBIDDEN, LAYERS, rank, room_of

PACKAGE = Path(__file__).resolve().parents[1] / "comfy_notebook"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(path: Path, module: str) -> list[tuple[str, int]]:
    """``comfy_notebook`` modules imported anywhere in the file (functions included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1] if node.level > 1 else package
                name = ".".join(["comfy_notebook", *base, *([node.module] if node.module else [])])
            else:
                name = node.module or ""
            if name == "comfy_notebook":  # ``from comfy_notebook import x``: x may be a module
                found += [(f"comfy_notebook.{a.name}", node.lineno) for a in node.names]
            else:
                found.append((name, node.lineno))
    return [(n, line) for n, line in found if n == "comfy_notebook" or n.startswith("comfy_notebook.")]


def _target(name: str, modules: dict[str, Path]) -> str | None:
    """The module (relative to the package) an import refers to; None for a plain attribute."""
    rel = name.removeprefix("comfy_notebook").lstrip(".") or "__init__"
    while rel and rel not in modules and rel != "__init__":
        if "." not in rel:
            return None  # e.g. ``from comfy_notebook import session`` (the function)
        rel = rel.rsplit(".", 1)[0]
    return rel


def test_every_module_is_in_a_room() -> None:
    for module in _modules():
        room_of("__init__" if module == "__init__" else module)


def test_imports_go_down_the_layers() -> None:
    modules = _modules()
    bad = []
    for module, path in modules.items():
        mine = room_of(module)
        for name, line in _imports(path, module):
            target = _target(name, modules)
            if target is None:
                continue
            theirs = room_of(target)
            wrong = rank(theirs) < rank(mine) or (mine, theirs) in FORBIDDEN
            if wrong and (module, target) not in ALLOWED_UPWARD:
                bad.append(f"comfy_notebook/{path.relative_to(PACKAGE)}:{line} ({mine}) imports "
                           f"comfy_notebook.{target} ({theirs})")
    assert not bad, "imports that run up the layers:\n" + "\n".join(bad)


def test_the_table_is_the_architecture_order() -> None:
    rooms = [name for name, _ in LAYERS]
    doc = ["kernel_ext", "widgets", "realmode", "backends", "interop", "nodes", "families",
           "runtime", "sampling", "models", "folders", "engine", "errors"]
    assert [r for r in rooms if r in doc] == doc


def test_allowed_exceptions_still_exist() -> None:
    """An exception that no longer happens must leave the table (it would hide a new one)."""
    modules = _modules()
    for (module, target), reason in ALLOWED_UPWARD.items():
        assert reason
        names = {_target(n, modules) for n, _ in _imports(modules[module], module)}
        assert target in names, f"{module} no longer imports {target}: remove it from ALLOWED_UPWARD"


def test_the_walker_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from comfy_notebook.widgets import Gallery\n"
                      "from ..kernel_ext import cells\nfrom comfy_notebook import plot\n")
    found = {name for name, _ in _imports(source, "nodes.probe")}
    assert found == {"comfy_notebook.widgets", "comfy_notebook.kernel_ext", "comfy_notebook.plot"}
    modules = _modules()
    assert rank(room_of(_target("comfy_notebook.widgets", modules) or "")) < rank("nodes")


def test_node_pack_serves_star_import_without_importing_real_mode() -> None:
    """``import comfy_notebook.nodes`` leaves real mode unimported; the star import then works
    through the hook the package root installs."""
    import subprocess
    import sys

    code = (
        "import sys, comfy_notebook.nodes as n, comfy_notebook as c\n"
        "assert 'comfy_notebook.realmode' not in sys.modules, 'the node pack imported real mode'\n"
        "assert '_session' not in {m.rsplit('.', 1)[-1] for m in sys.modules if m.startswith('comfy_notebook.nodes')}\n"
        "c.use_session(c.Session(builtins=False))\n"
        "class Two:\n"
        "    RETURN_TYPES = ('INT',); FUNCTION = 'run'\n"
        "    @classmethod\n"
        "    def INPUT_TYPES(cls): return {'required': {}}\n"
        "    def run(self): return (2,)\n"
        "c.session().register({'Two': Two})\n"
        "ns = {}\n"
        "exec('from comfy_notebook.nodes import *', ns)\n"
        "assert ns['Two']().value == 2 and 'Checkpoints' in ns\n"
        "assert 'comfy_notebook.realmode' in sys.modules and 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PACKAGE.parent)
