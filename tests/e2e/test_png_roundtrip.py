"""Issue #8: a saved PNG carries its prompt; reading it back and running it in a fresh session
gives the same pixels, and the ``workflow`` chunk converts back to the same API prompt."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import comfy_notebook
from comfy_notebook._session import Session
from comfy_notebook.demo import default_prompt
from comfy_notebook.nodes import register_builtins
from comfy_notebook.pnginfo import read_workflow, workflow_to_api
from comfy_notebook.testing import make_checkpoint

CKPT = "tiny.safetensors"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    base = tmp_path_factory.mktemp("comfy")
    make_checkpoint(base / "models" / "checkpoints" / CKPT, preset="sd1-tiny", seed=0)
    return base


def new_session(root: pathlib.Path, out: str) -> Session:
    s = Session(models_dir=root, output_dir=root / out)
    register_builtins(s)
    return s


def saved_png(root: pathlib.Path, out: str, result: Any, node: str = "9") -> pathlib.Path:
    (entry,) = result.ui[node]["images"]
    return root / out / entry["subfolder"] / entry["filename"]


def pixels(path: pathlib.Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.array(img)


@pytest.fixture(scope="module")
def first(root: pathlib.Path) -> tuple[dict[str, Any], pathlib.Path, torch.Tensor]:
    api = default_prompt()
    api["4"]["inputs"]["ckpt_name"] = CKPT
    api["5"]["inputs"].update(width=64, height=64)
    api["3"]["inputs"].update(steps=4, sampler_name="dpmpp_2m", scheduler="karras")
    api["9"]["inputs"]["filename_prefix"] = "roundtrip/img"
    result = new_session(root, "out1").run_prompt(api)
    return api, saved_png(root, "out1", result), result.outputs["8"][0]


def test_read_prompt_and_rerun_in_a_fresh_session_gives_identical_pixels(
        root: pathlib.Path, first: tuple[dict[str, Any], pathlib.Path, torch.Tensor]) -> None:
    api, png, image = first
    assert png.parent.name == "roundtrip" and png.name == "img_00001_.png"
    read = comfy_notebook.read_prompt(png)
    assert read == api
    again = new_session(root, "out2").run_prompt(read)
    assert torch.equal(again.outputs["8"][0], image)  # bit for bit on the CPU
    png2 = saved_png(root, "out2", again)
    assert np.array_equal(pixels(png2), pixels(png))
    # the second PNG carries the same prompt again
    assert comfy_notebook.read_prompt(png2) == api


def test_workflow_chunk_is_comfyui_ui_format_and_converts_back(
        root: pathlib.Path, first: tuple[dict[str, Any], pathlib.Path, torch.Tensor]) -> None:
    api, png, _ = first
    with Image.open(png) as img:
        keys = list(img.text)
        workflow = json.loads(img.text["workflow"])
    assert keys[:2] == ["prompt", "workflow"]
    assert read_workflow(png) == workflow
    # UI format: nodes with widgets_values and typed sockets, links as 6-element lists
    assert {"last_node_id", "last_link_id", "nodes", "links", "version"} <= workflow.keys()
    by_type = {n["type"]: n for n in workflow["nodes"]}
    assert set(by_type) == {v["class_type"] for v in api.values()}
    ks = by_type["KSampler"]
    # seed is followed by its control_after_generate value, as the web UI saves it
    assert ks["widgets_values"][0] == api["3"]["inputs"]["seed"]
    assert ks["widgets_values"][2:] == [4, 8, "dpmpp_2m", "karras", 1]
    assert len(workflow["links"]) == 9 and all(len(link) == 6 for link in workflow["links"])
    types = {link[5] for link in workflow["links"]}
    assert types == {"MODEL", "CLIP", "VAE", "CONDITIONING", "LATENT", "IMAGE"}
    s = new_session(root, "out3")
    back = workflow_to_api(workflow, s.registry)
    assert {k: (v["class_type"], v["inputs"]) for k, v in back.items()} == {
        k: (v["class_type"], v["inputs"]) for k, v in api.items()}


def test_a_workflow_prompt_runs_to_the_same_image(
        root: pathlib.Path, first: tuple[dict[str, Any], pathlib.Path, torch.Tensor]) -> None:
    _, png, image = first
    s = new_session(root, "out4")
    api = workflow_to_api(read_workflow(png), s.registry)
    assert torch.equal(s.run_prompt(api).outputs["8"][0], image)
