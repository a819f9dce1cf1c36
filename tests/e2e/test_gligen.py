"""GLIGEN end to end on tiny files in the released layout: GLIGENLoader / GLIGENTextBoxApply
with ComfyUI's conditioning layout and box arithmetic, and ComfyUI's GLIGEN example workflow
(two grounded phrases) through ``run_prompt``."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
import torch

from comfy_notebook._session import Session
from comfy_notebook.nodes import register_builtins
from comfy_notebook.testing import make_checkpoint, make_gligen


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    base = tmp_path_factory.mktemp("gligen")
    make_checkpoint(base / "models" / "checkpoints" / "tiny.safetensors", preset="sd1-tiny", seed=0)
    make_gligen(base / "models" / "gligen" / "gligen_tiny_textbox.safetensors", preset="sd1-tiny", seed=1)
    return base


def _session(root: pathlib.Path) -> Session:
    s = Session(models_dir=root, output_dir=root / "output")
    register_builtins(s)
    return s


def workflow(boxes: bool = True, x2: int = 32) -> dict[str, Any]:
    """ComfyUI_examples/gligen: two GLIGENTextBoxApply on the positive prompt (sizes shrunk)."""
    api: dict[str, Any] = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
        "2": {"class_type": "GLIGENLoader", "inputs": {"gligen_name": "gligen_tiny_textbox.safetensors"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a park", "clip": ["1", 1]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "5": {"class_type": "GLIGENTextBoxApply", "inputs": {
            "conditioning_to": ["3", 0], "clip": ["1", 1], "gligen_textbox_model": ["2", 0], "text": "a red ball",
            "width": 24, "height": 32, "x": 0, "y": 8}},
        "6": {"class_type": "GLIGENTextBoxApply", "inputs": {
            "conditioning_to": ["5", 0], "clip": ["1", 1], "gligen_textbox_model": ["2", 0], "text": "a dog",
            "width": 32, "height": 24, "x": x2, "y": 40}},
        "7": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "8": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": 9, "steps": 3, "cfg": 6.0, "sampler_name": "euler", "scheduler": "normal",
            "positive": ["6", 0] if boxes else ["3", 0], "negative": ["4", 0], "latent_image": ["7", 0],
            "denoise": 1.0}},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["1", 2]}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "gligen"}},
    }
    return api


def test_textbox_conditioning_and_objects(root: pathlib.Path) -> None:
    s = _session(root)
    out = s.run_prompt(workflow(), targets=["6", "3"]).outputs
    (cond, opts), = out["6"][0]
    kind, gligen, params = opts["gligen"]
    assert kind == "position" and len(params) == 2
    assert [p[1:] for p in params] == [(4, 3, 1, 0), (3, 4, 5, 4)]  # (h, w, y, x) in latent pixels
    assert torch.equal(cond, out["3"][0][0][0])  # the prompt itself is untouched
    objs = gligen.objects(params, (1, 4, 8, 8), "cpu")
    boxes = torch.zeros(1, 30, 4)
    boxes[0, 0] = torch.tensor([0 / 8, 1 / 8, 3 / 8, 5 / 8])  # x1, y1, x2, y2 as ComfyUI's set_position
    boxes[0, 1] = torch.tensor([4 / 8, 5 / 8, 8 / 8, 8 / 8])
    masks = torch.zeros(1, 30)
    masks[0, :2] = 1
    phrases = torch.zeros(1, 30, params[0][0].shape[-1])
    phrases[0, 0], phrases[0, 1] = params[0][0].reshape(-1), params[1][0].reshape(-1)
    with torch.no_grad(), gligen.hold():  # the manager holds the weights: on the device while held
        model = gligen.on("cpu", torch.float32)
        torch.testing.assert_close(objs, model.position_net(boxes, masks, phrases), rtol=0, atol=1e-6)
    assert gligen.ref is not None and f"gligen:{gligen.name}" in s.models


def test_gligen_example_workflow(root: pathlib.Path) -> None:
    s = _session(root)
    result = s.run_prompt(workflow())
    assert {"1", "2", "5", "6", "8", "9", "10"} <= set(result.outputs)
    image = result.outputs["9"][0]
    assert image.shape == (1, 64, 64, 3) and torch.isfinite(image).all()
    again = _session(root).run_prompt(workflow(), targets=["9"]).outputs["9"][0]
    assert torch.equal(image, again)  # deterministic
    plain = s.run_prompt(workflow(boxes=False), targets=["9"]).outputs["9"][0]
    moved = s.run_prompt(workflow(x2=0), targets=["9"]).outputs["9"][0]
    assert not torch.equal(image, plain) and not torch.equal(image, moved)


def test_wrong_file_is_refused(root: pathlib.Path, tmp_path: pathlib.Path) -> None:
    from comfy_notebook.errors import UnsupportedModelError
    from comfy_notebook.runtime.gligen import load_gligen_value

    with pytest.raises(UnsupportedModelError, match="no GLIGEN model"):
        load_gligen_value(root / "models" / "checkpoints" / "tiny.safetensors")


@pytest.mark.gpu
def test_gligen_on_cuda(root: pathlib.Path) -> None:
    """The fusers and object tokens follow the UNet to the device and its half dtype."""
    from comfy_notebook.runtime.devices import DevicePolicy
    from comfy_notebook.runtime.manager import ModelManager

    s = _session(root)
    s.services.models = ModelManager(DevicePolicy.cuda(0))
    image = s.run_prompt(workflow(), targets=["9"]).outputs["9"][0]
    plain = s.run_prompt(workflow(boxes=False), targets=["9"]).outputs["9"][0]
    cpu = _session(root).run_prompt(workflow(), targets=["9"]).outputs["9"][0]
    assert torch.isfinite(image).all() and not torch.equal(image, plain)
    assert (image - cpu).abs().max() <= 0.05


def test_the_model_manager_holds_the_gligen_weights(root: pathlib.Path) -> None:
    """GLIGENLoader registers the weights with the manager (listed, counted, unloadable); a run
    after an unload rereads the file and gives the same image."""
    s = _session(root)
    first = s.run_prompt(workflow(), targets=["9"]).outputs["9"][0]
    gligen = s.run_prompt(workflow(), targets=["2"]).outputs["2"][0]
    info = {i.name: i for i in s.models.list()}["gligen:gligen_tiny_textbox"]
    assert info.kind == "gligen" and info.bytes > 0
    assert all(p.is_meta for p in gligen.model.parameters())  # the value itself holds no weights
    s.models.unload_all()
    api = workflow()
    api["8"]["inputs"]["seed"] = 10
    reread = s.run_prompt(api, targets=["9"]).outputs["9"][0]
    assert torch.equal(reread, _session(root).run_prompt(api, targets=["9"]).outputs["9"][0])
    assert not torch.equal(reread, first)
