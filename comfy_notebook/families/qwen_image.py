"""Qwen-Image and Qwen-Image-Edit: diffusion-model files, latent format, model sampling, Edit inputs.

ComfyUI facts (Comfy-Org/ComfyUI@a125cd8: ``comfy/supported_models.py`` ``QwenImage``,
``comfy/model_base.py`` ``QwenImage``, ``comfy/model_detection.py``, ``comfy/ldm/qwen_image/model.py``,
``comfy_extras/nodes_qwen.py``; the examples at comfyanonymous/ComfyUI_examples@f9431bb
``qwen_image/``):

- files: ``diffusion_models/qwen_image_fp8_e4m3fn.safetensors`` (also ``qwen_image_bf16``,
  ``qwen_image_edit_fp8_e4m3fn``, ``qwen_image_edit_2509_fp8_e4m3fn``): the MMDiT, keys without
  prefix (``model.diffusion_model.`` in a checkpoint), recognised by ``txt_norm.weight``;
  Qwen-Image and its Edit models share the architecture (see ``models/qwen_image.py``);
  Edit-2511 files carry an empty ``__index_timestep_zero__`` marker: their reference latents are
  modulated as at timestep 0 (ComfyUI's ``index_timestep_zero`` method, diffusers' ``zero_cond_t``);
  ``text_encoders/qwen_2.5_vl_7b*.safetensors`` (``families/qwen_image_text.py``);
  ``vae/qwen_image_vae.safetensors`` (the Wan-2.1 VAE, ``families/wan.py``);
- latent: Wan 2.1's (16 channels, per-channel mean/std, 8x);
- model sampling: ``ModelType.FLUX``, i.e. ``ModelSamplingFlux`` with ``shift`` 1.15 (timestep =
  sigma); the examples put ``ModelSamplingAuraFlow`` (discrete flow, shift 3.1) in front;
- model inputs: the text encoder's hidden states are the context (no attention mask reaches the
  model); Edit's ``reference_latents`` (a conditioning option, VAE latents) go through the latent
  format's ``process_in`` and ride along as extra image tokens; ``reference_latents_method``
  (``FluxKontextMultiReferenceLatentMethod``) picks their RoPE placement;
- memory: ``memory_usage_factor`` 1.8; inference dtypes bf16 then fp32.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from comfy_notebook.errors import ModelLoadError
from comfy_notebook.families._survey import Survey
from comfy_notebook.families.base import Component, Detected, Family, LatentFormat
from comfy_notebook.families.qwen_image_text import (
    CLIP_TYPES,
    QWEN25_7B,
    qwen25vl_component,
    qwen25vl_kind,
)
from comfy_notebook.families.wan import WAN21_LATENT, wan_vae_component, wan_vae_prefix
from comfy_notebook.models.qwen_image import QwenImage, QwenImageConfig, reference_kwargs
from comfy_notebook.runtime.loading import open_state_dict
from comfy_notebook.runtime.module_loading import load_module
from comfy_notebook.sampling.flow import ModelSamplingFlux

__all__ = [
    "QWEN_IMAGE",
    "SHIFT",
    "QwenImageFamily",
    "detect_qwen_image",
    "load_qwen_image",
    "reference_inputs",
]

SHIFT = 1.15
_PREFIXES = ("", "model.diffusion_model.")
_TE_PREFIX = "text_encoders.qwen25_7b.transformer."  # a full checkpoint's text encoder


def detect_qwen_image(sd: Mapping[str, Any]) -> tuple[QwenImageConfig, str] | None:
    """``(config, key prefix)`` when ``sd`` holds a Qwen-Image transformer, else None (ComfyUI
    keys on ``txt_norm.weight``; the joint-attention text projections make sure)."""
    for p in _PREFIXES:
        if (f"{p}txt_norm.weight" in sd and f"{p}img_in.weight" in sd
                and f"{p}transformer_blocks.0.attn.add_q_proj.weight" in sd):
            return QwenImageConfig.from_state_dict(sd, p), p
    return None


def load_qwen_image(path: str | os.PathLike[str], *, weight_dtype: str = "default",
                    device: str | torch.device = "cpu", compute_dtype: torch.dtype | None = None) -> QwenImage:
    """Load a Qwen-Image transformer file (``UNETLoader``): fp8 files and ``weight_dtype`` fp8 stay fp8."""
    sd = open_state_dict(path)
    found = detect_qwen_image(sd)
    if found is None:
        raise ModelLoadError(
            f"{path} holds no Qwen-Image transformer (no txt_norm.weight / img_in.weight / "
            "transformer_blocks.0.attn.add_q_proj.weight). Fix: pick a qwen_image*.safetensors "
            "file from diffusion_models/")
    config, prefix = found
    model = load_module(QwenImage, config, sd, prefix=prefix, weight_dtype=weight_dtype, device=device,
                        compute_dtype=compute_dtype, ignore=QwenImage.ignored_keys,
                        what=f"Qwen-Image transformer in {path}")
    return model  # type: ignore[return-value]


def reference_inputs(latent_format: LatentFormat, options: Mapping[str, Any]) -> dict[str, Tensor]:
    """Edit's model inputs from a conditioning entry's options (ComfyUI ``QwenImage.extra_conds``):
    each of ``reference_latents`` (VAE latents [1, 16, h, w], or ComfyUI's 5-D [1, 16, 1, h, w])
    through ``process_in``, under the keyword names of ``models.qwen_image.reference_kwargs``
    with ``reference_latents_method`` (default ``"index"``)."""
    refs = options.get("reference_latents")
    if not refs:
        return {}
    latents = []
    for r in refs:
        r = r.squeeze(2) if r.ndim == 5 else r
        latents.append(latent_format.process_in(r.float()))
    return reference_kwargs(latents, str(options.get("reference_latents_method", "index")))


# -- the family (the families seam) ---------------------------------------------------------------
class QwenImageFamily(Family):
    """Qwen-Image and Qwen-Image-Edit: the MMDiT from diffusion_models/, Qwen2.5-VL-7B, the Wan-2.1 VAE."""

    name = "qwen_image"
    title = "Qwen-Image"
    latent_format = WAN21_LATENT
    text_encoders = (QWEN25_7B,)
    clip_types = CLIP_TYPES  # "qwen_image" (the examples') and the other types ComfyUI accepts
    memory_factor = 1.8 * 2  # ComfyUI's memory_usage_factor 1.8 (SD1's is 1.0; ours 2.0)

    def matches(self, survey: Survey) -> bool:
        return detect_qwen_image(survey.sd) is not None

    def detect(self, survey: Survey) -> Detected:
        found = detect_qwen_image(survey.sd)
        assert found is not None
        config, prefix = found
        # bf16 first, as ComfyUI (supported_inference_dtypes); fp16 is left out (activations overflow)
        comps = {"unet": Component("unet", "unet", prefix, config, "qwen_image", architecture=QwenImage,
                                   dtypes=(torch.bfloat16, torch.float32))}
        vae = wan_vae_prefix(survey.sd)
        if vae is not None and vae != "":
            comps["vae"] = wan_vae_component(survey.sd, vae)
        if qwen25vl_kind(survey.sd, _TE_PREFIX) == QWEN25_7B.name:
            comps[QWEN25_7B.name] = qwen25vl_component(survey.sd, _TE_PREFIX)
        return Detected(self, comps)

    def text_encoder_component(self, survey: Survey) -> Component | None:
        """A ``text_encoders/qwen_2.5_vl_7b*`` file (Hugging Face keys ``model.*``, ``visual.*``)."""
        if qwen25vl_kind(survey.sd) == QWEN25_7B.name:
            return qwen25vl_component(survey.sd)
        return None

    def model_sampling(self, prediction: str | None = None, zsnr: bool = False) -> Any:
        """``ModelSamplingFlux(shift=1.15)`` (ComfyUI's ``ModelType.FLUX`` sampling settings)."""
        return ModelSamplingFlux(shift=SHIFT)

    def model_inputs(self, unet_config: Any, params: Mapping[str, Any]) -> dict[str, Tensor]:
        return reference_inputs(self.latent_format, params)


QWEN_IMAGE = QwenImageFamily()
