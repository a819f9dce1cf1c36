"""Noise augmentation of CLIP image embeddings (the unCLIP models' ``adm`` input).

The SD 2.1 unCLIP models were trained with the image embedding noised by a DDPM forward step
at a chosen level and that level's sinusoidal embedding appended (Stability's
``CLIPEmbeddingNoiseAugmentation``: the ``squaredcos_cap_v2`` schedule over 1000 steps, the
embedding's own width for the level embedding, data mean 0 and std 1 as ComfyUI builds it).
ComfyUI's ``unclip_adm`` (``comfy/model_base.py``, ``comfy/ldm/modules/encoders/
noise_aug_modules.py`` and ``diffusionmodules/upscaling.py``, comfyanonymous/ComfyUI@017167c):

- each image embedding row of each ``unclip_conditioning`` entry is noised at level
  ``round(999 * noise_augmentation)`` with noise drawn from ``seed`` and multiplied, together
  with its level embedding, by the entry's ``strength``;
- several rows are summed and the sum noised again at ``noise_augment_merge`` (0.05).

Proven against diffusers' ``StableUnCLIPImg2ImgPipeline.noise_image_embeds`` recipe (a
``DDPMScheduler`` with ``squaredcos_cap_v2`` and ``get_timestep_embedding`` with cos first) in
``tests/models/test_noise_augment.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

__all__ = ["MAX_NOISE_LEVEL", "augment_embedding", "cosine_schedule", "unclip_adm"]

MAX_NOISE_LEVEL = 1000


@lru_cache(maxsize=2)
def cosine_schedule(steps: int = MAX_NOISE_LEVEL) -> tuple[Tensor, Tensor]:
    """``(sqrt(alphas_cumprod), sqrt(1 - alphas_cumprod))`` of the ``squaredcos_cap_v2`` betas (fp32)."""
    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = torch.tensor([min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), 0.999)
                          for i in range(steps)], dtype=torch.float64)
    cumprod = torch.cumprod(1.0 - betas, 0)
    return cumprod.sqrt().float(), (1.0 - cumprod).sqrt().float()


def augment_embedding(embeds: Tensor, level: int, generator: torch.Generator | None) -> Tensor:
    """``[N, P]`` embeddings -> ``[N, 2P]``: noised at ``level`` (0..999), then the level's embedding."""
    from comfy_notebook.models.unet import timestep_embedding

    a, b = cosine_schedule()
    noise = torch.randn(embeds.shape, dtype=embeds.dtype, generator=generator).to(embeds.device)
    noised = a[level].to(embeds) * embeds + b[level].to(embeds) * noise
    level_emb = timestep_embedding(torch.tensor([level], device=embeds.device), embeds.shape[-1])
    return torch.cat([noised, level_emb.to(embeds.dtype).expand(embeds.shape[0], -1)], dim=1)


def _level(amount: float) -> int:
    return round((MAX_NOISE_LEVEL - 1) * amount)


def unclip_adm(entries: Sequence[Any], *, seed: int, device: Any = None,
               merge_augmentation: float = 0.05) -> Tensor:
    """The ``y`` of an unCLIP UNet from a conditioning entry's ``unclip_conditioning`` list.

    Parameters
    ----------
    entries:
        Dicts with ``clip_vision_output`` (its ``image_embeds`` ``[B, P]``), ``strength`` and
        ``noise_augmentation``, as ``unCLIPConditioning`` appends them.
    seed:
        The noise seed of each row (ComfyUI passes the sampler's seed minus 10).
    merge_augmentation:
        Noise level (0..1) of the re-augmentation when there are several rows.  ComfyUI draws
        that noise from the global generator; here it comes from ``seed`` too, so runs repeat.

    Returns
    -------
    Tensor
        ``[1, 2P]`` float32.
    """
    rows = []
    for entry in entries:
        embeds = entry["clip_vision_output"]["image_embeds"].float().to(device)  # [B, P]
        level = _level(float(entry["noise_augmentation"]))
        for row in embeds:
            gen = torch.Generator().manual_seed(seed)  # every row draws the same noise, as ComfyUI
            rows.append(augment_embedding(row[None], level, gen) * float(entry["strength"]))
    if not rows:
        raise ValueError("unclip_adm needs at least one image embedding")
    if len(rows) == 1:
        return rows[0]
    total = torch.stack(rows).sum(0)  # [1, 2P]
    width = total.shape[1] // 2
    gen = torch.Generator().manual_seed(seed)
    return augment_embedding(total[:, :width], _level(merge_augmentation), gen)
