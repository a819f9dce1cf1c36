"""Random-weight SD-family files in the released layouts: single-file checkpoints (SD1, SD2,
SDXL, unCLIP), and separate diffusion-model, VAE and text-encoder files.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor

from comfy_notebook.models.detect import UNET_PREFIX, VAE_PREFIX
from comfy_notebook.models.unet import UNetConfig, UNetModel
from comfy_notebook.models.vae import AutoencoderKL, VAEConfig
from comfy_notebook.testing._core import (
    _clip_tensors,
    _meta,
    _save,
    random_state_dict,
    schedule_buffers,
)
from comfy_notebook.testing.presets import get_preset

__all__ = ["make_checkpoint", "make_text_encoder_file", "make_unet_file", "make_vae_file"]


def make_checkpoint(
    path: str | os.PathLike[str],
    preset: str = "sd1-tiny",
    seed: int = 0,
    *,
    dtype: torch.dtype | None = None,
    unet: UNetConfig | None = None,
    vae: VAEConfig | None = None,
    clip: Any = None,
) -> str:
    """Write a random-weight single-file checkpoint with a released key layout.

    Parameters
    ----------
    path:
        Output ``.safetensors`` path.
    preset:
        One of :data:`PRESETS`: ``"sd1-tiny"`` (a few MB), ``"sd1-tiny-linear"`` (linear
        projections, uneven transformer depth), ``"sd2"`` / ``"sd2-v"`` (OpenCLIP text tower
        under ``cond_stage_model.model.``, eps / v by ComfyUI's weight statistic), ``"sdxl"``
        (CLIP-L + OpenCLIP-G under ``conditioner.embedders.*``, ``label_emb``),
        ``"sdxl-refiner"``; ``*-full`` presets have the real sizes (GBs: for shape tests).
    seed:
        Same seed and preset give the same file.
    dtype:
        Weight dtype; ``None``: float32, float16 for full-size presets.
    unet, vae, clip:
        Override the preset's configuration of that part (``clip``: the first text encoder).

    Returns
    -------
    str
        The path written (keys as the released files, plus position ids / schedule buffers).
    """
    p = get_preset(preset)
    unet, vae = unet or p.unet, vae or p.vae
    if dtype is None:
        dtype = torch.float16 if p.full else torch.float32
    tensors: dict[str, Tensor] = {}
    unet_sd = random_state_dict(_meta(UNetModel, unet), seed, dtype, "unet")
    probe = "output_blocks.11.1.transformer_blocks.0.norm1.bias"
    if p.v_probe_std is not None and probe in unet_sd:
        t = unet_sd[probe].float()
        unet_sd[probe] = ((t - t.mean()) / t.std(unbiased=False) * p.v_probe_std).to(dtype)
    for k, v in unet_sd.items():
        tensors[UNET_PREFIX + k] = v
    for k, v in random_state_dict(_meta(AutoencoderKL, vae), seed, dtype, "vae").items():
        tensors[VAE_PREFIX + k] = v
    for i, (name, (prefix, layout, config)) in enumerate(p.encoders.items()):
        config = clip if (clip is not None and i == 0) else config
        tag = "clip" if i == 0 else name
        for k, v in _clip_tensors(config, seed, dtype, layout, tag).items():
            tensors[prefix + k] = v
    if p.vision is not None:
        tensors.update(_unclip_tensors(p.vision, seed, dtype))
    if p.family in ("sd1", "sd2", "sd2_unclip"):
        tensors.update(schedule_buffers())
        tensors["model_ema.decay"] = torch.tensor(0.9999)
        tensors["model_ema.num_updates"] = torch.tensor(0, dtype=torch.int32)
    for marker in p.markers:
        tensors[marker] = torch.tensor([])
    _save(tensors, path)
    return str(path)


def _unclip_tensors(vision: Any, seed: int, dtype: torch.dtype) -> dict[str, Tensor]:
    """An SD 2.1 unCLIP file's extra parts: the OpenCLIP image tower under ``embedder.model.visual.``
    (plus the embedder's other leftovers) and the ``noise_augmentor`` schedule buffers."""
    from comfy_notebook.models.clip_vision import CLIPVisionModel
    from comfy_notebook.models.convert import hf_vision_to_openclip
    from comfy_notebook.models.noise_augment import cosine_schedule

    tower = random_state_dict(_meta(CLIPVisionModel, vision), seed, dtype, "clip_vision")
    out = {"embedder.model.visual." + k: v for k, v in hf_vision_to_openclip(tower).items()}
    out["embedder.model.logit_scale"] = torch.tensor(4.6052, dtype=dtype)
    # unCLIP-L's embedder is a whole OpenAI CLIP: its text tower's keys come along (unused)
    out["embedder.model.token_embedding.weight"] = torch.zeros(16, 8, dtype=dtype)
    out["embedder.model.transformer.resblocks.0.ln_1.weight"] = torch.ones(8, dtype=dtype)
    out["embedder.model.transformer.resblocks.0.attn.in_proj_weight"] = torch.zeros(24, 8, dtype=dtype)
    a, b = cosine_schedule()
    out["noise_augmentor.sqrt_alphas_cumprod"] = a
    out["noise_augmentor.sqrt_one_minus_alphas_cumprod"] = b
    out["noise_augmentor.alphas_cumprod"] = a * a
    return out


def make_unet_file(path: str | os.PathLike[str], preset: str = "sdxl", seed: int = 0, *,
                   dtype: torch.dtype = torch.float32) -> str:
    """Write a diffusion-model file (``models/diffusion_models``): the preset's UNet, keys without prefix."""
    _save(random_state_dict(_meta(UNetModel, get_preset(preset).unet), seed, dtype, "unet"), path)
    return str(path)


def make_vae_file(
    path: str | os.PathLike[str],
    preset: str = "sd1-tiny",
    seed: int = 0,
    *,
    dtype: torch.dtype = torch.float32,
    config: VAEConfig | None = None,
) -> str:
    """Write a separate VAE file (keys ``encoder.*``, ``decoder.*``, no prefix), like
    ``vae-ft-mse-840000-ema-pruned.safetensors``.  Returns the path."""
    config = config or get_preset(preset).vae
    _save(random_state_dict(_meta(AutoencoderKL, config), seed, dtype, "vae"), path)
    return str(path)


def make_text_encoder_file(
    path: str | os.PathLike[str], preset: str = "sd1-tiny", seed: int = 0,
    *, dtype: torch.dtype = torch.float32, encoder: str | None = None,
) -> str:
    """Write a separate text-encoder file in transformers' layout (``text_model.*``, and
    ``text_projection.weight`` for CLIP-G), as ComfyUI's ``models/text_encoders`` files.

    ``encoder`` picks one of the preset's encoders (default: the first); each encoder's weights
    are the ones :func:`make_checkpoint` writes for the same preset and seed.
    """
    p = get_preset(preset)
    names = list(p.encoders)
    name = encoder or names[0]
    config = p.encoders[name][2]
    _save(_clip_tensors(config, seed, dtype, "hf", "clip" if names.index(name) == 0 else name), path)
    return str(path)
