"""Post-processing nodes against torch / PIL references of ComfyUI's formulas
(comfy_extras/nodes_post_processing.py at Comfy-Org/ComfyUI@a125cd8)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from comfy_notebook.nodes import postprocessing as pp


def _img(b: int = 1, h: int = 9, w: int = 11, c: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, h, w, c, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("mode", ["normal", "multiply", "screen", "overlay", "soft_light", "difference"])
def test_blend_modes(mode: str) -> None:
    a, b = _img(), _img(seed=1)
    (out,) = pp.ImageBlend().blend_images(a, b, 0.3, mode)
    if mode == "normal":
        blended = b
    elif mode == "multiply":
        blended = a * b
    elif mode == "screen":
        blended = 1 - (1 - a) * (1 - b)
    elif mode == "overlay":
        blended = torch.where(a <= 0.5, 2 * a * b, 1 - 2 * (1 - a) * (1 - b))
    elif mode == "soft_light":
        g = torch.where(a <= 0.25, ((16 * a - 12) * a + 4) * a, a.sqrt())
        blended = torch.where(b <= 0.5, a - (1 - 2 * b) * a * (1 - a), a + (2 * b - 1) * (g - a))
    else:
        blended = a - b
    assert torch.allclose(out, (a * 0.7 + blended * 0.3).clamp(0, 1), atol=1e-6)


def test_blend_resizes_image2_bicubic_center() -> None:
    a, b = _img(h=8, w=8), _img(h=4, w=6, seed=2)
    (out,) = pp.ImageBlend().blend_images(a, b, 1.0, "normal")
    crop = b.permute(0, 3, 1, 2)[:, :, :, 1:5]  # centre crop 6 -> 4 wide for a square target
    ref = F.interpolate(crop, size=(8, 8), mode="bicubic").permute(0, 2, 3, 1).clamp(0, 1)
    assert torch.allclose(out, ref, atol=1e-6)


def _gauss(k: int, sigma: float) -> torch.Tensor:
    ax = np.linspace(-1, 1, k)
    xx, yy = np.meshgrid(ax, ax, indexing="ij")
    g = np.exp(-(xx ** 2 + yy ** 2) / (2 * sigma ** 2))
    return torch.tensor(g / g.sum(), dtype=torch.float32)


def _conv_ref(image: torch.Tensor, kernel: torch.Tensor, r: int) -> torch.Tensor:
    """Direct loop reference: reflect-pad by r, then by k//2 zeros, correlate, crop r."""
    x = F.pad(image.permute(0, 3, 1, 2), (r,) * 4, "reflect")
    k = kernel.shape[0]
    x = F.pad(x, (k // 2,) * 4)
    b, c, h, w = x.shape
    out = torch.zeros(b, c, h - 2 * (k // 2), w - 2 * (k // 2))
    for i in range(k):
        for j in range(k):
            out += kernel[i, j] * x[:, :, i:i + out.shape[2], j:j + out.shape[3]]
    return out[:, :, r:-r, r:-r].permute(0, 2, 3, 1)


def test_blur_and_sharpen() -> None:
    image = _img(h=12, w=10)
    (blur,) = pp.ImageBlur().blur(image, 2, 0.7)
    assert torch.allclose(blur, _conv_ref(image, _gauss(5, 0.7), 2), atol=1e-5)
    (sharp,) = pp.ImageSharpen().sharpen(image, 1, 1.0, 0.5)
    kernel = _gauss(3, 1.0) * -5.0
    kernel[1, 1] = kernel[1, 1] - kernel.sum() + 1.0
    assert torch.allclose(sharp, _conv_ref(image, kernel, 1).clamp(0, 1), atol=1e-5)


@pytest.mark.parametrize("dither", ["none", "floyd-steinberg", "bayer-2", "bayer-4"])
def test_quantize_matches_pil(dither: str) -> None:
    image = _img(b=2, h=16, w=16)
    (out,) = pp.ImageQuantize().quantize(image, 6, dither)
    for b in range(2):
        im = Image.fromarray((image[b] * 255).to(torch.uint8).numpy(), mode="RGB")
        pal = im.quantize(colors=6)
        if dither == "none":
            q = im.quantize(palette=pal, dither=Image.Dither.NONE)
        elif dither == "floyd-steinberg":
            q = im.quantize(palette=pal, dither=Image.Dither.FLOYDSTEINBERG)
        else:
            n = int(math.log2(int(dither.split("-")[1])))
            bayer = np.zeros((1, 1))
            for level in range(1, n + 1):
                q4 = 4 ** level
                mm = q4 * bayer
                bayer = np.block([[mm - 1.5, mm + 0.5], [mm + 1.5, mm - 0.5]]) / q4
            spread = 2 * 256 / (len(pal.getpalette()) // 3)
            px = np.array(im).astype(np.float32)
            th = np.tile(spread * bayer + 0.5, (px.shape[0] // bayer.shape[0] + 1, px.shape[1] // bayer.shape[1] + 1))
            px = np.clip(px + th[:px.shape[0], :px.shape[1], None], 0, 255).astype(np.uint8)
            q = Image.fromarray(px).quantize(palette=pal, dither=Image.Dither.NONE)
        ref = torch.tensor(np.array(q.convert("RGB"))).float() / 255
        assert torch.equal(out[b], ref)
        assert len(torch.unique(out[b].reshape(-1, 3), dim=0)) <= 6


def test_scale_to_total_pixels() -> None:
    image = _img(h=30, w=40)
    (out,) = pp.ImageScaleToTotalPixels().upscale(image, "bilinear", 0.01)
    scale = math.sqrt(int(0.01 * 1024 * 1024) / (30 * 40))
    h, w = round(30 * scale), round(40 * scale)
    assert out.shape == (1, h, w, 3)
    ref = F.interpolate(image.movedim(-1, 1), size=(h, w), mode="bilinear").movedim(1, -1)
    assert torch.equal(out, ref)
