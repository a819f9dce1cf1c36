"""ComfyUI's published upscale workflows through ``Session.run_prompt`` on tiny files:
the ESRGAN example (txt2img -> ImageUpscaleWithModel), the two-pass hires fix
(KSampler -> LatentUpscale -> KSampler at denoise 0.5) and its upscale-model variant
(decode -> ImageUpscaleWithModel -> ImageScale -> VAEEncode -> KSampler at denoise 0.5)."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
import torch

from comfy_notebook._session import Session
from comfy_notebook.nodes import register_builtins
from comfy_notebook.runtime.upscale import import_spandrel
from comfy_notebook.testing import make_checkpoint, make_esrgan

CKPT, UPSCALER = "tiny.safetensors", "RealESRGAN_x4plus.pth"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    base = tmp_path_factory.mktemp("comfy")
    make_checkpoint(base / "models" / "checkpoints" / CKPT, preset="sd1-tiny", seed=0)
    make_esrgan(base / "models" / "upscale_models" / UPSCALER, layout="realesrgan", seed=1)
    return base


def session(root: pathlib.Path) -> Session:
    s = Session(models_dir=root, output_dir=root / "output")
    register_builtins(s)
    return s


def txt2img() -> dict[str, Any]:
    """The default graph at 64x64 px, 3 euler steps (ComfyUI's node ids)."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a castle on a hill", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {
            "model": ["4", 0], "seed": 5, "steps": 3, "cfg": 7.0, "sampler_name": "euler",
            "scheduler": "normal", "positive": ["6", 0], "negative": ["7", 0],
            "latent_image": ["5", 0], "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    }


def esrgan_example() -> dict[str, Any]:
    api = txt2img()
    api["13"] = {"class_type": "UpscaleModelLoader", "inputs": {"model_name": UPSCALER}}
    api["14"] = {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["13", 0], "image": ["8", 0]}}
    api["9"] = {"class_type": "SaveImage", "inputs": {"images": ["14", 0], "filename_prefix": "ComfyUI"}}
    return api


def second_pass(api: dict[str, Any], latent: list[Any]) -> dict[str, Any]:
    api["11"] = {"class_type": "KSampler", "inputs": {
        "model": ["4", 0], "seed": 7, "steps": 4, "cfg": 7.0, "sampler_name": "euler",
        "scheduler": "normal", "positive": ["6", 0], "negative": ["7", 0],
        "latent_image": latent, "denoise": 0.5}}
    api["12"] = {"class_type": "VAEDecode", "inputs": {"samples": ["11", 0], "vae": ["4", 2]}}
    api["9"] = {"class_type": "SaveImage", "inputs": {"images": ["12", 0], "filename_prefix": "hires"}}
    return api


def hires_latent(method: str = "nearest-exact") -> dict[str, Any]:
    api = txt2img()
    api["10"] = {"class_type": "LatentUpscale", "inputs": {
        "samples": ["3", 0], "upscale_method": method, "width": 96, "height": 96, "crop": "disabled"}}
    return second_pass(api, ["10", 0])


def hires_model() -> dict[str, Any]:
    api = txt2img()
    api["13"] = {"class_type": "UpscaleModelLoader", "inputs": {"model_name": UPSCALER}}
    api["14"] = {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["13", 0], "image": ["8", 0]}}
    api["15"] = {"class_type": "ImageScale", "inputs": {
        "image": ["14", 0], "upscale_method": "bilinear", "width": 128, "height": 128, "crop": "disabled"}}
    api["16"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["15", 0], "vae": ["4", 2]}}
    return second_pass(api, ["16", 0])


def test_esrgan_example_matches_direct_spandrel(root: pathlib.Path) -> None:
    s = session(root)
    events: list[Any] = []
    s.subscribe(events.append)
    result = s.run_prompt(esrgan_example())
    assert {"13", "14", "9"} <= result.executed
    ticks = [(e.value, e.total) for e in events if type(e).__name__ == "NodeProgress" and e.node_id == "14"]
    assert ticks == [(1, 1)]  # 64 px fits one 512 px tile
    up = result.outputs["14"][0]
    base = result.outputs["8"][0]
    assert up.shape == (1, 256, 256, 3)
    direct = import_spandrel().ModelLoader().load_from_file(
        str(root / "models" / "upscale_models" / UPSCALER)).eval()
    with torch.inference_mode():
        ref = direct(base.movedim(-1, 1)).clamp(0, 1).movedim(1, -1)
    assert torch.equal(up, ref)
    saved = result.ui["9"]["images"][0]
    assert (root / "output" / saved["subfolder"] / saved["filename"]).is_file()
    again = session(root).run_prompt(esrgan_example())
    assert torch.equal(again.outputs["14"][0], up)  # deterministic across sessions
    rerun = s.run_prompt(esrgan_example())
    assert "14" in rerun.cached and "14" not in rerun.executed


@pytest.mark.parametrize("method", ["nearest-exact", "bislerp"])
def test_hires_fix_latent_upscale(root: pathlib.Path, method: str) -> None:
    result = session(root).run_prompt(hires_latent(method))
    assert {"3", "10", "11", "12"} <= result.executed
    assert result.outputs["10"][0]["samples"].shape == (1, 4, 12, 12)
    image = result.outputs["12"][0]
    assert image.shape == (1, 96, 96, 3)
    assert torch.equal(session(root).run_prompt(hires_latent(method)).outputs["12"][0], image)


def test_hires_fix_with_upscale_model(root: pathlib.Path) -> None:
    s = session(root)
    result = s.run_prompt(hires_model())
    assert {"13", "14", "15", "16", "11", "12"} <= result.executed
    assert result.outputs["14"][0].shape == (1, 256, 256, 3)
    assert result.outputs["16"][0]["samples"].shape == (1, 4, 16, 16)
    image = result.outputs["12"][0]
    assert image.shape == (1, 128, 128, 3)
    assert torch.equal(session(root).run_prompt(hires_model()).outputs["12"][0], image)
    # the upscale model is one managed model among the checkpoint's parts
    kinds = {i.kind for i in s.models.list()}
    assert "upscale" in kinds
