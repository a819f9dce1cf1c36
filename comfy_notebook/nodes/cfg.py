"""Post-CFG guidance nodes: ``CFGNorm`` (Qwen-Image-Edit's example) and ``CFGZeroStar``.

ComfyUI ``comfy_extras/nodes_cfg.py`` (Comfy-Org/ComfyUI@a125cd8), re-implemented: each node
returns a MODEL clone that runs one function after the CFG formula every step
(``set_model_sampler_post_cfg_function``; see ``sampling.guidance.PostCFGDenoiser``).

- ``CFGNorm(strength)``: the guided prediction is scaled down, per pixel, so that its norm over
  the channels does not exceed the conditional prediction's, then multiplied by ``strength``.
- ``CFGZeroStar`` (arXiv:2503.18886): the unconditional prediction is rescaled by the optimal
  projection ``alpha = <v_cond, v_uncond> / |v_uncond|^2`` of the velocities
  ``x - denoised`` before CFG.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from comfy_notebook.runtime.values import ModelValue

__all__ = ["CFGNorm", "CFGZeroStar", "cfg_norm", "cfg_zero_star"]


def cfg_norm(strength: float) -> Any:
    """The post-CFG function of ``CFGNorm``."""

    def fn(args: dict[str, Any]) -> Tensor:
        cond, guided = args["cond_denoised"], args["denoised"]
        scale = (torch.norm(cond, dim=1, keepdim=True)
                 / (torch.norm(guided, dim=1, keepdim=True) + 1e-8)).clamp(min=0.0, max=1.0)
        return guided * scale * strength

    return fn


def _optimized_scale(positive: Tensor, negative: Tensor) -> Tensor:
    p, n = positive.reshape(positive.shape[0], -1), negative.reshape(negative.shape[0], -1)
    dot = (p * n).sum(dim=1, keepdim=True)
    alpha = dot / ((n ** 2).sum(dim=1, keepdim=True) + 1e-8)
    return alpha.reshape([positive.shape[0]] + [1] * (positive.ndim - 1))


def cfg_zero_star(args: dict[str, Any]) -> Tensor:
    """The post-CFG function of ``CFGZeroStar``."""
    scale, x = args["cond_scale"], args["input"]
    cond, uncond, out = args["cond_denoised"], args["uncond_denoised"], args["denoised"]
    alpha = _optimized_scale(x - cond, x - uncond)
    return out + uncond * (alpha - 1.0) + scale * uncond * (1.0 - alpha)


class CFGNorm:
    """Caps the guided prediction's per-pixel channel norm at the conditional one's, times ``strength``."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"model": ("MODEL",),
                             "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.01})}}

    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("patched_model",)
    FUNCTION = "patch"
    CATEGORY = "advanced/guidance"
    EXPERIMENTAL = True

    def patch(self, model: ModelValue, strength: float) -> tuple[ModelValue]:
        return (model.with_post_cfg(cfg_norm(float(strength))),)


class CFGZeroStar:
    """CFG-Zero*: the unconditional prediction rescaled by its optimal projection before CFG."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"model": ("MODEL",)}}

    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("patched_model",)
    FUNCTION = "patch"
    CATEGORY = "advanced/guidance"

    def patch(self, model: ModelValue) -> tuple[ModelValue]:
        return (model.with_post_cfg(cfg_zero_star),)


NODE_CLASS_MAPPINGS = {"CFGNorm": CFGNorm, "CFGZeroStar": CFGZeroStar}
