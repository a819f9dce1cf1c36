"""Wan 2.1 facts shared by the families that use its VAE (Qwen-Image, Qwen-Image-Edit).

- :data:`WAN21_LATENT`: the 16-channel latent format with per-channel mean/std normalisation
  and the latent2rgb preview factors (ComfyUI ``comfy/latent_formats.py`` ``Wan21`` at commit
  a125cd8);
- :func:`wan_vae_component` / :func:`wan_vae_prefix`: how a ``vae/qwen_image_vae.safetensors``
  file (ComfyUI's ``WanVAE`` key names, ``decoder.middle.0.residual.0.gamma``) is recognised and
  what its sizes are, read from its shapes.

ComfyUI's VAE treats an IMAGE batch as the frames of one clip for this VAE; the Qwen-Image
models take one frame per image, so here every image of a batch is its own frame and latents
stay ``[B, 16, H/8, W/8]`` (ComfyUI's ``[1, 16, 1, H/8, W/8]`` for one image, without the
time axis).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from comfy_notebook.errors import UnsupportedModelError
from comfy_notebook.families.base import Component, LatentFormat
from comfy_notebook.models.wan_vae import WanVAE, WanVAEConfig

__all__ = ["WAN21_LATENT", "WAN_VAE_DTYPES", "read_wan_vae_config", "wan_vae_component", "wan_vae_prefix"]

#: ComfyUI's working dtypes for the Wan 2.1 VAE, in preference order (bf16 first)
WAN_VAE_DTYPES = (torch.bfloat16, torch.float16, torch.float32)

_MARK = "decoder.middle.0.residual.0.gamma"
_WAN22_MARK = "decoder.upsamples.0.upsamples.0.residual.2.weight"
_PREFIXES = ("", "vae.", "first_stage_model.")

WAN21_LATENT = LatentFormat(
    name="Wan21",
    scale_factor=1.0,
    channels=16,
    downscale=8,
    latents_mean=(-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                  0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921),
    latents_std=(2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                 3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160),
    rgb_factors=(
        (-0.1299, -0.1692, 0.2932), (0.0671, 0.0406, 0.0442), (0.3568, 0.2548, 0.1747),
        (0.0372, 0.2344, 0.1420), (0.0313, 0.0189, -0.0328), (0.0296, -0.0956, -0.0665),
        (-0.3477, -0.4059, -0.2925), (0.0166, 0.1902, 0.1975), (-0.0412, 0.0267, -0.1364),
        (-0.1293, 0.0740, 0.1636), (0.0680, 0.3019, 0.1128), (0.0032, 0.0581, 0.0639),
        (-0.1251, 0.0927, 0.1699), (0.0060, -0.0633, 0.0005), (0.3477, 0.2275, 0.2950),
        (0.1984, 0.0913, 0.1861),
    ),
    rgb_bias=(-0.1835, -0.0868, -0.3360),
)


def wan_vae_prefix(sd: Mapping[str, Any]) -> str | None:
    """The key prefix of a Wan-2.1 VAE in ``sd`` (``""`` for ``vae/`` files), or None.

    Raises
    ------
    UnsupportedModelError
        The file holds the Wan 2.2 VAE (48 channels, 16x), which is not supported yet.
    """
    for p in _PREFIXES:
        if p + _MARK in sd and p + "conv2.weight" in sd:
            if p + _WAN22_MARK in sd:
                raise UnsupportedModelError(
                    "this file holds the Wan 2.2 VAE (48 latent channels, 16x downscaling), which "
                    "is not supported yet; Qwen-Image uses the Wan 2.1 VAE. Fix: load "
                    "vae/qwen_image_vae.safetensors (or wan_2.1_vae.safetensors)")
            return p
    return None


def read_wan_vae_config(sd: Mapping[str, Any], prefix: str = "") -> WanVAEConfig:
    """The sizes of a Wan-2.1 VAE from its shapes (levels, widths, blocks, temporal resamplers)."""
    dim = int(sd[prefix + "encoder.conv1.weight"].shape[0])
    z_dim = int(sd[prefix + "conv2.weight"].shape[0])
    down = prefix + "encoder.downsamples."
    count = len({k[len(down):].split(".")[0] for k in sd if k.startswith(down)})
    # each level: num_res_blocks residual blocks, then a resampler (none after the last level)
    n = next((i for i in range(count) if f"{down}{i}.resample.1.weight" in sd), count)
    levels = (count + 1) // (n + 1)
    if n < 1 or levels * (n + 1) - 1 != count:
        raise UnsupportedModelError(
            f"Wan VAE with an unexpected encoder layout: {count} blocks, the first resampler at {n}")
    mults = tuple(int(sd[f"{down}{lv * (n + 1)}.residual.6.weight"].shape[0]) // dim for lv in range(levels))
    temporal = tuple(f"{down}{lv * (n + 1) + n}.time_conv.weight" in sd for lv in range(levels - 1))
    return WanVAEConfig(dim=dim, z_dim=z_dim, dim_mult=mults, num_res_blocks=n, temporal_downsample=temporal)


def wan_vae_component(sd: Mapping[str, Any], prefix: str = "") -> Component:
    """The ``vae`` component of a Wan-2.1 VAE stored under ``prefix``."""
    return Component("vae", "vae", prefix, read_wan_vae_config(sd, prefix), "ldm",
                     dtypes=WAN_VAE_DTYPES, architecture=WanVAE)
