"""In-process IPython shell with the extension loaded, over a session with a tiny node pack."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

CALLS: list[str] = []


class Number:
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"value": ("INT", {"default": 1, "min": 0, "max": 1000})}}

    def run(self, value: int) -> tuple[int]:
        CALLS.append("Number")
        return (value,)


class Add:
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"a": ("INT",), "b": ("INT", {"default": 0})}}

    def run(self, a: int, b: int) -> tuple[int]:
        CALLS.append("Add")
        if b < 0:
            raise ValueError("b must not be negative")
        return (a + b,)


class Show:
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    SEEN: ClassVar[list[Any]] = []

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"value": ("INT",)}}

    def run(self, value: int) -> dict[str, Any]:
        CALLS.append("Show")
        Show.SEEN.append(value)
        return {"ui": {"value": [value]}}


class Slow:
    """Gets Jupyter's interrupt (KeyboardInterrupt) at step 3 of 10."""

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"value": ("INT",)}}

    def run(self, value: int) -> tuple[int]:
        from comfy_notebook.engine import current_context

        ctx = current_context()
        for i in range(10):
            ctx.progress(i + 1, 10)
            if i == 2 and value == 13:
                raise KeyboardInterrupt
        return (value,)


PACK = {"Number": Number, "Add": Add, "Show": Show, "Slow": Slow}


class FakeManager:
    """Records the verbs the magics call (the ModelManager API subset they use)."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []

    def list(self) -> list[Any]:
        return []

    def load(self, m: str) -> None:
        self.log.append(("load", m))

    def offload(self, m: str) -> None:
        self.log.append(("offload", m))

    def unload(self, m: str) -> None:
        if m == "missing":
            raise KeyError("no model named 'missing'")
        self.log.append(("unload", m))

    def unload_all(self, *, wait: float = 0.0) -> None:
        self.log.append(("unload_all", f"wait={wait:g}" if wait else ""))

    def __repr__(self) -> str:
        return "FakeManager table"


@pytest.fixture
def session(make_current_session):
    """A fresh current session with the test pack; progress bars off."""
    s = make_current_session(PACK)
    CALLS.clear()
    Show.SEEN.clear()
    return s


@pytest.fixture
def calls() -> list[str]:
    return CALLS


@pytest.fixture
def ip(session):
    """The global in-process IPython shell with comfy_notebook loaded (unloaded afterwards)."""
    from IPython.testing.globalipapp import get_ipython

    shell = get_ipython()
    shell.run_line_magic("load_ext", "comfy_notebook")
    shell.run_cell("from comfy_notebook.realmode import node_function as _nf\n"
                   "Number, Add, Show = _nf('Number'), _nf('Add'), _nf('Show')")
    yield shell
    shell.run_line_magic("unload_ext", "comfy_notebook")


def run(shell: Any, code: str, cell_id: str = "cell-1") -> Any:
    """Run a cell like a notebook frontend does (with a cell id); returns the ExecutionResult."""
    return shell.run_cell(code, store_history=True, cell_id=cell_id)


@pytest.fixture
def run_cell():
    return run


@pytest.fixture
def fake_manager() -> FakeManager:
    return FakeManager()
