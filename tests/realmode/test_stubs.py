"""The generated .pyi stub: valid Python, signatures in INPUT_TYPES order, docstrings."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from comfy_notebook.engine import Registry
from comfy_notebook.nodes.image import NODE_CLASS_MAPPINGS as IMAGE_NODES
from comfy_notebook.nodes.image_io import NODE_CLASS_MAPPINGS as IO_NODES
from comfy_notebook.nodes.latent import NODE_CLASS_MAPPINGS as LATENT_NODES
from comfy_notebook.realmode.stubs import render_stub, write_stub


class Odd:
    """A custom node with awkward names and optional inputs."""

    @classmethod
    def INPUT_TYPES(cls):  # type: ignore[no-untyped-def]
        return {
            "required": {"class": ("STRING", {"default": 'say """hi"""'}), "x y": ("FOO,BAR",)},
            "optional": {"extra": ("IMAGE",), "mode": (["a", "b"],), "n": ("INT", {"default": 3})},
        }

    RETURN_TYPES = ("IMAGE", "*")
    RETURN_NAMES = ("image", "anything")
    FUNCTION = "run"
    CATEGORY = "custom/odd"
    DESCRIPTION = "Does odd things."

    def run(self, **kw):  # type: ignore[no-untyped-def]
        return (None, None)


def _registry() -> Registry:
    reg = Registry()
    reg.register(LATENT_NODES, {"EmptyLatentImage": "Empty Latent Image"})
    reg.register(IMAGE_NODES)
    reg.register(IO_NODES)
    reg.register({"Odd Node (custom)": Odd})
    return reg


def test_stub_is_valid_python_with_expected_signatures(tmp_path: Path) -> None:
    path = write_stub(_registry(), tmp_path / "nodes.pyi")
    text = path.read_text()
    tree = ast.parse(text)
    funcs = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef)}
    assert set(funcs) >= {"EmptyLatentImage", "LatentUpscale", "SaveImage", "Odd_Node__custom_"}
    empty = funcs["EmptyLatentImage"]
    assert [a.arg for a in empty.args.args] == ["width", "height", "batch_size"]
    assert [ast.unparse(d) for d in empty.args.defaults] == ["512", "512", "1"]
    assert ast.unparse(empty.returns) == "LATENT"
    doc = ast.get_docstring(empty)
    assert doc.startswith("Empty Latent Image") and "Category: latent" in doc
    assert "Create a new batch" in doc and "Returns: LATENT (LATENT)" in doc
    up = funcs["LatentUpscale"]
    method = up.args.args[1]
    assert ast.unparse(method.annotation).startswith("Literal['nearest-exact', 'bilinear'")
    assert ast.unparse(funcs["ImagePadForOutpaint"].returns) == "tuple[IMAGE, MASK]"
    assert ast.unparse(funcs["SaveImage"].returns) == "dict[str, Any]"
    odd = funcs["Odd_Node__custom_"]
    assert [a.arg for a in odd.args.args] == ["class_", "x_y", "extra", "mode", "n"]
    assert ast.unparse(odd.args.args[1].annotation) == "Any"  # a comma union
    assert ast.unparse(odd.args.args[2].annotation) == "IMAGE | None"
    assert ast.get_docstring(odd).count("Does odd things.") == 1
    assert "IMAGE = Any" in text and "class Checkpoints(StrEnum): ..." in text


def test_stub_type_checks_a_call(tmp_path: Path) -> None:
    """Python itself accepts the stub as a module, and calls against it compile."""
    text = render_stub(_registry())
    module = tmp_path / "stubmod.py"
    module.write_text(text)
    code = (
        "import stubmod\n"
        "assert stubmod.EmptyLatentImage.__doc__.startswith('Empty Latent Image')\n"
        "stubmod.LatentUpscaleBy(None, 'bislerp', 2.0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_stubs_go_to_a_user_folder_never_into_the_package(tmp_path, monkeypatch):
    """Defect 9: the default target is a user folder; the package and site-packages are refused."""

    import comfy_notebook
    from comfy_notebook.realmode.stubs import StubLocationError, default_stub_dir

    monkeypatch.delenv("COMFY_NOTEBOOK_STUBS", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_stub_dir() == tmp_path / "cache" / "comfy_notebook" / "stubs"
    written = write_stub(_registry())
    assert written == tmp_path / "cache" / "comfy_notebook" / "stubs" / "comfy_notebook" / "nodes" / "__init__.pyi"
    assert "def " in written.read_text()
    monkeypatch.setenv("COMFY_NOTEBOOK_STUBS", str(tmp_path / "mine"))
    assert write_stub(_registry()) == tmp_path / "mine" / "comfy_notebook" / "nodes" / "__init__.pyi"
    package = Path(comfy_notebook.__file__).parent
    for bad in (package / "nodes" / "__init__.pyi", package, tmp_path / "lib" / "site-packages" / "x.pyi"):
        with pytest.raises(StubLocationError, match="Fix: write it to a user folder"):
            write_stub(_registry(), bad)
    assert not (package / "nodes" / "__init__.pyi").exists()
