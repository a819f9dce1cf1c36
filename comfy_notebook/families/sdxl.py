"""SDXL base and refiner: CLIP-L + OpenCLIP ViT-bigG (base) or ViT-bigG alone (refiner), the
``y`` vector of pooled text and size/crop/aesthetic Fourier features, 0.13025 latents.

Facts from ComfyUI, comfyanonymous/ComfyUI@003617c:

- ``comfy/sdxl_clip.py``: both encoders read the penultimate layer without the final norm;
  the outputs are concatenated (CLIP-L first, 768 + 1280 = 2048 channels); the pooled output is
  CLIP-G's, through its ``text_projection``; the CLIP-G tokenizer pads with 0;
- ``comfy/model_base.py`` ``SDXL.encode_adm`` / ``SDXLRefiner.encode_adm``: ``y`` = pooled
  (1280) + 256-wide timestep embeddings of height, width, crop_h, crop_w, target_height,
  target_width (base, 2816) or height, width, crop_h, crop_w, aesthetic_score (refiner, 2560;
  the score defaults to 6 for positive and 2.5 for negative prompts);
- ``comfy/samplers.py`` ``encode_model_conds``: width/height default to the latent size x 8;
- ``comfy/latent_formats.py`` ``SDXL``: scale 0.13025 and the latent2rgb factors and bias;
- ``comfy/supported_models.py`` ``SDXL.model_type``: a ``v_pred`` key marks v prediction and
  ``ztsnr`` zero terminal SNR.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from comfy_notebook.errors import NodeError
from comfy_notebook.families._survey import Survey
from comfy_notebook.families.base import Detected, Family, LatentFormat, TextEncoderSpec

__all__ = ["SDXL", "SDXL_LATENT", "SDXL_REFINER", "SDXLFamily", "SDXLRefinerFamily"]

CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
CLIP_G_PREFIX = "conditioner.embedders.1.model."
REFINER_CLIP_G_PREFIX = "conditioner.embedders.0.model."
FOURIER_WIDTH = 256  # width of each size/crop/score embedding

SDXL_LATENT = LatentFormat(
    name="SDXL", scale_factor=0.13025,
    rgb_factors=((0.3651, 0.4232, 0.4341), (-0.2533, -0.0042, 0.1068),
                 (0.1076, 0.1111, -0.0362), (-0.3165, -0.2492, -0.2188)),
    rgb_bias=(0.1084, -0.0175, -0.0011),
    inpaint_blank=(0.8223, -0.6876, 0.6364, 0.1380),  # ComfyUI uses the same for every 4-channel model
)

_CLIP_L = TextEncoderSpec("clip_l", layer=-2, final_norm=False, pad_token=49407)
_CLIP_G = TextEncoderSpec("clip_g", layer=-2, final_norm=False, pad_token=0, projected_pooled=True)


def fourier_features(values: list[float], device: Any = None) -> Tensor:
    """Each value's 256-wide timestep embedding, concatenated: [1, 256 * len(values)]."""
    from comfy_notebook.models.unet import timestep_embedding

    t = torch.tensor(values, dtype=torch.float32, device=device)
    return timestep_embedding(t, FOURIER_WIDTH).reshape(1, -1)


def _pooled(params: Mapping[str, Any], title: str) -> Tensor:
    entries = params.get("unclip_conditioning")
    if entries:  # unCLIPConditioning on SDXL ("revision"): the noised image embedding replaces
        # the pooled text, seed - 10 and no merge augmentation (ComfyUI model_base.sdxl_pooled)
        from comfy_notebook.models.noise_augment import unclip_adm

        text = params.get("pooled_output")  # ComfyUI keeps the first 1280 (CLIP-G's pooled width)
        width = int((text if text is not None else entries[0]["clip_vision_output"]["image_embeds"]).shape[-1])
        adm = unclip_adm(entries, seed=int(params.get("seed", 0)) - 10, device=params.get("device"),
                         merge_augmentation=0.0)
        return adm[:, :width]
    pooled = params.get("pooled_output")
    if pooled is None:
        raise NodeError(
            f"{title} conditioning needs a pooled text embedding", input_name="positive",
            expected="CONDITIONING entries with 'pooled_output' (from CLIPTextEncode / "
            "CLIPTextEncodeSDXL on this model's CLIP)", received="an entry without pooled_output",
            fix="encode the prompt with the checkpoint's CLIP (SDXL needs CLIP-G's pooled output)")
    return pooled


def _sampling(survey: Survey) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "v_pred" in survey.sd:
        out["prediction"] = "v_prediction"
    if "ztsnr" in survey.sd:
        out["zsnr"] = True
    return out


def _is_refiner_unet(survey: Survey) -> bool:
    """A refiner's ``y`` is the CLIP-G projection (as wide as its context) plus 5 x 256."""
    adm, ctx = survey.adm_in_channels, survey.context_dim
    return adm is not None and ctx is not None and adm - 5 * FOURIER_WIDTH == ctx


class SDXLFamily(Family):
    """SDXL 1.0 base (and fine-tunes): two text encoders, 2816-wide ``y``."""

    name = "sdxl"
    title = "SDXL"
    latent_format = SDXL_LATENT
    text_encoders = (_CLIP_L, _CLIP_G)
    clip_types = MappingProxyType({"sdxl": ("clip_l", "clip_g")})
    lora_te_prefixes = MappingProxyType({"lora_te1_": "clip_l", "lora_te2_": "clip_g", "text_encoder.": "clip_l",
                                         "text_encoder_2.": "clip_g", CLIP_L_PREFIX: "clip_l"})
    memory_factor = 1.6  # ComfyUI: 0.8 x SD1's
    context_dim = 2048
    lora_markers = ("lora_te1_", "lora_te2_", "text_encoder_2.")
    # ComfyUI's ModelMergeSDXL inputs (nodes_model_merging_model_specific.py, a125cd8): nine
    # input/output blocks, so no trailing dot is needed, and ComfyUI's names have none
    merge_blocks = ("time_embed.", "label_emb.", *(f"input_blocks.{i}" for i in range(9)),
                    *(f"middle_block.{i}" for i in range(3)),
                    *(f"output_blocks.{i}" for i in range(9)), "out.")
    # how ComfyUI's SDXL model saves (supported_models.SDXL.process_clip_state_dict_for_saving,
    # nodes_model_merging.save_checkpoint): CLIP-G back in OpenCLIP names, a modelspec block
    checkpoint_layout = MappingProxyType({
        "unet": ("model.diffusion_model.", "ldm"), "vae": ("first_stage_model.", "ldm"),
        "clip_l": (CLIP_L_PREFIX, "hf"), "clip_g": (CLIP_G_PREFIX, "openclip")})
    modelspec_architecture = "stable-diffusion-xl-v1-base"

    def matches(self, survey: Survey) -> bool:
        if survey.has_prefix("conditioner.embedders.1."):
            return True
        return survey.adm_in_channels is not None and not survey.has_prefix(REFINER_CLIP_G_PREFIX) \
            and not _is_refiner_unet(survey)

    def detect(self, survey: Survey) -> Detected:
        comps = {}
        if survey.unet_prefix is not None:
            comps["unet"] = survey.unet(num_heads=-1, num_head_channels=64)
        if survey.vae_prefix is not None:
            comps["vae"] = survey.vae()
        if survey.has_prefix(CLIP_L_PREFIX):
            comps["clip_l"] = survey.text_encoder("clip_l", CLIP_L_PREFIX, "hf", "quick_gelu")
        if survey.has_prefix(CLIP_G_PREFIX):
            comps["clip_g"] = survey.text_encoder("clip_g", CLIP_G_PREFIX, "openclip", "gelu")
        return Detected(self, comps, _sampling(survey))

    def combine(self, outputs: Mapping[str, tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor | None]:
        (l_out, _), (g_out, g_pooled) = outputs["clip_l"], outputs["clip_g"]
        n = min(l_out.shape[1], g_out.shape[1])
        return torch.cat([l_out[:, :n], g_out[:, :n]], dim=-1), g_pooled  # [1, T, 768 + 1280]

    def model_inputs(self, unet_config: Any, params: Mapping[str, Any]) -> dict[str, Tensor]:
        if unet_config is not None and unet_config.adm_in_channels is None:
            return {}  # a UNet without the label embedding takes no y
        pooled = _pooled(params, self.title)
        width, height = params["width"], params["height"]
        values = [height, width, params.get("crop_h", 0), params.get("crop_w", 0),
                  params.get("target_height", height), params.get("target_width", width)]
        flat = fourier_features([float(v) for v in values])  # [1, 1536]
        y = torch.cat([pooled.to(flat.device, flat.dtype), flat.repeat(pooled.shape[0], 1)], dim=1)
        return {"y": y}


class SDXLRefinerFamily(SDXLFamily):
    """SDXL 1.0 refiner: CLIP-G only, 2560-wide ``y`` with an aesthetic score."""

    name = "sdxl_refiner"
    title = "SDXL refiner"
    text_encoders = (_CLIP_G,)
    context_dim = 1280
    lora_markers = ()  # kohya's te1/te2 prefixes name the base; its LoRAs count as SDXL's
    clip_types = MappingProxyType({"stable_diffusion": ("clip_g",)})
    lora_te_prefixes = MappingProxyType({"lora_te_": "clip_g", "lora_te2_": "clip_g", "text_encoder_2.": "clip_g"})
    checkpoint_layout = MappingProxyType({
        "unet": ("model.diffusion_model.", "ldm"), "vae": ("first_stage_model.", "ldm"),
        "clip_g": (REFINER_CLIP_G_PREFIX, "openclip")})
    modelspec_architecture = "stable-diffusion-xl-v1-refiner"

    def matches(self, survey: Survey) -> bool:
        if survey.has_prefix("conditioner.embedders.1."):
            return False
        if survey.has_prefix(REFINER_CLIP_G_PREFIX) and survey.adm_in_channels is not None:
            return True
        return _is_refiner_unet(survey)

    def detect(self, survey: Survey) -> Detected:
        comps = {}
        if survey.unet_prefix is not None:
            comps["unet"] = survey.unet(num_heads=-1, num_head_channels=64)
        if survey.vae_prefix is not None:
            comps["vae"] = survey.vae()
        if survey.has_prefix(REFINER_CLIP_G_PREFIX):
            comps["clip_g"] = survey.text_encoder("clip_g", REFINER_CLIP_G_PREFIX, "openclip", "gelu")
        return Detected(self, comps, _sampling(survey))

    def combine(self, outputs: Mapping[str, tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor | None]:
        return outputs["clip_g"]

    def model_inputs(self, unet_config: Any, params: Mapping[str, Any]) -> dict[str, Tensor]:
        if unet_config is not None and unet_config.adm_in_channels is None:
            return {}
        pooled = _pooled(params, self.title)
        default_score = 2.5 if params.get("prompt_type", "") == "negative" else 6.0
        values = [params["height"], params["width"], params.get("crop_h", 0), params.get("crop_w", 0),
                  params.get("aesthetic_score", default_score)]
        flat = fourier_features([float(v) for v in values])  # [1, 1280]
        y = torch.cat([pooled.to(flat.device, flat.dtype), flat.repeat(pooled.shape[0], 1)], dim=1)
        return {"y": y}


SDXL = SDXLFamily()
SDXL_REFINER = SDXLRefinerFamily()
