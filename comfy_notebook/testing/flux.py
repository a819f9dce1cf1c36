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

import torch

from comfy_notebook.models.flux import Flux, FluxConfig
from comfy_notebook.models.t5 import T5Config, T5Encoder
from comfy_notebook.testing._core import _meta, _save, random_state_dict

__all__ = ["FLUX_CONTROLNET_KINDS", "FLUX_PRESETS", "make_flux_controlnet", "make_flux_file", "make_t5_file"]

FLUX_PRESETS = ("flux-dev-tiny", "flux-schnell-tiny")
FLUX_CONTROLNET_KINDS = ("xlabs", "mistoline", "instantx", "union", "inpaint")


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

    sd = random_state_dict(_meta(T5Encoder, config or T5Config.tiny()), seed, torch.float32, "t5")
    return _save({k: v.to(dtype) for k, v in sd.items()}, path)


def make_flux_controlnet(
    path: str | os.PathLike[str],
    kind: str = "instantx",
    seed: int = 0,
    *,
    dtype: torch.dtype = torch.bfloat16,
    config: FluxConfig | None = None,
    union_modes: int = 7,
) -> str:
    """Write a random-weight Flux ControlNet in a released layout (``models/controlnet/``). Returns the path.

    ``kind``:

    - ``"xlabs"``: XLabs-AI's files (``flux-canny-controlnet-v3``): BFL-named double blocks,
      ``input_hint_block.*``, ``pos_embed_input``, ``controlnet_blocks.N`` (no single blocks);
    - ``"mistoline"``: TheMistoAI's file: ``input_cond_block.encoder.*``, ``controlnet_blocks.N.linear``,
      ``single_controlnet_blocks.N.linear``;
    - ``"instantx"``: diffusers ``FluxControlNetModel`` keys (InstantX canny/depth):
      ``transformer_blocks.N.attn.to_q`` ..., ``controlnet_x_embedder``, ``controlnet_blocks.N``;
    - ``"union"``: the same plus ``controlnet_mode_embedder`` (InstantX / Shakker Union Pro, ``union_modes`` modes);
    - ``"inpaint"``: the same with a 17-channel latent input (AliMama's inpainting ControlNet).

    ``config`` sizes the backbone (default: the tiny Flux's widths; one double block, and one single
    block except for XLabs).
    """
    from comfy_notebook.families.flux_control import flux_control_to_diffusers
    from comfy_notebook.models.controlnet_flux import FluxControlNet, FluxControlNetConfig

    if kind not in FLUX_CONTROLNET_KINDS:
        raise ValueError(f"unknown Flux ControlNet kind {kind!r}; expected one of {FLUX_CONTROLNET_KINDS}")
    if config is None:
        import dataclasses

        config = dataclasses.replace(FluxConfig.tiny(), depth_single_blocks=0 if kind == "xlabs" else 1)
    arch = kind if kind in ("xlabs", "mistoline") else "instantx"
    cn = FluxControlNetConfig(flux=config, kind=arch, latent_channels=17 if kind == "inpaint" else 16,
                              union_modes=union_modes if kind == "union" else 0)
    sd = random_state_dict(_meta(FluxControlNet, cn), seed, torch.float32, f"flux-controlnet-{kind}")
    if arch == "instantx":
        sd = flux_control_to_diffusers(sd)
    elif arch == "mistoline":
        sd = {("single_controlnet_blocks." + k[len("controlnet_single_blocks."):])
              if k.startswith("controlnet_single_blocks.") else k: v for k, v in sd.items()}
    return _save({k: v.to(dtype) for k, v in sd.items()}, path)
