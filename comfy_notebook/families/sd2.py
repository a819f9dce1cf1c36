"""Stable Diffusion 2.x: OpenCLIP ViT-H text encoder (penultimate layer), 64-wide heads,
linear projections; the 768 px models predict v, the 512 px base eps.

Facts from ComfyUI (``comfy/supported_models.py`` ``SD20``: v prediction when the std of
``output_blocks.11.1.transformer_blocks.0.norm1.bias`` exceeds 0.09 on a 4-channel UNet;
``comfy/sd2_clip.py``: penultimate layer with the final norm, padding with token 0;
comfyanonymous/ComfyUI@003617c).
"""

from __future__ import annotations

from types import MappingProxyType

import torch

from comfy_notebook.families._survey import Survey
from comfy_notebook.families.base import Detected, Family, TextEncoderSpec
from comfy_notebook.families.sd1 import SD15_LATENT

__all__ = ["SD2", "SD2Family"]

CLIP_PREFIX = "cond_stage_model.model."
SGM_CLIP_PREFIX = "conditioner.embedders.0.model."  # SD2 saved in Stability's sgm layout
V_PROBE = "output_blocks.11.1.transformer_blocks.0.norm1.bias"


class SD2Family(Family):
    """Stable Diffusion 2.0 / 2.1 (512 eps, 768 v, 9-channel inpainting)."""

    name = "sd2"
    title = "Stable Diffusion 2.x"
    latent_format = SD15_LATENT
    text_encoders = (TextEncoderSpec("clip_h", layer=-2, final_norm=True, pad_token=0),)
    clip_types = MappingProxyType({"stable_diffusion": ("clip_h",)})
    lora_te_prefixes = MappingProxyType({"lora_te_": "clip_h", "text_encoder.": "clip_h"})
    memory_factor = 2.0
    context_dim = 1024
    # ComfyUI's SD21 saving: the ViT-H text tower back in OpenCLIP names under cond_stage_model.model.
    checkpoint_layout = MappingProxyType({"unet": ("model.diffusion_model.", "ldm"),
                                          "vae": ("first_stage_model.", "ldm"), "clip_h": (CLIP_PREFIX, "openclip")})

    def _clip_prefix(self, survey: Survey) -> str | None:
        if survey.has_prefix(CLIP_PREFIX):
            return CLIP_PREFIX
        if survey.has_prefix(SGM_CLIP_PREFIX) and not survey.has_prefix("conditioner.embedders.1."):
            return SGM_CLIP_PREFIX if survey.adm_in_channels is None else None
        return None

    def matches(self, survey: Survey) -> bool:
        if self._clip_prefix(survey) is not None:
            return True
        if survey.has_prefix("cond_stage_model.") or survey.has_prefix("conditioner."):
            return False  # another family's text encoder
        if survey.unet_prefix is None or survey.adm_in_channels is not None:
            return False
        return survey.context_dim == 1024 or (survey.context_dim != 768 and survey.linear_projection)

    def detect(self, survey: Survey) -> Detected:
        comps = {}
        sampling = {}
        if survey.unet_prefix is not None:
            unet = comps["unet"] = survey.unet(num_heads=-1, num_head_channels=64)
            probe = survey.sd.get(survey.unet_prefix + V_PROBE)
            if unet.config.in_channels == 4 and probe is not None and float(
                    torch.std(probe.float(), unbiased=False)) > 0.09:
                sampling["prediction"] = "v_prediction"
        if survey.vae_prefix is not None:
            comps["vae"] = survey.vae()
        prefix = self._clip_prefix(survey)
        if prefix is not None:
            comps["clip_h"] = survey.text_encoder("clip_h", prefix, "openclip", "gelu")
        return Detected(self, comps, sampling)


SD2 = SD2Family()
