"""Random-weight Qwen-Image files in the released layouts (re-exported by ``comfy_notebook.testing``).

ComfyUI's Qwen-Image workflows load three separate files:

- ``diffusion_models/qwen_image_fp8_e4m3fn.safetensors`` (also ``qwen_image_bf16``,
  ``qwen_image_edit_fp8_e4m3fn``, ``qwen_image_edit_2509_fp8_e4m3fn``): the MMDiT, keys without
  prefix (``img_in.weight``, ``txt_norm.weight``, ``transformer_blocks.N.*``).  Qwen-Image and its
  Edit models share the architecture, so the tiny presets differ only in their weights (seed).
  The tiny size keeps the key structure, the 16 latent channels and 2x2 patches.
- ``text_encoders/qwen_2.5_vl_7b.safetensors``: Qwen2.5-VL, the language model under ``model.``
  and the vision tower under ``visual.`` (Hugging Face names).  The tiny preset keeps that
  structure, the real Qwen2.5-VL vocabulary (so the shipped tokenizer's ids, the image pad among
  them, index the embedding) and a width equal to the tiny transformer's context width (64), so the two presets pair.
- ``vae/qwen_image_vae.safetensors``: the Wan-2.1 causal 3-D VAE with ComfyUI ``WanVAE`` key
  names, no prefix (``encoder.conv1.weight``, ``encoder.downsamples.N.residual.2.weight``,
  ``decoder.middle.0.residual.0.gamma``, ``conv1.*``/``conv2.*`` ...).  The tiny preset keeps the
  key structure, the 16 latent channels and the 8x downscaling with tiny widths.
"""

from __future__ import annotations

import dataclasses
import os
import zlib

import torch
from torch import Tensor

from comfy_notebook.models.qwen25vl import Qwen25VLConfig, Qwen25VLEncoder
from comfy_notebook.models.qwen25vl_vision import VisionConfig
from comfy_notebook.models.qwen_image import ZERO_COND_MARK, QwenImage, QwenImageConfig
from comfy_notebook.models.wan_vae import WanVAE, WanVAEConfig

__all__ = ["QWEN25VL_TINY", "QWEN_IMAGE_PRESETS", "WAN_VAE_PRESETS", "make_qwen25vl_file", "make_qwen_image_file",
           "make_wan_vae_file", "random_qwen_image_state_dict", "random_wan_vae_state_dict"]

#: preset name -> (configuration, seed offset: the Edit preset is another set of weights)
QWEN_IMAGE_PRESETS: dict[str, tuple[QwenImageConfig, int]] = {
    "qwen-image-tiny": (QwenImageConfig.tiny(), 0),
    "qwen-image-edit-tiny": (QwenImageConfig.tiny(), 1),
    "qwen-image-edit-2511-tiny": (dataclasses.replace(QwenImageConfig.tiny(), zero_cond_t=True), 2),
}


def random_qwen_image_state_dict(config: QwenImageConfig, seed: int = 0,
                                 dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """Random weights with the released keys: matrices ~ N(0, 1/fan_in), RMS-norm gains
    1 + N(0, 0.1^2), biases N(0, 0.1^2)."""
    with torch.device("meta"):
        module = QwenImage(config)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(b"qwen_image"))
    out: dict[str, Tensor] = {}
    for key, like in sorted(module.state_dict().items()):
        t = torch.randn(tuple(like.shape), generator=gen)
        if like.ndim >= 2:
            t *= like[0].numel() ** -0.5
        elif "norm" in key.rsplit(".", 2)[-2]:  # txt_norm / attn.norm_q ... weights
            t = 1.0 + 0.1 * t
        else:
            t *= 0.1
        out[key] = t.to(dtype)
    return out


def make_qwen_image_file(
    path: str | os.PathLike[str],
    preset: str = "qwen-image-tiny",
    seed: int = 0,
    *,
    dtype: torch.dtype = torch.bfloat16,
    config: QwenImageConfig | None = None,
    prefix: str = "",
) -> str:
    """Write a random-weight Qwen-Image transformer file (``diffusion_models/`` layout). Returns the path.

    ``preset``: ``qwen-image-tiny``, ``qwen-image-edit-tiny`` or ``qwen-image-edit-2511-tiny`` (with
    the ``__index_timestep_zero__`` marker); ``config`` overrides its sizes.
    ``dtype`` may be an fp8 type (``qwen_image_fp8_e4m3fn``: weights rounded from float32);
    ``prefix`` ``"model.diffusion_model."`` writes a checkpoint-style key layout.
    """
    from safetensors.torch import save_file

    if preset not in QWEN_IMAGE_PRESETS:
        raise ValueError(f"unknown Qwen-Image preset {preset!r}; known: {sorted(QWEN_IMAGE_PRESETS)}")
    base, offset = QWEN_IMAGE_PRESETS[preset]
    config = config or base
    sd = {k: v.to(dtype) for k, v in random_qwen_image_state_dict(config, seed * 3 + offset).items()}
    if config.zero_cond_t:  # Edit-2511's marker (an empty tensor, as Comfy-Org's files carry it)
        sd[ZERO_COND_MARK] = torch.empty(0)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file({prefix + k: v.contiguous() for k, v in sd.items()}, str(path))
    return str(path)


# --- the text encoder: Qwen2.5-VL -----------------------------------------------------------------

#: 2 layers, 48 wide (3 query heads of 16, 1 key/value head), the real 152064-token vocabulary,
#: a 4-block vision tower 64 wide whose merger outputs 48
QWEN25VL_TINY = Qwen25VLConfig(
    vocab_size=152064, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
    intermediate_size=96, mrope_section=(2, 3, 3),
    vision=dataclasses.replace(VisionConfig.tiny(), out_hidden_size=64))


def make_qwen25vl_file(path: str | os.PathLike[str], seed: int = 0, *, dtype: torch.dtype = torch.bfloat16,
                       config: Qwen25VLConfig | None = None, vision: bool = True) -> str:
    """Write a random-weight Qwen2.5-VL file (``text_encoders/qwen_2.5_vl_7b*`` layout). Returns the path.

    ``vision=False`` leaves the ``visual.`` keys out (a text-only file).
    """
    from safetensors.torch import save_file

    from comfy_notebook.testing._core import random_state_dict

    config = config or QWEN25VL_TINY
    with torch.device("meta"):
        module = Qwen25VLEncoder(config if vision else config.without_vision())
    sd = random_state_dict(module, seed, torch.float32, "qwen25vl")
    gen = torch.Generator().manual_seed(seed)
    for k in sd:  # RMS norm weights near 1
        if k.endswith(("norm.weight", "norm1.weight", "norm2.weight", "ln_q.weight")):
            sd[k] = 1.0 + 0.1 * torch.randn(sd[k].shape, generator=gen)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file({k: v.to(dtype).contiguous() for k, v in sd.items()}, str(path))
    return str(path)


# --- the VAE: Wan 2.1 -----------------------------------------------------------------------------

#: preset name -> configuration
WAN_VAE_PRESETS = {"qwen-image-vae-tiny": WanVAEConfig.tiny(), "qwen-image-vae": WanVAEConfig.qwen_image()}


def random_wan_vae_state_dict(config: WanVAEConfig, seed: int = 0,
                              dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """Random weights with the released keys: kernels ~ N(0, 1/fan_in) (fan-in of the slice a
    single frame meets, so activations stay O(1)), norm gains 1 + N(0, 0.1^2), biases N(0, 0.1^2)."""
    with torch.device("meta"):
        module = WanVAE(config)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(b"wan_vae"))
    out: dict[str, Tensor] = {}
    for key, like in sorted(module.state_dict().items()):
        shape = tuple(like.shape)
        t = torch.randn(shape, generator=gen)
        if key.endswith(".gamma"):
            t = 1.0 + 0.1 * t
        elif len(shape) == 5:
            t *= (shape[1] * shape[3] * shape[4]) ** -0.5
        elif len(shape) >= 2:
            t *= like[0].numel() ** -0.5
        else:
            t *= 0.1
        out[key] = t.to(dtype)
    return out


def make_wan_vae_file(
    path: str | os.PathLike[str],
    preset: str = "qwen-image-vae-tiny",
    seed: int = 0,
    *,
    dtype: torch.dtype = torch.bfloat16,
    config: WanVAEConfig | None = None,
) -> str:
    """Write a random-weight ``vae/qwen_image_vae.safetensors``-layout file. Returns the path.

    ``preset``: ``qwen-image-vae-tiny`` or ``qwen-image-vae`` (real size, 254 MB in bf16);
    ``config`` overrides it.  The released file is bf16.
    """
    from safetensors.torch import save_file

    if config is None:
        if preset not in WAN_VAE_PRESETS:
            raise ValueError(f"unknown Wan VAE preset {preset!r}; known: {sorted(WAN_VAE_PRESETS)}")
        config = WAN_VAE_PRESETS[preset]
    tensors = random_wan_vae_state_dict(config, seed, dtype)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return str(path)
