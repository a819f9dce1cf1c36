"""Random-weight Qwen-Image diffusion-model files in the released layout (re-exported by
``comfy_notebook.testing``).

ComfyUI's Qwen-Image workflows load ``diffusion_models/qwen_image_fp8_e4m3fn.safetensors`` (also
``qwen_image_bf16``, ``qwen_image_edit_fp8_e4m3fn``, ``qwen_image_edit_2509_fp8_e4m3fn``): the
MMDiT, keys without prefix (``img_in.weight``, ``txt_norm.weight``, ``transformer_blocks.N.*``).
Qwen-Image and its Edit models share the architecture, so the tiny presets differ only in their
weights (seed).  The tiny size keeps the key structure, the 16 latent channels and 2x2 patches.
"""

from __future__ import annotations

import dataclasses
import os
import zlib

import torch
from torch import Tensor

from comfy_notebook.models.qwen_image import ZERO_COND_MARK, QwenImage, QwenImageConfig

__all__ = ["QWEN_IMAGE_PRESETS", "make_qwen_image_file", "random_qwen_image_state_dict"]

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
