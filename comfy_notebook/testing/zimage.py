"""Random-weight Z-Image files in the released layouts (re-exported by ``comfy_notebook.testing``).

ComfyUI's Z-Image-Turbo example loads three separate files:

- ``diffusion_models/z_image_turbo_bf16.safetensors``: the NextDiT, keys without prefix
  (``x_embedder.*``, ``noise_refiner.N.*``, ``context_refiner.N.*``, ``layers.N.*``,
  ``x_pad_token``, ``cap_pad_token`` ...);
- ``text_encoders/qwen_3_4b.safetensors``: Qwen3-4B with Hugging Face keys (``model.embed_tokens``,
  ``model.layers.N.*``, ``model.norm``), bf16, or an fp8 copy;
- ``vae/ae.safetensors``: the Flux VAE (``make_vae_file(config=VAEConfig.flux_tiny())``).

The tiny presets keep the key structure, the 16 latent channels, the 2x2 patches and the real
Qwen vocabulary (so the shipped tokenizer's ids index the embedding) with tiny widths; the text
encoder's width is the transformer's caption width, as in the released pair.
"""

from __future__ import annotations

import dataclasses
import os

import torch

from comfy_notebook.models.qwen3 import Qwen3Config, Qwen3Encoder
from comfy_notebook.models.zimage import ZImage, ZImageConfig
from comfy_notebook.testing._core import _meta, _save, random_state_dict

__all__ = ["QWEN3_TINY", "ZIMAGE_PRESETS", "ZIMAGE_TINY", "make_qwen3_file", "make_zimage_file"]

ZIMAGE_PRESETS = ("zimage-turbo-tiny",)
#: the tiny transformer (``ZImageConfig.tiny``: 64 wide, 2 heads, caption width 48)
ZIMAGE_TINY = ZImageConfig.tiny()
#: the tiny Qwen3 that feeds it: the real vocabulary, 48 wide (the caption width), 3 layers
QWEN3_TINY = dataclasses.replace(Qwen3Config.tiny(), vocab_size=151936, hidden_size=ZIMAGE_TINY.cap_feat_dim)


def make_zimage_file(
    path: str | os.PathLike[str],
    preset: str = "zimage-turbo-tiny",
    seed: int = 0,
    *,
    dtype: torch.dtype = torch.bfloat16,
    config: ZImageConfig | None = None,
    prefix: str = "",
) -> str:
    """Write a random-weight Z-Image transformer file (``diffusion_models/`` layout). Returns the path.

    ``config`` overrides the preset; ``dtype`` may be an fp8 type (weights rounded from float32).
    """

    if config is None:
        if preset not in ZIMAGE_PRESETS:
            raise ValueError(f"unknown Z-Image preset {preset!r}; expected one of {ZIMAGE_PRESETS}")
        config = ZIMAGE_TINY
    sd = random_state_dict(_meta(ZImage, config), seed, torch.float32, "zimage")
    return _save({prefix + k: v.to(dtype) for k, v in sd.items()}, path)


def make_qwen3_file(
    path: str | os.PathLike[str],
    seed: int = 0,
    *,
    dtype: torch.dtype = torch.bfloat16,
    config: Qwen3Config | None = None,
) -> str:
    """Write a random-weight Qwen3 text-encoder file (``text_encoders/qwen_3_4b*`` layout). Returns the path."""

    sd = random_state_dict(_meta(Qwen3Encoder, config or QWEN3_TINY), seed, torch.float32, "qwen3")
    return _save({k: v.to(dtype) for k, v in sd.items()}, path)
