"""The helpers every random-weight writer shares: seeded random weights, schedule buffers, saving.

Nothing here downloads anything.  Every tensor is drawn per key from a generator seeded by
``(seed, part)``, so files are deterministic for a given seed and preset.
"""

from __future__ import annotations

import os
import zlib
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["random_state_dict", "schedule_buffers"]


def random_state_dict(
    module: nn.Module, seed: int, dtype: torch.dtype = torch.float32, tag: str = ""
) -> dict[str, Tensor]:
    """Random weights for ``module`` (may live on ``meta``): key -> tensor.

    Matrices and conv kernels ~ N(0, 1/fan_in) so activations stay O(1); norm weights
    1 + N(0, 0.1^2); other vectors N(0, 0.1^2).  Integer buffers are left out.
    """
    norm_params = {
        f"{name}.{p}" if name else p
        for name, m in module.named_modules()
        if isinstance(m, (nn.GroupNorm, nn.LayerNorm))
        for p in ("weight",)
    }
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(tag.encode()))
    out: dict[str, Tensor] = {}
    for key, like in sorted(module.state_dict().items()):
        if not like.is_floating_point():
            continue
        shape = tuple(like.shape)
        t = torch.randn(shape, generator=gen)
        if len(shape) >= 2:
            t *= (like[0].numel()) ** -0.5
        elif key in norm_params or key.endswith((".scale", "layer_norm.weight")):  # incl. RMS norms
            t = 1.0 + 0.1 * t
        else:
            t *= 0.1
        out[key] = t.to(dtype)
    return out


def schedule_buffers(beta_start: float = 0.00085, beta_end: float = 0.012, n: int = 1000) -> dict[str, Tensor]:
    """The DDPM schedule buffers real LDM files carry (``betas``, ``alphas_cumprod``, ...)."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float64) ** 2
    alphas = torch.cumprod(1.0 - betas, 0)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas[:-1]])
    bufs = {
        "betas": betas, "alphas_cumprod": alphas, "alphas_cumprod_prev": prev,
        "sqrt_alphas_cumprod": alphas.sqrt(), "sqrt_one_minus_alphas_cumprod": (1 - alphas).sqrt(),
        "log_one_minus_alphas_cumprod": (1 - alphas).log(),
        "sqrt_recip_alphas_cumprod": (1 / alphas).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1 / alphas - 1).sqrt(),
    }
    return {k: v.float() for k, v in bufs.items()}


def _meta(cls: type[nn.Module], config: Any) -> nn.Module:
    with torch.device("meta"):
        return cls(config)


def _clip_tensors(clip_config: Any, seed: int, dtype: torch.dtype, layout: str = "hf",
                  tag: str = "clip") -> dict[str, Tensor]:
    from comfy_notebook.models.clip import CLIPTextModel
    from comfy_notebook.models.convert import hf_to_openclip

    sd = random_state_dict(_meta(CLIPTextModel, clip_config), seed, dtype, tag)
    if layout == "openclip":
        out = hf_to_openclip(sd)
        out["logit_scale"] = torch.tensor(4.6052, dtype=dtype)
        return out
    n = clip_config.max_positions
    sd["text_model.embeddings.position_ids"] = torch.arange(n, dtype=torch.int64)[None]
    return sd


def _save(tensors: dict[str, Tensor], path: str | os.PathLike[str]) -> str:
    """Write ``tensors`` as a safetensors file (folders made as needed); returns the path."""
    from safetensors.torch import save_file

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return str(path)
