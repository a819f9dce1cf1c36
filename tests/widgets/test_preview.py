"""latent_to_rgb: ComfyUI's SD1.5 latent2rgb map, on numpy and torch inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from comfy_notebook.families.sd1 import SD15_LATENT
from comfy_notebook.widgets.preview import latent_preview, latent_to_rgb

SD15_LATENT_RGB_FACTORS = SD15_LATENT.rgb_factors

# ComfyUI comfy/latent_formats.py SD15.latent_rgb_factors (rows: channels; columns: R, G, B)
COMFY_SD15 = [[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350],
              [-0.2829, 0.1762, 0.2721], [-0.2120, -0.2616, -0.7177]]


def reference(latent: np.ndarray) -> np.ndarray:
    """Pixel-by-pixel loop of ComfyUI's preview: ((sum_c x_c F_ck) + 1) / 2, clamped, * 255."""
    b, c, h, w = latent.shape
    out = np.zeros((b, h, w, 3), np.uint8)
    for i in range(b):
        for y in range(h):
            for x in range(w):
                for k in range(3):
                    v = sum(float(latent[i, ch, y, x]) * COMFY_SD15[ch][k] for ch in range(c))
                    out[i, y, x, k] = round(min(max((v + 1) / 2, 0.0), 1.0) * 255)
    return out


def test_factors_are_comfyui_sd15() -> None:
    assert [list(r) for r in SD15_LATENT_RGB_FACTORS] == COMFY_SD15


@pytest.mark.parametrize("kind", ["numpy", "torch", "dict", "chw"])
def test_matches_reference(kind: str) -> None:
    rng = np.random.default_rng(0)
    latent = rng.normal(size=(2, 4, 5, 6)).astype(np.float32) * 2
    expected = reference(latent)
    value = {"numpy": latent, "torch": torch.from_numpy(latent),
             "dict": {"samples": torch.from_numpy(latent)}, "chw": latent[0]}[kind]
    got = latent_to_rgb(value)
    assert got.dtype == np.uint8
    if kind == "chw":
        expected = expected[:1]
    assert got.shape == expected.shape
    # float32 rounding at .5 boundaries may differ by one level
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
    assert (got == expected).mean() > 0.99


def test_bias_and_clamp() -> None:
    latent = np.zeros((1, 4, 1, 1), np.float32)
    assert latent_to_rgb(latent).tolist() == [[[[128, 128, 128]]]]  # (0 + 1) / 2 -> 127.5 -> 128
    assert latent_to_rgb(latent, bias=[1.0, -1.0, 5.0]).tolist() == [[[[255, 0, 255]]]]


def test_wrong_channels_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"expected a latent with 4 channels.*received shape \(1, 16, 2, 2\)"):
        latent_to_rgb(np.zeros((1, 16, 2, 2), np.float32), SD15_LATENT_RGB_FACTORS)
    with pytest.raises(ValueError, match="no latent->RGB preview factors for 7-channel latents"):
        latent_to_rgb(np.zeros((1, 7, 2, 2), np.float32))


def test_default_factors_come_from_the_latent_format() -> None:
    from comfy_notebook.families.sdxl import SDXL_LATENT

    latent = np.zeros((1, 4, 1, 1), np.float32)
    latent[0, 1] = 1.0
    want = latent_to_rgb(latent, SD15_LATENT.rgb_factors)
    assert (latent_to_rgb(latent) == want).all()  # a bare 4-channel latent: SD1.5's factors
    xl = latent_to_rgb(latent, SDXL_LATENT.rgb_factors, SDXL_LATENT.rgb_bias)
    expect = np.rint(np.clip((np.array(SDXL_LATENT.rgb_factors[1]) + SDXL_LATENT.rgb_bias + 1) / 2, 0, 1) * 255)
    assert xl[0, 0, 0].tolist() == expect.astype(np.uint8).tolist()


def test_latent_preview_upscales_first_item() -> None:
    latent = torch.randn(3, 4, 8, 4)
    img = latent_preview(latent, max_size=64)
    assert img.size == (32, 64)  # nearest x8: w 4 -> 32, h 8 -> 64
    small = np.asarray(img)[::8, ::8]
    assert (small == latent_to_rgb(latent)[0]).all()
