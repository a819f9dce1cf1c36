"""Random-weight Wan-2.1 VAE files in ComfyUI's layout (re-exported by ``comfy_notebook.testing``).

ComfyUI's Qwen-Image workflows load ``vae/qwen_image_vae.safetensors``: the Wan-2.1 causal 3-D
VAE with ComfyUI ``WanVAE`` key names, no prefix (``encoder.conv1.weight``,
``encoder.downsamples.N.residual.2.weight``, ``decoder.middle.0.residual.0.gamma``,
``conv1.*``/``conv2.*`` ...).  The tiny preset keeps the key structure, the 16 latent channels
and the 8x downscaling with tiny widths.
"""

from __future__ import annotations

import os
import zlib

import torch
from torch import Tensor

from comfy_notebook.models.wan_vae import WanVAE, WanVAEConfig

__all__ = ["WAN_VAE_PRESETS", "make_wan_vae_file", "random_wan_vae_state_dict"]

#: preset name -> configuration
WAN_VAE_PRESETS = {"qwen-image-vae-tiny": WanVAEConfig.tiny(), "qwen-image-vae": WanVAEConfig.qwen_image()}


def random_wan_vae_state_dict(config: WanVAEConfig, seed: int = 0,
                              dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """Random weights with the released keys: kernels ~ N(0, 1/fan_in) (fan-in of the slice a
    single frame meets, so activations stay O(1)), norm gains 1 + N(0, 0.1^2), biases N(0, 0.1^2)."""
    with torch.device("meta"):
        module = WanVAE(config)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(b"wan_vae"))
    out: dict[str, Tensor] = {}
    for key, like in sorted(module.state_dict().items()):
        shape = tuple(like.shape)
        t = torch.randn(shape, generator=gen)
        if key.endswith(".gamma"):
            t = 1.0 + 0.1 * t
        elif len(shape) == 5:
            t *= (shape[1] * shape[3] * shape[4]) ** -0.5
        elif len(shape) >= 2:
            t *= like[0].numel() ** -0.5
        else:
            t *= 0.1
        out[key] = t.to(dtype)
    return out


def make_wan_vae_file(
    path: str | os.PathLike[str],
    preset: str = "qwen-image-vae-tiny",
    seed: int = 0,
    *,
    dtype: torch.dtype = torch.bfloat16,
    config: WanVAEConfig | None = None,
) -> str:
    """Write a random-weight ``vae/qwen_image_vae.safetensors``-layout file. Returns the path.

    ``preset``: ``qwen-image-vae-tiny`` or ``qwen-image-vae`` (real size, 254 MB in bf16);
    ``config`` overrides it.  The released file is bf16.
    """
    from safetensors.torch import save_file

    if config is None:
        if preset not in WAN_VAE_PRESETS:
            raise ValueError(f"unknown Wan VAE preset {preset!r}; known: {sorted(WAN_VAE_PRESETS)}")
        config = WAN_VAE_PRESETS[preset]
    tensors = random_wan_vae_state_dict(config, seed, dtype)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return str(path)
