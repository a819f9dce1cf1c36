"""End-to-end img2img and inpainting through ``Session.run_prompt`` on a tiny SD1 checkpoint.

The input is a 64x64 RGBA PNG in ``input/`` whose left half is transparent: ``LoadImage``
gives its RGB as IMAGE and ``1 - alpha`` as MASK (ComfyUI's rule), so the mask covers the left
half (latent columns 0..3 of 8).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from comfy_notebook._session import Session
from comfy_notebook.nodes import register_builtins
from comfy_notebook.testing import make_checkpoint, make_masked_image

CKPT = "tiny.safetensors"


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Session:
    root = tmp_path_factory.mktemp("comfy")
    make_checkpoint(root / "models" / "checkpoints" / CKPT, preset="sd1-tiny", seed=0)
    make_masked_image(root / "input" / "photo.png")  # the transparent left half is the mask
    s = Session(models_dir=root, output_dir=root / "output")  # a ComfyUI root: input/ is used
    register_builtins(s)
    return s


def base_prompt(denoise: float = 1.0, steps: int = 4, seed: int = 5) -> dict[str, Any]:
    """LoadImage -> VAEEncode -> KSampler (node "3")."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a cat", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "10": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
        "11": {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}},
        "3": {"class_type": "KSampler", "inputs": {
            "model": ["4", 0], "seed": seed, "steps": steps, "cfg": 7.0, "sampler_name": "euler",
            "scheduler": "normal", "positive": ["6", 0], "negative": ["7", 0],
            "latent_image": ["11", 0], "denoise": denoise}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    }


def samples(result: Any, node: str) -> torch.Tensor:
    return result.outputs[node][0]["samples"]


def test_load_image_mask_is_one_minus_alpha(session: Session) -> None:
    api = {"10": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}}}
    image, mask = session.run_prompt(api, targets=["10"]).outputs["10"]
    assert image.shape == (1, 64, 64, 3) and mask.shape == (1, 64, 64)
    assert torch.equal(mask[:, :, :32], torch.ones(1, 64, 32))
    assert torch.equal(mask[:, :, 32:], torch.zeros(1, 64, 32))


def test_img2img_half_denoise_runs_and_differs_from_full(session: Session) -> None:
    half = session.run_prompt(base_prompt(0.5), targets=["8"])
    full = session.run_prompt(base_prompt(1.0), targets=["8"])
    assert half.outputs["8"][0].shape == (1, 64, 64, 3)
    assert not torch.allclose(samples(half, "3"), samples(full, "3"))
    assert not torch.allclose(half.outputs["8"][0], full.outputs["8"][0])


def test_img2img_denoise_is_the_tail_of_a_longer_schedule(session: Session) -> None:
    # ComfyUI's rule: denoise d with n steps samples the last n+1 sigmas of an int(n/d)-step
    # schedule, starting from noise * sigma + latent; KSamplerAdvanced starting at step
    # int(n/d) - n of that schedule does exactly the same
    api = base_prompt(0.5, steps=4)
    api["20"] = {"class_type": "KSamplerAdvanced", "inputs": {
        "model": ["4", 0], "add_noise": "enable", "noise_seed": 5, "steps": 8, "cfg": 7.0,
        "sampler_name": "euler", "scheduler": "normal", "positive": ["6", 0], "negative": ["7", 0],
        "latent_image": ["11", 0], "start_at_step": 4, "end_at_step": 10000,
        "return_with_leftover_noise": "disable"}}
    result = session.run_prompt(api, targets=["3", "20"])
    assert torch.equal(samples(result, "3"), samples(result, "20"))


def test_denoise_zero_returns_the_input_latent_unchanged(session: Session) -> None:
    # ComfyUI: denoise <= 0 gives an empty sigma list, and sampling returns the latent as is
    result = session.run_prompt(base_prompt(0.0), targets=["3", "11"])
    assert torch.equal(samples(result, "3"), samples(result, "11"))


def _inpaint(api: dict[str, Any], latent: list[Any]) -> dict[str, Any]:
    api["3"]["inputs"]["latent_image"] = latent
    return api


def _check_inpainted(out: torch.Tensor, original: torch.Tensor) -> None:
    keep = (slice(None), slice(None), slice(None), slice(4, 8))  # right half: not masked
    masked = (slice(None), slice(None), slice(None), slice(0, 4))
    # As ComfyUI's KSamplerX0Inpaint: outside the mask the denoised prediction is the original
    # (scaled) latent at every step, so the last euler step lands on it up to float rounding
    # (x + (x - x0) / sigma * (0 - sigma), then the / 0.18215 of process_latent_out); measured
    # max |diff| 6e-8 on latents of size ~1.4, not bit-exact.
    torch.testing.assert_close(out[keep], original[keep], rtol=1e-6, atol=1e-6)
    assert float((out[masked] - original[masked]).abs().max()) > 1e-2


def test_set_latent_noise_mask_keeps_the_unmasked_region(session: Session) -> None:
    api = _inpaint(base_prompt(1.0), ["12", 0])
    api["12"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["11", 0], "mask": ["10", 1]}}
    result = session.run_prompt(api, targets=["3", "10", "11", "12"])
    assert torch.equal(result.outputs["12"][0]["noise_mask"].reshape(1, 64, 64), result.outputs["10"][1])
    _check_inpainted(samples(result, "3"), samples(result, "11"))
    # without the mask the right half changes too
    plain = samples(session.run_prompt(base_prompt(1.0), targets=["3"]), "3")
    assert float((plain[..., 4:] - samples(result, "11")[..., 4:]).abs().max()) > 1e-2


def test_vae_encode_for_inpaint_keeps_the_unmasked_region(session: Session) -> None:
    api = _inpaint(base_prompt(1.0), ["13", 0])
    api["13"] = {"class_type": "VAEEncodeForInpaint", "inputs": {
        "pixels": ["10", 0], "vae": ["4", 2], "mask": ["10", 1], "grow_mask_by": 0}}
    result = session.run_prompt(api, targets=["3", "13"])
    encoded = result.outputs["13"][0]
    mask = encoded["noise_mask"]  # [1, 1, 64, 64] pixel mask, rounded
    assert mask.shape == (1, 1, 64, 64)
    assert torch.equal(mask[..., :32], torch.ones(1, 1, 64, 32)) and not mask[..., 32:].any()
    _check_inpainted(samples(result, "3"), encoded["samples"])
    # the masked pixels were greyed before encoding: the latent differs from a plain encode
    plain = samples(session.run_prompt(base_prompt(), targets=["11"]), "11")
    assert not torch.allclose(encoded["samples"], plain)


def test_vae_encode_for_inpaint_grows_the_mask(session: Session) -> None:
    api = {**base_prompt(), "13": {"class_type": "VAEEncodeForInpaint", "inputs": {
        "pixels": ["10", 0], "vae": ["4", 2], "mask": ["10", 1], "grow_mask_by": 6}}}
    mask = session.run_prompt(api, targets=["13"]).outputs["13"][0]["noise_mask"]
    # a 6x6 box filter with padding 3 grows the left half by 3 columns (ComfyUI's kernel)
    assert torch.equal(mask[0, 0, :, :35], torch.ones(64, 35))
    assert not mask[0, 0, :, 35:].any()
