"""Tiny node pack for engine unit tests (no torch)."""

from __future__ import annotations

import pytest

from comfy_notebook._session import Session
from comfy_notebook.engine import GraphBuilder, current_context

RUNS: list[str] = []


class Const:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 0, "min": -100, "max": 10**9})}}
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "test"

    def run(self, value, **_):
        RUNS.append("Const")
        return (value,)


class Add:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"a": ("INT",), "b": ("INT", {"default": 1})}}
    RETURN_TYPES = ("INT",)
    RETURN_NAMES = ("sum",)
    FUNCTION = "run"

    def run(self, a, b, **_):
        RUNS.append("Add")
        return (a + b,)


class Show:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",)}, "hidden": {"prompt": "PROMPT", "uid": "UNIQUE_ID",
                                                              "png": "EXTRA_PNGINFO", "dyn": "DYNPROMPT"}}
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    def run(self, value, prompt=None, uid=None, png=None, dyn=None, **_):
        RUNS.append("Show")
        return {"ui": {"value": [value], "uid": [uid], "png": [png], "nodes": [sorted(dyn.all_node_ids())],
                       "prompt_keys": [sorted(prompt)]}}


class Sink:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",)}}
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    OUTPUT_NODE = True

    def run(self, value, **_):
        return (value,)


class Random:
    NOT_IDEMPOTENT = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",)}}
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self, value, **_):
        RUNS.append("Random")
        return (value,)


class Anything:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"obj": ("OBJ",)}}
    RETURN_TYPES = ("OBJ",)
    FUNCTION = "run"

    def run(self, obj):
        RUNS.append("Anything")
        return (obj,)


class Combo:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"choice": (["a", "b"],), "flag": ("BOOLEAN", {"default": False}),
                             "ratio": ("FLOAT", {"min": 0.0, "max": 1.0}), "text": ("STRING", {"multiline": True})}}
    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"
    OUTPUT_NODE = True
    DEPRECATED = True

    def run(self, choice, flag, ratio, text, **_):
        return (f"{choice}{flag}{ratio}{text}",)


class Steps:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"steps": ("INT", {"default": 3})}}
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    OUTPUT_NODE = True
    HOOK = None

    def run(self, steps, **_):
        ctx = current_context()
        for i in range(steps):
            ctx.progress(i + 1, steps, preview=f"p{i}")
            if Steps.HOOK is not None and i == 1:
                Steps.HOOK()
        found = ctx.services  # the executor passes its owner's object through untouched
        return (found["answer"] if isinstance(found, dict) and "answer" in found else steps,)


class DupExpand:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",)}}
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self, value, **kw):
        g = GraphBuilder(prefix="")
        g.node("Const", id="1", value=value)  # collides with node "1" of the prompt
        return {"result": (["1", 0],), "expand": g.finalize()}


class Flaky:
    FAIL = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",)}}
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self, value):
        RUNS.append("Flaky")
        if Flaky.FAIL:
            raise ZeroDivisionError("flaky")
        return (value,)


NODES = {c.__name__: c for c in [Flaky, Const, Add, Show, Sink, Random, Anything, Combo, Steps, DupExpand]}


@pytest.fixture
def session() -> Session:
    s = Session(builtins=False)
    s.register(NODES)
    RUNS.clear()
    Steps.HOOK = None
    Flaky.FAIL = True
    return s


@pytest.fixture
def runs() -> list[str]:
    return RUNS


@pytest.fixture
def flaky() -> type:
    return Flaky


@pytest.fixture
def steps_node() -> type:
    return Steps


def chain(n: int) -> dict:
    """Const -> Add x (n-2) -> Sink, API format."""
    api = {"0": {"inputs": {"value": 1}, "class_type": "Const"}}
    for i in range(1, n - 1):
        api[str(i)] = {"inputs": {"a": [str(i - 1), 0], "b": 1}, "class_type": "Add"}
    api[str(n - 1)] = {"inputs": {"value": [str(n - 2), 0]}, "class_type": "Sink"}
    return api


@pytest.fixture
def make_chain():
    return chain
