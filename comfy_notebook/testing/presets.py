"""The SD-family test checkpoint layouts (SD1, SD2, SDXL, unCLIP): :class:`Preset`, :func:`get_preset`.

``*-tiny`` presets keep the released key structure with tiny widths; ``*-full`` ones have the real
sizes (for shape tests).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from comfy_notebook.models.clip import CLIPTextConfig
from comfy_notebook.models.unet import UNetConfig
from comfy_notebook.models.vae import VAEConfig

__all__ = ["PRESETS", "Preset", "get_preset", "preset_configs"]


@dataclass(frozen=True)
class Preset:
    """A test checkpoint layout: configs, and each text encoder's (prefix, key layout, config)."""

    family: str
    unet: UNetConfig
    vae: VAEConfig
    encoders: dict[str, tuple[str, str, CLIPTextConfig]]
    v_probe_std: float | None = None  # SD2: std of the norm bias ComfyUI's v detection reads
    markers: tuple[str, ...] = ()  # SDXL: "v_pred" / "ztsnr" marker keys
    full: bool = False
    vision: Any = None  # unCLIP: the image tower's CLIPVisionConfig (under embedder.model.visual.)


def _tiny_clip(activation: str = "quick_gelu", projection: bool = False) -> CLIPTextConfig:
    return dataclasses.replace(CLIPTextConfig.tiny(), activation=activation,
                               projection_dim=64 if projection else None)


_SD1_CLIP = "cond_stage_model.transformer."
_SD2_CLIP = "cond_stage_model.model."
_XL_L, _XL_G, _REFINER_G = ("conditioner.embedders.0.transformer.", "conditioner.embedders.1.model.",
                            "conditioner.embedders.0.model.")


def _sd2_tiny() -> UNetConfig:
    # four levels with two res blocks: output block 11 exists (ComfyUI's v-prediction probe)
    return UNetConfig(model_channels=64, channel_mult=(1, 1, 1, 1), num_res_blocks=2,
                      transformer_depth=(1, 1, 1, 0), context_dim=64, num_heads=-1,
                      num_head_channels=64, use_linear_in_transformer=True)


def _sdxl_tiny(refiner: bool) -> UNetConfig:
    ctx = 64 if refiner else 128  # CLIP-G alone, or CLIP-L + CLIP-G
    adm = 64 + (5 if refiner else 6) * 256  # pooled CLIP-G + 256-wide Fourier features
    return UNetConfig(model_channels=64, channel_mult=(1, 2), num_res_blocks=1, transformer_depth=(0, 1),
                      context_dim=ctx, num_heads=-1, num_head_channels=64, use_linear_in_transformer=True,
                      adm_in_channels=adm)


def get_preset(name: str) -> Preset:
    """The layout of a preset name (see :data:`PRESETS`)."""
    tiny = VAEConfig.tiny()
    if name in ("sd1-tiny", "sd1-tiny-linear"):
        unet = UNetConfig.sd1_tiny() if name == "sd1-tiny" else UNetConfig.sd1_tiny_linear()
        clip = _tiny_clip()
        return Preset("sd1", dataclasses.replace(unet, context_dim=clip.width), tiny,
                      {"clip_l": (_SD1_CLIP, "hf", clip)})
    if name == "sd1-full":
        return Preset("sd1", UNetConfig.sd15(), VAEConfig.sd(), {"clip_l": (_SD1_CLIP, "hf", CLIPTextConfig.sd1())},
                      full=True)
    if name == "sd1-comfyui":
        # The smallest SD1 file ComfyUI itself loads: it recognises SD1.5 by a 320-channel UNet
        # with 768-wide context and builds CLIP-L and the VAE at their real sizes whatever the
        # file holds, so those two are real-sized here (about 0.4 GB in fp16).
        small = UNetConfig(model_channels=320, channel_mult=(1,), num_res_blocks=1,
                           transformer_depth=(1,), context_dim=768)
        return Preset("sd1", small, VAEConfig.sd(), {"clip_l": (_SD1_CLIP, "hf", CLIPTextConfig.sd1())},
                      full=True)
    if name in ("sd2", "sd2-v"):
        return Preset("sd2", _sd2_tiny(), tiny, {"clip_h": (_SD2_CLIP, "openclip", _tiny_clip("gelu", True))},
                      v_probe_std=0.2 if name == "sd2-v" else 0.03)
    if name == "sd2-full":
        return Preset("sd2", UNetConfig.sd21(), VAEConfig.sd(),
                      {"clip_h": (_SD2_CLIP, "openclip", CLIPTextConfig.clip_h())}, full=True)
    if name == "sdxl":
        return Preset("sdxl", _sdxl_tiny(False), tiny, {"clip_l": (_XL_L, "hf", _tiny_clip()),
                                                        "clip_g": (_XL_G, "openclip", _tiny_clip("gelu", True))})
    if name == "sdxl-full":
        return Preset("sdxl", UNetConfig.sdxl(), VAEConfig.sd(),
                      {"clip_l": (_XL_L, "hf", CLIPTextConfig.sd1()),
                       "clip_g": (_XL_G, "openclip", CLIPTextConfig.clip_g())}, full=True)
    if name == "sdxl-refiner":
        return Preset("sdxl_refiner", _sdxl_tiny(True), tiny,
                      {"clip_g": (_REFINER_G, "openclip", _tiny_clip("gelu", True))})
    if name == "sdxl-refiner-full":
        return Preset("sdxl_refiner", UNetConfig.sdxl_refiner(), VAEConfig.sd(),
                      {"clip_g": (_REFINER_G, "openclip", CLIPTextConfig.clip_g())}, full=True)
    if name in ("sd2-unclip", "sd2-unclip-v"):
        from comfy_notebook.models.clip_vision import CLIPVisionConfig

        vision = CLIPVisionConfig(width=64, layers=2, heads=16, intermediate=128, patch_size=7,
                                  image_size=28, projection_dim=32, activation="quick_gelu")
        unet = dataclasses.replace(_sd2_tiny(), adm_in_channels=2 * vision.projection_dim)
        return Preset("sd2_unclip", unet, tiny, {"clip_h": (_SD2_CLIP, "openclip", _tiny_clip("gelu", True))},
                      v_probe_std=0.2 if name == "sd2-unclip-v" else 0.03, vision=vision)
    raise ValueError(f"unknown preset {name!r}; expected one of {PRESETS}")


PRESETS = ("sd1-tiny", "sd1-tiny-linear", "sd1-full", "sd1-comfyui", "sd2", "sd2-v", "sd2-full", "sdxl", "sdxl-full",
           "sdxl-refiner", "sdxl-refiner-full", "sd2-unclip", "sd2-unclip-v")


def preset_configs(preset: str) -> tuple[UNetConfig, VAEConfig, Any]:
    """(UNet, VAE, first text encoder) configurations of a preset name."""
    p = get_preset(preset)
    return p.unet, p.vae, next(iter(p.encoders.values()))[2]
