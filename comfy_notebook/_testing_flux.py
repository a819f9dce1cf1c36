"""Random-weight Flux.1 files in the released layouts (re-exported by ``comfy_notebook.testing``).

ComfyUI's Flux workflows load four separate files:

- ``diffusion_models/flux1-{dev,schnell}.safetensors``: the transformer, keys without prefix
  (``img_in.weight``, ``double_blocks.N.*`` ...); dev has ``guidance_in.*``;
- ``text_encoders/t5xxl_{fp16,fp8_e4m3fn}.safetensors``: the T5 v1.1 encoder
  (``shared.weight``, ``encoder.*``);
- ``text_encoders/clip_l.safetensors``: the CLIP-L text model (``text_model.*``);
- ``vae/ae.safetensors``: the 16-channel KL autoencoder (``encoder.*``, ``decoder.*``, no
  ``quant_conv``).

The tiny presets keep the real key structure and latent/patch sizes with tiny widths.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from comfy_notebook.models.flux import Flux, FluxConfig
from comfy_notebook.models.t5 import T5Config, T5Encoder

__all__ = ["FLUX_PRESETS", "make_flux_file", "make_t5_file"]

FLUX_PRESETS = ("flux-dev-tiny", "flux-schnell-tiny")


def _meta(cls: type[nn.Module], config: Any) -> nn.Module:
    with torch.device("meta"):
        return cls(config)


def _save(tensors: dict[str, torch.Tensor], path: str | os.PathLike[str]) -> str:
    from safetensors.torch import save_file

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return str(path)


def make_flux_file(
    path: str | os.PathLike[str],
    preset: str = "flux-dev-tiny",
    seed: int = 0,
    *,
    dtype: torch.dtype = torch.bfloat16,
    config: FluxConfig | None = None,
    prefix: str = "",
) -> str:
    """Write a random-weight Flux transformer file (``diffusion_models/`` layout). Returns the path.

    ``preset``: ``flux-dev-tiny`` (with ``guidance_in``) or ``flux-schnell-tiny``; ``config``
    overrides it.  ``dtype`` may be an fp8 type (weights rounded from float32).
    """
    from comfy_notebook.testing import random_state_dict

    if config is None:
        if preset not in FLUX_PRESETS:
            raise ValueError(f"unknown Flux preset {preset!r}; expected one of {FLUX_PRESETS}")
        config = FluxConfig.tiny(guidance_embed=preset == "flux-dev-tiny")
    sd = random_state_dict(_meta(Flux, config), seed, torch.float32, "flux")
    return _save({prefix + k: v.to(dtype) for k, v in sd.items()}, path)


def make_t5_file(
    path: str | os.PathLike[str],
    seed: int = 0,
    *,
    dtype: torch.dtype = torch.float16,
    config: T5Config | None = None,
) -> str:
    """Write a random-weight T5 v1.1 encoder file (``text_encoders/t5xxl_*`` layout). Returns the path."""
    from comfy_notebook.testing import random_state_dict

    sd = random_state_dict(_meta(T5Encoder, config or T5Config.tiny()), seed, torch.float32, "t5")
    return _save({k: v.to(dtype) for k, v in sd.items()}, path)
