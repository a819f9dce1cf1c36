"""T2I-Adapter style model through ``run_prompt``: CLIPVisionLoader / CLIPVisionEncode ->
StyleModelLoader / StyleModelApply on an SD1 prompt (ComfyUI's style-model workflow, sizes
shrunk): the entry gains the adapter's 8 tokens, scaled by strength; the image follows them."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
import torch

from comfy_notebook._session import Session
from comfy_notebook.nodes import register_builtins
from comfy_notebook.testing import (
    make_checkpoint,
    make_clip_vision,
    make_masked_image,
    make_style_model,
)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    base = tmp_path_factory.mktemp("style")
    make_checkpoint(base / "models" / "checkpoints" / "tiny.safetensors", preset="sd1-tiny", seed=0)
    make_clip_vision(base / "models" / "clip_vision" / "vision.safetensors", seed=1, layout="openclip")
    make_style_model(base / "models" / "style_models" / "style.safetensors", width=64, context_dim=64, seed=2)
    make_masked_image(base / "input" / "style.png", seed=3)
    return base


def workflow(strength: float = 1.0, styled: bool = True) -> dict[str, Any]:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
        "2": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "vision.safetensors"}},
        "3": {"class_type": "StyleModelLoader", "inputs": {"style_model_name": "style.safetensors"}},
        "4": {"class_type": "LoadImage", "inputs": {"image": "style.png"}},
        "5": {"class_type": "CLIPVisionEncode", "inputs": {"clip_vision": ["2", 0], "image": ["4", 0], "crop": "center"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a house", "clip": ["1", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "8": {"class_type": "StyleModelApply", "inputs": {
            "conditioning": ["6", 0], "style_model": ["3", 0], "clip_vision_output": ["5", 0],
            "strength": strength, "strength_type": "multiply"}},
        "9": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "10": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": 1, "steps": 3, "cfg": 6.0, "sampler_name": "euler", "scheduler": "normal",
            "positive": ["8", 0] if styled else ["6", 0], "negative": ["7", 0], "latent_image": ["9", 0],
            "denoise": 1.0}},
        "11": {"class_type": "VAEDecode", "inputs": {"samples": ["10", 0], "vae": ["1", 2]}},
    }


def test_style_tokens_are_appended(root: pathlib.Path) -> None:
    s = Session(models_dir=root, output_dir=root / "output")
    register_builtins(s)
    out = s.run_prompt(workflow(0.5), targets=["8", "6", "5", "3"]).outputs
    (styled, _), = out["8"][0]
    (text, _), = out["6"][0]
    tokens = out["3"][0].get_cond(out["5"][0])
    assert styled.shape == (1, text.shape[1] + 8, text.shape[2]) and tokens.shape == (1, 8, 64)
    assert torch.equal(styled[:, :text.shape[1]], text)
    torch.testing.assert_close(styled[:, text.shape[1]:], 0.5 * tokens, rtol=0, atol=1e-6)


def test_style_workflow_runs_and_steers(root: pathlib.Path) -> None:
    s = Session(models_dir=root, output_dir=root / "output")
    register_builtins(s)
    image = s.run_prompt(workflow(), targets=["11"]).outputs["11"][0]
    assert image.shape == (1, 64, 64, 3) and torch.isfinite(image).all()
    assert torch.equal(image, s.run_prompt(workflow(), targets=["11"]).outputs["11"][0])
    plain = s.run_prompt(workflow(styled=False), targets=["11"]).outputs["11"][0]
    assert not torch.equal(image, plain)
