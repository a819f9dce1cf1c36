"""Stable Diffusion 2.1 unCLIP (-L and -H): an SD 2.x UNet that also reads a noise-augmented
CLIP image embedding as its ``y`` (``adm``) input; the checkpoint carries the image tower.

Facts from ComfyUI (comfyanonymous/ComfyUI@017167c ``comfy/supported_models.py``
``SD21UnclipL`` / ``SD21UnclipH``, ``comfy/model_base.py`` ``SD21UNCLIP``):

- ``adm_in_channels`` 1536 (ViT-L/14 image embedding 768 + its noise-level embedding 768) or
  2048 (ViT-H/14: 1024 + 1024); context 1024 and the SD2 text encoder, v / eps by SD2's rule;
- the image tower lives under ``embedder.model.visual.`` in the OpenAI/OpenCLIP layout
  (``clip_vision_prefix``), converted to transformers names on load;
- without ``unclip_conditioning`` the ``y`` input is zeros; with it, ``unclip_adm`` with the
  sampler's seed minus 10 and a merge augmentation of 0.05 (``unclip_noise_augment_merge``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from comfy_notebook.errors import NodeError
from comfy_notebook.families._survey import Survey
from comfy_notebook.families.base import Detected
from comfy_notebook.families.sd2 import SD2Family

__all__ = ["CLIP_VISION_PREFIX", "SD2_UNCLIP", "SD2UnclipFamily"]

CLIP_VISION_PREFIX = "embedder.model.visual."
_RELEASED_ADM = (1536, 2048)


class SD2UnclipFamily(SD2Family):
    """SD 2.1 unCLIP: SD2 plus the image-embedding ``y`` input and an image tower."""

    name = "sd2_unclip"
    title = "Stable Diffusion 2.1 unCLIP"
    clip_vision_prefix = CLIP_VISION_PREFIX
    merge_augmentation = 0.05  # ComfyUI's default unclip_noise_augment_merge
    seed_offset = -10  # the augmentation noise seed is the sampler's seed minus 10

    def matches(self, survey: Survey) -> bool:
        if survey.has_prefix(CLIP_VISION_PREFIX) or survey.has_prefix("noise_augmentor."):
            return survey.unet_prefix is not None or survey.has_prefix("cond_stage_model.model.")
        if survey.adm_in_channels is None:
            return False
        if survey.has_prefix("cond_stage_model.model."):
            return True  # an SD2 text tower beside a UNet with a y input
        return survey.adm_in_channels in _RELEASED_ADM and survey.context_dim == 1024

    def detect(self, survey: Survey) -> Detected:
        found = super().detect(survey)
        return Detected(self, found.components, found.sampling)

    def model_inputs(self, unet_config: Any, params: Mapping[str, Any]) -> dict[str, Tensor]:
        from comfy_notebook.models.noise_augment import unclip_adm

        width = int(unet_config.adm_in_channels)
        entries = params.get("unclip_conditioning")
        if not entries:
            return {"y": torch.zeros(1, width)}
        for entry in entries:
            got = int(entry["clip_vision_output"]["image_embeds"].shape[-1])
            if 2 * got != width:
                raise NodeError(
                    f"{self.title} takes {width // 2}-wide image embeddings", input_name="positive",
                    expected=f"unCLIPConditioning from a CLIP vision model with a {width // 2}-wide "
                    "projection (ViT-L/14: 768, ViT-H/14: 1024)",
                    received=f"an image embedding {got} wide",
                    fix="encode the image with the unCLIP checkpoint's own CLIP_VISION "
                    "(unCLIPCheckpointLoader's fourth output)")
        seed = int(params.get("seed", 0)) + self.seed_offset
        merge = float(params.get("unclip_noise_augment_merge", self.merge_augmentation))
        return {"y": unclip_adm(entries, seed=seed, device=params.get("device"), merge_augmentation=merge)}


SD2_UNCLIP = SD2UnclipFamily()
