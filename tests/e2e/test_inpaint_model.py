"""End to end: an SD1 inpainting checkpoint (UNet ``input_blocks.0.0.weight`` [C, 9, 3, 3]).

A tiny random-weight checkpoint with a 9-input-channel UNet is detected and loaded, and
``LoadImage`` (RGBA PNG, mask = 1 - alpha on the left half) -> ``InpaintModelConditioning`` ->
``KSampler`` -> ``VAEDecode`` runs through ``Session.run_prompt``, as in ComfyUI's inpainting
workflow.  A regular 4-channel checkpoint in the same session is unaffected.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from comfy_notebook._session import Session
from comfy_notebook.families import detect
from comfy_notebook.nodes import register_builtins
from comfy_notebook.runtime.loading import open_state_dict
from comfy_notebook.testing import make_checkpoint, make_masked_image, preset_configs

INPAINT, REGULAR = "tiny-inpainting.safetensors", "tiny.safetensors"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return tmp_path_factory.mktemp("comfy")


@pytest.fixture(scope="module")
def session(root: Any) -> Session:
    unet = dataclasses.replace(preset_configs("sd1-tiny")[0], in_channels=9)
    make_checkpoint(root / "models" / "checkpoints" / INPAINT, preset="sd1-tiny", seed=0, unet=unet)
    make_checkpoint(root / "models" / "checkpoints" / REGULAR, preset="sd1-tiny", seed=0)
    make_masked_image(root / "input" / "photo.png")  # the transparent left half is the mask
    s = Session(models_dir=root, output_dir=root / "output")
    register_builtins(s)
    return s


def prompt(ckpt: str = INPAINT, noise_mask: bool = True, seed: int = 5) -> dict[str, Any]:
    """LoadImage -> InpaintModelConditioning ("12") -> KSampler ("3") -> VAEDecode ("8")."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a cat", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "10": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
        "11": {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}},
        "12": {"class_type": "InpaintModelConditioning", "inputs": {
            "positive": ["6", 0], "negative": ["7", 0], "vae": ["4", 2], "pixels": ["10", 0],
            "mask": ["10", 1], "noise_mask": noise_mask}},
        "3": {"class_type": "KSampler", "inputs": {
            "model": ["4", 0], "seed": seed, "steps": 4, "cfg": 7.0, "sampler_name": "euler",
            "scheduler": "normal", "positive": ["12", 0], "negative": ["12", 1],
            "latent_image": ["12", 2], "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    }


def samples(result: Any, node: str) -> torch.Tensor:
    return result.outputs[node][0]["samples"]


def test_nine_channel_checkpoint_is_detected_and_loads(session: Session, root: Any) -> None:
    path = root / "models" / "checkpoints" / INPAINT
    info = detect(open_state_dict(str(path)), source=str(path))
    assert info.unet is not None and info.unet.in_channels == 9 and info.unet.out_channels == 4
    api = {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": INPAINT}},
           "5": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": REGULAR}}}
    out = session.run_prompt(api, targets=["4", "5"])
    model, plain = out.outputs["4"][0], out.outputs["5"][0]
    assert (model.in_channels, model.concat_channels, model.is_inpaint) == (9, 5, True)
    assert (plain.in_channels, plain.concat_channels, plain.is_inpaint) == (4, 0, False)
    assert "inpainting UNet (9 input channels)" in model.summary()
    weight = model.run(lambda unet: unet.input_blocks[0][0].weight.shape, latent_shape=(1, 4, 8, 8))
    assert tuple(weight) == (32, 9, 3, 3)


def test_inpaint_model_conditioning_pipeline_keeps_the_unmasked_latent(session: Session) -> None:
    result = session.run_prompt(prompt(noise_mask=True), targets=["8", "11", "12"])
    image = result.outputs["8"][0]
    assert image.shape == (1, 64, 64, 3) and torch.isfinite(image).all()
    latent = result.outputs["12"][2]
    # the LATENT is the plain encode of the image, carrying the pixel mask as noise_mask
    assert torch.equal(latent["samples"], samples(result, "11"))
    assert latent["noise_mask"].shape == (1, 1, 64, 64)
    out, original = samples(result, "3"), latent["samples"]
    # outside the mask (latent columns 4..7) the result is the input latent up to float
    # rounding of the last euler step (see test_img2img_inpaint._check_inpainted)
    torch.testing.assert_close(out[..., 4:], original[..., 4:], rtol=1e-6, atol=1e-6)
    assert float((out[..., :4] - original[..., :4]).abs().max()) > 1e-2


def test_concat_inputs_reach_the_unet(session: Session) -> None:
    # noise_mask off: the whole latent is resampled; the result still depends on the masked
    # image the conditioning carries (plain text conditioning gives the blank default instead)
    with_concat = samples(session.run_prompt(prompt(noise_mask=False), targets=["3"]), "3")
    api = prompt(noise_mask=False)
    api["3"]["inputs"].update(positive=["6", 0], negative=["7", 0])
    blank = samples(session.run_prompt(api, targets=["3"]), "3")
    assert with_concat.shape == blank.shape == (1, 4, 8, 8)
    assert torch.isfinite(blank).all()
    assert float((with_concat - blank).abs().max()) > 1e-3
    # and it changes the right half too (no noise mask)
    latent = samples(session.run_prompt(api, targets=["11"]), "11")
    assert float((with_concat[..., 4:] - latent[..., 4:]).abs().max()) > 1e-2


def test_plain_txt2img_on_the_inpainting_checkpoint_runs(session: Session) -> None:
    api = prompt()
    api["13"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 2}}
    api["3"]["inputs"].update(positive=["6", 0], negative=["7", 0], latent_image=["13", 0])
    out = session.run_prompt(api, targets=["8"]).outputs["8"][0]
    assert out.shape == (2, 64, 64, 3) and torch.isfinite(out).all()


def test_regular_checkpoint_ignores_the_inpaint_conditioning(session: Session) -> None:
    # ComfyUI: a 4-channel model has no concat keys, so concat_latent_image / concat_mask in
    # the conditioning change nothing: same latent as SetLatentNoiseMask with plain conds
    api = prompt(REGULAR)
    api["14"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["11", 0], "mask": ["10", 1]}}
    api["15"] = {"class_type": "KSampler", "inputs": {
        **api["3"]["inputs"], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["14", 0]}}
    result = session.run_prompt(api, targets=["3", "15"])
    assert torch.equal(samples(result, "3"), samples(result, "15"))
