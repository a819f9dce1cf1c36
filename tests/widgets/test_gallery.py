"""Gallery: images from tensors / arrays / PIL / handles / PromptResults, metadata, save, text."""

from __future__ import annotations

import base64
import io
import json
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from comfy_notebook.widgets._meta import prompt_metadata
from comfy_notebook.widgets.gallery import Gallery


def decode(url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


def test_metadata_walks_up_to_sampler_and_loader(sd_prompt: dict[str, Any]) -> None:
    assert prompt_metadata(sd_prompt, "9") == {
        "seed": 42, "steps": 20, "cfg": 8.0, "sampler": "euler", "scheduler": "normal",
        "checkpoint": "tiny.safetensors"}
    assert prompt_metadata(None) == {}
    # nearest sampler wins (hires-fix shape), seeds through a primitive node are resolved
    p = json.loads(json.dumps(sd_prompt))
    p["10"] = {"class_type": "PrimitiveInt", "inputs": {"value": 7}}
    p["11"] = {"class_type": "KSamplerAdvanced", "inputs": {
        "noise_seed": ["10", 0], "steps": 9, "cfg": 3.5, "sampler_name": "dpmpp_2m",
        "scheduler": "karras", "model": ["4", 0], "latent_image": ["3", 0]}}
    p["12"] = {"class_type": "VAEDecode", "inputs": {"samples": ["11", 0], "vae": ["4", 2]}}
    assert prompt_metadata(p, "12") == {
        "seed": 7, "steps": 9, "cfg": 3.5, "sampler": "dpmpp_2m", "scheduler": "karras",
        "checkpoint": "tiny.safetensors"}
    assert prompt_metadata(p, "8")["seed"] == 42


def test_images_of_every_kind() -> None:
    batch = torch.rand(2, 8, 6, 3)
    arr = (np.arange(48 * 3) % 256).astype(np.uint8).reshape(8, 6, 3)
    pil = Image.fromarray(arr)
    handle = SimpleNamespace(value=batch[:1], to_api=lambda: {"1": {"class_type": "KSampler",
                                                                    "inputs": {"seed": 3}}})
    g = Gallery(batch, label="first")
    g.add([arr, pil])
    g.add(handle)
    assert [i["run"] for i in g.items] == [1, 1, 2, 2, 3]
    assert [i["label"] for i in g.items] == ["first", "first", "run 2", "run 2", "run 3"]
    assert g.items[4]["meta"] == {"seed": 3} and json.loads(g.items[4]["prompt"])["1"]["inputs"]
    np.testing.assert_array_equal(g.image(2), arr)
    np.testing.assert_array_equal(g.image(3), arr)
    np.testing.assert_array_equal(g.image(0), np.rint(batch[0].numpy() * 255).astype(np.uint8))
    for item in g.items:
        assert decode(item["thumb"]).shape[:2] == (8, 6)
    with pytest.raises(ValueError, match=r"expected an IMAGE batch \[B,H,W,C\].*\(1, 4, 8, 8\)"):
        g.add(torch.zeros(1, 4, 8, 8))


def test_thumbnails_are_small_and_click_gives_full_size() -> None:
    big = np.random.default_rng(1).integers(0, 255, (300, 200, 3), dtype=np.uint8)
    g = Gallery(big, thumb_size=64)
    assert decode(g.items[0]["thumb"]).shape[:2] == (64, 43)
    assert g.full == ""
    g.selected = 0  # what the JS does on click
    np.testing.assert_array_equal(decode(g.full)[:, :, :3], big)
    g.selected = -1
    assert g.full == ""


def test_add_result_uses_output_node_inputs(sd_prompt: dict[str, Any]) -> None:
    images = torch.rand(2, 8, 8, 3)
    result = SimpleNamespace(prompt_id="abc", outputs={"8": (images,), "9": (), "3": ({},)})
    g = Gallery()
    g.add_result(result, sd_prompt)
    assert len(g.items) == 2 and g.items[0]["label"] == "run abc"
    assert g.items[1]["meta"]["seed"] == 42 and g.items[1]["meta"]["checkpoint"] == "tiny.safetensors"
    # without an output node: every IMAGE-shaped output
    g.add_result(SimpleNamespace(prompt_id="x", outputs={"8": (images[:1],)}),
                 {"8": sd_prompt["8"], "3": sd_prompt["3"]})
    assert len(g.items) == 3 and g.items[2]["meta"]["steps"] == 20


def test_save_button_writes_png_with_prompt(tmp_path: Any, sd_prompt: dict[str, Any]) -> None:
    img = np.random.default_rng(2).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    g = Gallery(img, prompt=sd_prompt, node_id="9", output_dir=tmp_path)
    g._handle_custom_msg({"action": "save", "index": 0}, [])
    files = sorted(tmp_path.glob("*.png"))
    assert g.message == f"saved {files[0]}"
    with Image.open(files[0]) as saved:
        assert json.loads(saved.info["prompt"]) == sd_prompt
        np.testing.assert_array_equal(np.asarray(saved), img)
    second = g.save(0)
    assert second != files[0] and second.exists()
    g._handle_custom_msg({"action": "save", "index": 5}, [])
    assert g.message.startswith("save failed: IndexError")


def test_text_and_mimebundle(sd_prompt: dict[str, Any]) -> None:
    g = Gallery(torch.rand(1, 4, 5, 3), prompt=sd_prompt, node_id="9")
    expected = ("Gallery: 1 image(s) in 1 run(s)\n  [0] run 1: 5x4 seed=42 steps=20 cfg=8.0 "
                "sampler=euler scheduler=normal checkpoint=tiny.safetensors")
    assert g.text() == expected
    data, _ = g._repr_mimebundle_()
    assert data["text/plain"] == expected
    g.clear()
    assert g.items == [] and g.text() == "Gallery: 0 image(s) in 0 run(s)"
