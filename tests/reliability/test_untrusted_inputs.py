"""Untrusted inputs (issue 19): PNGs with hostile metadata are read safely by ``read_prompt``
(never executes anything, never reads outside the folders), and fuzzed API prompts (1,000;
10,000 in the slow job) and mutated UI workflows (300; 1,000 slow) end only in ValidationError / NodeExecutionError / a
converter error naming the problem, never in another exception."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import pathlib
from typing import Any

import pytest
from harness import CKPT, new_session, tiny_prompt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from comfy_notebook.errors import GraphError, NodeExecutionError, ValidationError
from comfy_notebook.pnginfo import MetadataError, api_to_workflow, read_prompt, workflow_to_api


def _png(**chunks: str) -> io.BytesIO:
    info = PngImagePlugin.PngInfo()
    for key, text in chunks.items():
        info.add_text(key, text)
    out = io.BytesIO()
    Image.new("RGB", (4, 4)).save(out, "PNG", pnginfo=info)
    out.seek(0)
    return out


HOSTILE = {
    "deep array": _png(prompt="[" * 100_000 + "]" * 100_000),
    "deep object": _png(prompt='{"a":' * 50_000 + "1" + "}" * 50_000),
    "not json": _png(prompt="import os; os.system('echo pwned')"),
    "a list": _png(prompt="[1, 2, 3]"),
    "no chunk": _png(),
    "not a png": io.BytesIO(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64),
    "text": io.BytesIO(b"hello"),
    "over pillow's text limit": _png(prompt="x" * (70 << 20)),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_png_is_a_metadata_error(name: str) -> None:
    data = HOSTILE[name]
    data.seek(0)
    with pytest.raises(MetadataError):
        read_prompt(data)


def test_huge_prompt_chunk_is_read_as_data(tiny_root: pathlib.Path) -> None:
    """A 20 MB prompt string is just a string: read, validated, never run."""
    api = tiny_prompt()
    api["6"]["inputs"]["text"] = "a" * (20 << 20)
    api["4"]["inputs"]["ckpt_name"] = "../../../../etc/passwd"
    got = read_prompt(_png(prompt=json.dumps(api)))
    assert got == api
    s = new_session(tiny_root)
    with pytest.raises(ValidationError, match="ckpt_name"):
        s.run_prompt(got)


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "..\\..\\x.safetensors",
                                  "sub/../../" + CKPT, "\x00" + CKPT])
def test_paths_outside_the_folders_are_refused(tiny_root: pathlib.Path, name: str) -> None:
    api = tiny_prompt()
    api["4"]["inputs"]["ckpt_name"] = name
    s = new_session(tiny_root)
    prompt = read_prompt(_png(prompt=json.dumps(api)), s.registry)
    with pytest.raises(ValidationError):
        s.run_prompt(prompt)
    assert len(s.models) == 0  # nothing was loaded


def test_unknown_nodes_are_named_and_nothing_runs(tiny_root: pathlib.Path) -> None:
    api = tiny_prompt()
    api["42"] = {"class_type": "os.system", "inputs": {"command": "echo pwned"}}
    api["9"]["inputs"]["images"] = ["42", 0]
    s = new_session(tiny_root)
    prompt = read_prompt(_png(prompt=json.dumps(api)), s.registry)
    with pytest.raises(ValidationError, match=r"os\.system"):
        s.run_prompt(prompt)
    assert len(s.models) == 0


# -- fuzzing ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dry(tiny_root: pathlib.Path) -> Any:
    """A session that validates fully but runs nothing (fuzzed prompts can ask for anything)."""
    s = new_session(tiny_root)
    s.executor.execute = lambda validated, **kw: validated  # type: ignore[method-assign]
    return s


ACCEPTED = (ValidationError, NodeExecutionError, GraphError, MetadataError)
_scalar = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats()
           | st.text(max_size=12) | st.sampled_from([CKPT, "euler", "normal", "enable", ""]))
_value = st.recursive(_scalar, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                      max_leaves=6)


@st.composite
def api_prompts(draw: Any, names: list[str], specs: dict[str, Any]) -> Any:
    ids = draw(st.lists(st.text("0123456789ab", min_size=1, max_size=2), min_size=1, max_size=6, unique=True))
    api: dict[Any, Any] = {}
    for node_id in ids:
        if draw(st.integers(0, 30)) == 0:
            api[node_id] = draw(_value)  # not a node at all
            continue
        cls = draw(st.sampled_from(names) | st.text(max_size=8))
        spec = specs.get(cls)
        inputs: dict[Any, Any] = {}
        for name in (list(spec.inputs) if spec is not None else []) + draw(st.lists(st.text(max_size=6), max_size=2)):
            choice = draw(st.integers(0, 9))
            if choice < 3 and spec is not None and name in spec.inputs:
                inp = spec.inputs[name]
                opts = list(inp.type) if isinstance(inp.type, tuple) else [inp.options.get("default")]
                inputs[name] = draw(st.sampled_from(opts or [None]))
            elif choice < 6:
                inputs[name] = [draw(st.sampled_from(ids) | st.text(max_size=2)), draw(st.integers(-2, 4))]
            elif choice < 9:
                inputs[name] = draw(_value)
        api[node_id] = {"class_type": cls, "inputs": inputs}
    return api


@pytest.mark.parametrize("n", [1000, pytest.param(10_000, marks=pytest.mark.slow)])
def test_fuzzed_api_prompts(dry: Any, n: int) -> None:
    names = sorted(dry.registry.names())
    specs = {n: dry.registry.get(n) for n in names}
    tried = []

    @settings(max_examples=n, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(api_prompts(names, specs))
    def check(api: Any) -> None:
        tried.append(1)
        with contextlib.suppress(*ACCEPTED):
            dry.run_prompt(api)

    check()
    assert len(tried) >= n


def _mutations(workflow: dict[str, Any]) -> Any:
    paths: list[tuple[Any, ...]] = []

    def walk(v: Any, path: tuple[Any, ...]) -> None:
        paths.append(path)
        if isinstance(v, dict):
            for k, x in v.items():
                walk(x, (*path, k))
        elif isinstance(v, list):
            for i, x in enumerate(v):
                walk(x, (*path, i))

    walk(workflow, ())
    return st.lists(st.tuples(st.sampled_from(paths[1:]), st.integers(0, 2), _value), min_size=1, max_size=4)


def _apply(workflow: dict[str, Any], edits: list[Any]) -> dict[str, Any]:
    w = copy.deepcopy(workflow)
    for path, op, value in edits:
        parent = w
        try:
            for key in path[:-1]:
                parent = parent[key]
            key = path[-1]
            if op == 0:
                del parent[key]
            elif op == 1:
                parent[key] = value
            else:
                parent[key] = [parent[key], value] if isinstance(parent, dict) else value
        except (KeyError, IndexError, TypeError):
            continue
    return w


@pytest.mark.parametrize("n", [300, pytest.param(1000, marks=pytest.mark.slow)])
def test_mutated_ui_workflows(dry: Any, n: int) -> None:
    workflow = api_to_workflow(tiny_prompt(), dry.registry)
    tried = []

    @settings(max_examples=n, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(_mutations(workflow))
    def check(edits: Any) -> None:
        tried.append(1)
        mutated = _apply(workflow, edits)
        with contextlib.suppress(*ACCEPTED):
            dry.run_prompt(workflow_to_api(mutated, dry.registry))

    check()
    assert len(tried) >= n


@pytest.mark.parametrize("edit", [
    (("links", 0), [float("inf"), None, False]),   # was OverflowError
    (("links", 0), [None, None, ""]),              # was ValueError
    (("nodes", 0, "properties"), [None]),          # was AttributeError
    (("nodes",), {"a": 1}),                        # was TypeError
])
def test_malformed_workflow_fields_are_one_converter_error(dry: Any, edit: Any) -> None:
    """Regressions found by the fuzzer: each raised a bare Python error out of the converter."""
    path, value = edit
    workflow = _apply(api_to_workflow(tiny_prompt(), dry.registry), [(path, 1, value)])
    with pytest.raises(MetadataError, match="malformed"):
        workflow_to_api(workflow, dry.registry)
