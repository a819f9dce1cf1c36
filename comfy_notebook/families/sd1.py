"""Stable Diffusion 1.x: CLIP ViT-L/14 text encoder (last layer), eps prediction, 0.18215 latents.

Facts from ComfyUI (``comfy/supported_models.py`` ``SD15``, ``comfy/latent_formats.py`` ``SD15``,
``comfy/sd1_clip.py``; comfyanonymous/ComfyUI@003617c) and the CompVis checkpoint layout.
"""

from __future__ import annotations

from types import MappingProxyType

from comfy_notebook.families._survey import Survey
from comfy_notebook.families.base import Detected, Family, LatentFormat, TextEncoderSpec

__all__ = ["SD1", "SD15_LATENT", "SD1Family"]

CLIP_PREFIX = "cond_stage_model.transformer."

SD15_LATENT = LatentFormat(
    name="SD15", scale_factor=0.18215,
    rgb_factors=((0.3512, 0.2297, 0.3227), (0.3250, 0.4974, 0.2350),
                 (-0.2829, 0.1762, 0.2721), (-0.2120, -0.2616, -0.7177)),
    inpaint_blank=(0.8223, -0.6876, 0.6364, 0.1380),
)


class SD1Family(Family):
    """Stable Diffusion 1.x (1.4, 1.5 and fine-tunes; 9-channel inpainting models too)."""

    name = "sd1"
    title = "Stable Diffusion 1.x"
    latent_format = SD15_LATENT
    text_encoders = (TextEncoderSpec("clip_l", layer=None, final_norm=True, pad_token=49407),)
    clip_types = MappingProxyType({"stable_diffusion": ("clip_l",)})
    lora_te_prefixes = MappingProxyType({"lora_te_": "clip_l", "text_encoder.": "clip_l",
                                         "cond_stage_model.transformer.": "clip_l"})
    memory_factor = 2.0
    context_dim = 768
    # ComfyUI's ModelMergeSD1 inputs (comfy_extras/nodes_model_merging_model_specific.py at
    # Comfy-Org/ComfyUI@a125cd8): the trailing dot keeps input_blocks.1. off input_blocks.10
    merge_blocks = ("time_embed.", "label_emb.", *(f"input_blocks.{i}." for i in range(12)),
                    *(f"middle_block.{i}." for i in range(3)),
                    *(f"output_blocks.{i}." for i in range(12)), "out.")
    # what ComfyUI's SD15 model writes when saving (model_base.state_dict_for_saving)
    checkpoint_layout = MappingProxyType({"unet": ("model.diffusion_model.", "ldm"),
                                          "vae": ("first_stage_model.", "ldm"), "clip_l": (CLIP_PREFIX, "hf")})

    def matches(self, survey: Survey) -> bool:
        if survey.has_prefix(CLIP_PREFIX):
            return True
        if survey.unet_prefix is None or survey.adm_in_channels is not None:
            return False
        if survey.context_dim == 768:
            return True
        return survey.context_dim != 1024 and not survey.linear_projection

    def detect(self, survey: Survey) -> Detected:
        comps = {}
        if survey.unet_prefix is not None:
            comps["unet"] = survey.unet(num_heads=8, num_head_channels=-1)
        if survey.vae_prefix is not None:
            comps["vae"] = survey.vae()
        if survey.has_prefix(CLIP_PREFIX):
            comps["clip_l"] = survey.text_encoder("clip_l", CLIP_PREFIX, "hf", "quick_gelu")
        return Detected(self, comps)


SD1 = SD1Family()
