"""Flux.1 (dev and schnell): files, text-encoding recipe, latent format and model sampling.

ComfyUI facts (``comfy/supported_models.py`` ``Flux``/``FluxSchnell``, ``comfy/latent_formats.py``
``Flux``, ``comfy/model_base.py`` ``Flux``, ``comfy/text_encoders/flux.py``, ``comfy/sd.py``
``detect_te_model`` / ``load_clip``, at a125cd8):

- files: ``diffusion_models/flux1-*.safetensors`` (transformer, keys without prefix; dev has
  ``guidance_in``), ``text_encoders/t5xxl_*.safetensors`` and ``clip_l.safetensors``,
  ``vae/ae.safetensors`` (16-channel KL VAE without quant convs);
- latent: 16 channels; ``process_in(z) = (z - 0.1159) * 0.3611``, ``process_out`` its inverse;
- model sampling: dev uses ``ModelSamplingFlux`` (shift 1.15, timestep = sigma); schnell the
  discrete flow with shift 1 and multiplier 1 (timestep = sigma as well);
- text: CLIP-L's pooled output (not projected) conditions ``vector_in``; T5-XXL's last hidden
  states (padded to 256 tokens, no attention mask) are the context; ``CLIPTextEncodeFlux`` may
  give the two encoders different prompts and adds ``guidance`` to the conditioning;
- guidance: a conditioning without a ``guidance`` entry gives the model 3.5 (dev; schnell has no
  guidance input and ignores it);
- ``DualCLIPLoader(type="flux")`` tells its two files apart by their keys, in either order.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from comfy_notebook.errors import ModelLoadError
from comfy_notebook.families._survey import Survey
from comfy_notebook.families.base import Component, Detected, Family, LatentFormat, TextEncoderSpec
from comfy_notebook.models.flux import Flux, FluxConfig
from comfy_notebook.models.t5 import T5Config, T5Encoder
from comfy_notebook.runtime.loading import open_state_dict
from comfy_notebook.runtime.module_loading import load_module
from comfy_notebook.sampling.flow import ModelSamplingDiscreteFlow, ModelSamplingFlux

__all__ = [
    "DEFAULT_GUIDANCE",
    "FLUX",
    "FLUX_LATENT",
    "LATENT_CHANNELS",
    "LATENT_SCALE",
    "LATENT_SHIFT",
    "FluxFamily",
    "FluxTextEncoders",
    "apply_flux",
    "detect_flux",
    "encode_flux_prompt",
    "flux_model_kwargs",
    "load_flux",
    "load_t5",
    "model_sampling_for",
    "process_in",
    "process_out",
    "t5_component",
    "text_encoder_kind",
]

LATENT_CHANNELS, LATENT_SCALE, LATENT_SHIFT = 16, 0.3611, 0.1159
DEFAULT_GUIDANCE = 3.5
_PREFIXES = ("", "model.diffusion_model.")


def process_in(latent: Tensor) -> Tensor:
    """VAE latent -> the transformer's latent."""
    return (latent - LATENT_SHIFT) * LATENT_SCALE


def process_out(latent: Tensor) -> Tensor:
    """The transformer's latent -> VAE latent."""
    return latent / LATENT_SCALE + LATENT_SHIFT


def detect_flux(sd: Mapping[str, Any]) -> tuple[FluxConfig, str] | None:
    """``(config, key prefix)`` when ``sd`` holds a Flux transformer, else None (as ComfyUI:
    QK-norm scales of double block 0 and ``img_in``)."""
    for p in _PREFIXES:
        if f"{p}double_blocks.0.img_attn.norm.key_norm.scale" in sd and f"{p}img_in.weight" in sd:
            return FluxConfig.from_state_dict(sd, p), p
    return None


def text_encoder_kind(sd: Mapping[str, Any]) -> str | None:
    """What a ``text_encoders/`` file holds, from its keys: ``clip_l``, ``clip_g``, ``clip_h``,
    ``t5xxl`` (T5 v1.1, gated), ``t5`` (older T5) or None.

    ComfyUI's ``detect_te_model`` keys on a layer index of the full-size models (CLIP-G has a
    31st layer, CLIP-H a 23rd, T5-XXL a 24th block 4096 wide); here the same structure is read
    at any depth and width, so the tiny test files are told apart the same way.
    """
    if "text_model.encoder.layers.0.mlp.fc1.weight" in sd:
        layers = sum(1 for k in sd if k.startswith("text_model.encoder.layers.") and k.endswith(".mlp.fc1.weight"))
        return "clip_g" if layers >= 31 else "clip_h" if layers >= 23 else "clip_l"
    if "encoder.block.0.layer.1.DenseReluDense.wi_1.weight" in sd:
        return "t5xxl"
    if "encoder.block.0.layer.1.DenseReluDense.wi.weight" in sd:
        return "t5"
    return None


def model_sampling_for(config: FluxConfig) -> ModelSamplingFlux | ModelSamplingDiscreteFlow:
    """dev: ``ModelSamplingFlux(shift=1.15)``; schnell: discrete flow, shift 1, multiplier 1."""
    if config.guidance_embed:
        return ModelSamplingFlux(shift=1.15)
    return ModelSamplingDiscreteFlow(shift=1.0, multiplier=1.0)


def load_flux(path: str | os.PathLike[str], *, weight_dtype: str = "default",
              device: str | torch.device = "cpu", compute_dtype: torch.dtype | None = None) -> Flux:
    """Load a Flux transformer file (``UNETLoader``): fp8 files and ``weight_dtype`` fp8 stay fp8."""
    sd = open_state_dict(path)
    found = detect_flux(sd)
    if found is None:
        raise ModelLoadError(
            f"{path} holds no Flux transformer (no double_blocks.0.img_attn.norm.key_norm.scale / "
            "img_in.weight). Fix: pick a Flux file from diffusion_models/")
    config, prefix = found
    model = load_module(Flux, config, sd, prefix=prefix, weight_dtype=weight_dtype, device=device,
                        compute_dtype=compute_dtype, what=f"Flux transformer in {path}")
    return model  # type: ignore[return-value]


def load_t5(path: str | os.PathLike[str], *, device: str | torch.device = "cpu",
            compute_dtype: torch.dtype | None = None, sd: Mapping[str, Tensor] | None = None) -> T5Encoder:
    """Load a T5 v1.1 encoder file (``text_encoders/t5xxl_*``, fp16/bf16/fp8, ComfyUI's scaled fp8)."""
    sd = open_state_dict(path) if sd is None else sd
    try:
        config = T5Config.from_state_dict(sd)
    except KeyError as exc:
        raise ModelLoadError(f"{path} is not a T5 v1.1 encoder file (missing {exc})") from exc
    model = load_module(T5Encoder, config, sd, device=device, compute_dtype=compute_dtype,
                        ignore=T5Encoder.ignored_keys, what=f"T5 encoder in {path}", fp8_matmul=False)
    return model  # type: ignore[return-value]


@dataclass
class FluxTextEncoders:
    """The two text encoders of Flux: CLIP-L (pooled) and T5-XXL (context)."""

    clip_l: Any  # models.clip.CLIPTextModel
    t5: T5Encoder


def encode_flux_prompt(encoders: FluxTextEncoders, clip_l_text: str, t5_text: str | None = None, *,
                       min_length: int = 256, device: Any = None) -> tuple[Tensor, Tensor]:
    """Encode a prompt as ComfyUI's Flux text encoder: ``(t5 context [1, T, D], clip_l pooled [1, 768])``.

    ``t5_text`` defaults to ``clip_l_text`` (``CLIPTextEncode``); ``CLIPTextEncodeFlux`` passes both.
    """
    from comfy_notebook.models.prompt import encode_prompt
    from comfy_notebook.models.t5_tokenizer import encode_t5_tokens, tokenize_t5_prompt
    from comfy_notebook.models.tokenizer import get_tokenizer

    t5_row = tokenize_t5_prompt(clip_l_text if t5_text is None else t5_text, min_length=min_length)
    t5 = encoders.t5
    cond = encode_t5_tokens(t5, t5_row, device=device, dtype=getattr(t5, "compute_dtype", None))
    _, pooled = encode_prompt(encoders.clip_l, get_tokenizer(), clip_l_text, device=device)
    return cond, pooled


def flux_model_kwargs(options: Mapping[str, Any], batch: int = 1) -> dict[str, Tensor]:
    """Model inputs from a conditioning entry's options: ``y`` (pooled CLIP-L) and ``guidance``
    (3.5 when the entry has none; an explicit None means no guidance input)."""
    out: dict[str, Tensor] = {}
    pooled = options.get("pooled_output")
    if pooled is not None:
        out["y"] = pooled.reshape(-1, pooled.shape[-1]).float()
    g = options.get("guidance", DEFAULT_GUIDANCE)
    if g is not None:
        out["guidance"] = torch.full((batch,), float(g))
    return out


def apply_flux(model: Flux, x: Tensor, timestep: Tensor, context: Tensor, y: Tensor | None = None,
               guidance: Tensor | None = None) -> Tensor:
    """Run the transformer in its compute dtype and return the velocity in ``x``'s dtype."""
    dtype = getattr(model, "compute_dtype", x.dtype)
    dev = x.device
    out = model(x.to(dtype), timestep.to(dev).float(), context.to(dev, dtype),
                None if y is None else y.to(dev, dtype), None if guidance is None else guidance.to(dev).float())
    return out.to(x.dtype)


# -- the family (the families seam) ---------------------------------------------------------------
FLUX_LATENT = LatentFormat(
    name="Flux", scale_factor=LATENT_SCALE, shift_factor=LATENT_SHIFT, channels=LATENT_CHANNELS,
)
_CLIP_L = TextEncoderSpec("clip_l", layer=None, final_norm=True, pad_token=49407)
_T5XXL = TextEncoderSpec("t5xxl", pad_token=0, tokenizer="t5", min_length=256)


def t5_component(sd: Mapping[str, Any], prefix: str = "") -> Component:
    """A T5 v1.1 text-encoder component (``text_encoders/t5xxl_*``; fp8 files stay fp8)."""
    return Component("t5xxl", "clip", prefix, T5Config.from_state_dict(sd, prefix), "t5",
                     architecture=T5Encoder, dtypes=(torch.bfloat16, torch.float32))


class FluxFamily(Family):
    """Flux.1 dev and schnell: the transformer from diffusion_models/, CLIP-L + T5-XXL, 16-channel latents."""

    name = "flux"
    title = "Flux.1"
    latent_format = FLUX_LATENT
    text_encoders = (_CLIP_L, _T5XXL)
    clip_types = MappingProxyType({"flux": ("clip_l", "t5xxl")})
    memory_factor = 3.1 * 2  # ComfyUI's Flux memory_usage_factor 3.1 (SD1's is 1.0; ours 2.0)
    takes_model_inputs = True

    def matches(self, survey: Survey) -> bool:
        return detect_flux(survey.sd) is not None

    def detect(self, survey: Survey) -> Detected:
        found = detect_flux(survey.sd)
        assert found is not None
        config, prefix = found
        # bf16 first, as ComfyUI (supported_inference_dtypes, walked in order); fp16 is left out
        # so a policy's fp16 default for UNets does not apply (Flux activations overflow fp16)
        comps = {"unet": Component("unet", "unet", prefix, config, "bfl", architecture=Flux,
                                   dtypes=(torch.bfloat16, torch.float32))}
        if survey.vae_prefix is not None:
            comps["vae"] = survey.vae()
        return Detected(self, comps, {"guidance_embed": config.guidance_embed})

    def model_sampling(self, prediction: str | None = None, zsnr: bool = False,
                       guidance_embed: bool = True) -> Any:
        """dev: ``ModelSamplingFlux(1.15)``; schnell (no guidance input): discrete flow, shift 1, multiplier 1."""
        return model_sampling_for(FluxConfig(guidance_embed=guidance_embed))

    def combine(self, outputs: Mapping[str, tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor | None]:
        return outputs["t5xxl"][0], outputs["clip_l"][1]

    def model_inputs(self, unet_config: Any, params: Mapping[str, Any]) -> dict[str, Tensor]:
        return flux_model_kwargs(params, batch=1)

    def unet_lora_patches(self, lora_sd: Mapping[str, Tensor], unet_config: Any,
                          unet_keys: Any) -> tuple[dict[str, Any], list[str]]:
        """Flux LoRAs in ComfyUI/BFL, kohya and diffusers/PEFT styles (``families/flux_lora.py``)."""
        from comfy_notebook.families.flux_lora import flux_lora_patches

        return flux_lora_patches(lora_sd, unet_config, unet_keys)


FLUX = FluxFamily()
