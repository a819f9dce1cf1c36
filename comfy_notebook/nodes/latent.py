"""Tensor-only LATENT nodes: empty latents, upscaling, compositing, batches, blends, noise masks.

LATENT is a dict ``{"samples": [B, 4, H/8, W/8], "noise_mask"?: [B|1, 1, h, w],
"batch_index"?: list[int]}``; nodes copy the dict and replace what they change, as ComfyUI
does.  Names, inputs, defaults and behaviour follow ComfyUI's ``nodes.py``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from comfy_notebook.nodes.image import MAX_RESOLUTION, common_upscale

__all__ = [
    "NODE_CLASS_MAPPINGS",
    "NODE_DISPLAY_NAME_MAPPINGS",
    "EmptyLatentImage",
    "LatentBlend",
    "LatentComposite",
    "LatentFromBatch",
    "LatentUpscale",
    "LatentUpscaleBy",
    "RepeatLatentBatch",
    "SetLatentNoiseMask",
]

Latent = dict[str, Any]
_UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"]
_CROP_METHODS = ["disabled", "center"]


class EmptyLatentImage:
    """A batch of all-zero SD latents ``[B, 4, height/8, width/8]`` on the CPU."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "width": ("INT", {"default": 512, "min": 16, "max": MAX_RESOLUTION, "step": 8}),
                "height": ("INT", {"default": 512, "min": 16, "max": MAX_RESOLUTION, "step": 8}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096}),
            }
        }

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "generate"
    CATEGORY = "latent"
    DESCRIPTION = "Create a new batch of empty latent images to be denoised via sampling."

    def generate(self, width: int, height: int, batch_size: int = 1) -> tuple[Latent]:
        if width % 8 or height % 8:  # ComfyUI rounds down silently; we keep it and say so
            from comfy_notebook.engine import current_context

            current_context().warn(
                f"EmptyLatentImage: {width}x{height} is not a multiple of 8; the latent is "
                f"{width // 8 * 8}x{height // 8 * 8} px (rounded down, as ComfyUI does)")
        latent = torch.zeros([batch_size, 4, height // 8, width // 8], device="cpu")
        return ({"samples": latent},)


class LatentUpscale:
    """Resize latents to a pixel size (divided by 8); 0 on one side keeps the aspect ratio."""

    upscale_methods = _UPSCALE_METHODS
    crop_methods = _CROP_METHODS

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        size = ("INT", {"default": 512, "min": 0, "max": MAX_RESOLUTION, "step": 8})
        return {
            "required": {
                "samples": ("LATENT",),
                "upscale_method": (cls.upscale_methods,),
                "width": size,
                "height": size,
                "crop": (cls.crop_methods,),
            }
        }

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "upscale"
    CATEGORY = "latent"

    def upscale(
        self, samples: Latent, upscale_method: str, width: int, height: int, crop: str
    ) -> tuple[Latent]:
        if width == 0 and height == 0:
            return (samples,)
        s = samples.copy()
        x = samples["samples"]
        if width == 0:
            height = max(64, height)
            width = max(64, round(x.shape[-1] * height / x.shape[-2]))
        elif height == 0:
            width = max(64, width)
            height = max(64, round(x.shape[-2] * width / x.shape[-1]))
        else:
            width, height = max(64, width), max(64, height)
        s["samples"] = common_upscale(x, width // 8, height // 8, upscale_method, crop)
        return (s,)


class LatentUpscaleBy:
    """Resize latents by a factor."""

    upscale_methods = _UPSCALE_METHODS

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "samples": ("LATENT",),
                "upscale_method": (cls.upscale_methods,),
                "scale_by": ("FLOAT", {"default": 1.5, "min": 0.01, "max": 8.0, "step": 0.01}),
            }
        }

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "upscale"
    CATEGORY = "latent"

    def upscale(self, samples: Latent, upscale_method: str, scale_by: float) -> tuple[Latent]:
        s = samples.copy()
        x = samples["samples"]
        width = round(x.shape[-1] * scale_by)
        height = round(x.shape[-2] * scale_by)
        s["samples"] = common_upscale(x, width, height, upscale_method, "disabled")
        return (s,)


class LatentComposite:
    """Paste ``samples_from`` into ``samples_to`` at pixel ``(x, y)``, optionally feathered."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        pos = ("INT", {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 8})
        return {
            "required": {
                "samples_to": ("LATENT",),
                "samples_from": ("LATENT",),
                "x": pos,
                "y": pos,
                "feather": pos,
            }
        }

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "composite"
    CATEGORY = "latent"

    def composite(
        self,
        samples_to: Latent,
        samples_from: Latent,
        x: int,
        y: int,
        composite_method: str = "normal",
        feather: int = 0,
    ) -> tuple[Latent]:
        x, y, feather = x // 8, y // 8, feather // 8
        out = samples_to.copy()
        dst = samples_to["samples"]
        s = dst.clone()  # [B, C, H, W]
        src = samples_from["samples"][:, :, : dst.shape[2] - y, : dst.shape[3] - x]
        h, w = src.shape[2], src.shape[3]
        if feather == 0:
            s[:, :, y : y + h, x : x + w] = src
        else:
            mask = torch.ones_like(src)
            for t in range(feather):
                ramp = (1.0 / feather) * (t + 1)
                if y != 0:  # an edge inside the destination fades in
                    mask[:, :, t : t + 1, :] *= ramp
                if y + h < dst.shape[2]:
                    mask[:, :, h - 1 - t : h - t, :] *= ramp
                if x != 0:
                    mask[:, :, :, t : t + 1] *= ramp
                if x + w < dst.shape[3]:
                    mask[:, :, :, w - 1 - t : w - t] *= ramp
            region = s[:, :, y : y + h, x : x + w]
            s[:, :, y : y + h, x : x + w] = src * mask + region * (1.0 - mask)
        out["samples"] = s
        return (out,)


class LatentBlend:
    """``samples1 * blend_factor + samples2 * (1 - blend_factor)`` (samples2 resized if needed)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "samples1": ("LATENT",),
                "samples2": ("LATENT",),
                "blend_factor": ("FLOAT", {"default": 0.5, "min": 0, "max": 1, "step": 0.01}),
            }
        }

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "blend"
    CATEGORY = "_for_testing"

    def blend(
        self, samples1: Latent, samples2: Latent, blend_factor: float, blend_mode: str = "normal"
    ) -> tuple[Latent]:
        if blend_mode != "normal":
            raise ValueError(f"Unsupported blend mode: {blend_mode}; expected 'normal'")
        out = samples1.copy()
        a = samples1["samples"]
        b = samples2["samples"]
        if a.shape != b.shape:
            b = common_upscale(b, a.shape[3], a.shape[2], "bicubic", crop="center")
        out["samples"] = a * blend_factor + b * (1 - blend_factor)
        return (out,)


def _repeat_masks(masks: torch.Tensor, batch: int) -> torch.Tensor:
    """Tile a mask batch to at least ``batch`` entries and cut it there."""
    reps = math.ceil(batch / masks.shape[0])
    return masks.repeat((reps,) + (1,) * (masks.ndim - 1))[:batch]


class LatentFromBatch:
    """Take ``length`` latents starting at ``batch_index`` (negative counts from the end)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "samples": ("LATENT",),
                "batch_index": ("INT", {"default": 0, "min": 0, "max": 63}),
                "length": ("INT", {"default": 1, "min": 1, "max": 64}),
            }
        }

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "frombatch"
    CATEGORY = "latent/batch"

    def frombatch(self, samples: Latent, batch_index: int, length: int) -> tuple[Latent]:
        s = samples.copy()
        x = samples["samples"]
        n = x.shape[0]
        if batch_index < 0:
            batch_index += n
        batch_index = max(0, min(n - 1, batch_index))
        length = min(n - batch_index, length)
        s["samples"] = x[batch_index : batch_index + length].clone()
        if "noise_mask" in samples:
            masks = samples["noise_mask"]
            if masks.shape[0] == 1:
                s["noise_mask"] = masks.clone()
            else:
                if masks.shape[0] < n:
                    masks = _repeat_masks(masks, n)
                s["noise_mask"] = masks[batch_index : batch_index + length].clone()
        if "batch_index" not in s:
            s["batch_index"] = list(range(batch_index, batch_index + length))
        else:
            s["batch_index"] = samples["batch_index"][batch_index : batch_index + length]
        return (s,)


class RepeatLatentBatch:
    """Repeat the whole latent batch ``amount`` times (masks and batch indices follow)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "samples": ("LATENT",),
                "amount": ("INT", {"default": 1, "min": 1, "max": 64}),
            }
        }

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "repeat"
    CATEGORY = "latent/batch"

    def repeat(self, samples: Latent, amount: int) -> tuple[Latent]:
        s = samples.copy()
        x = samples["samples"]
        s["samples"] = x.repeat((amount,) + (1,) * (x.ndim - 1))
        if "noise_mask" in samples and samples["noise_mask"].shape[0] > 1:
            masks = samples["noise_mask"]
            if masks.shape[0] < x.shape[0]:
                masks = _repeat_masks(masks, x.shape[0])
            s["noise_mask"] = masks.repeat((amount,) + (1,) * (masks.ndim - 1))
        if "batch_index" in s:
            idx = s["batch_index"]
            offset = max(idx) - min(idx) + 1
            s["batch_index"] = idx + [v + i * offset for i in range(1, amount) for v in idx]
        return (s,)


class SetLatentNoiseMask:
    """Attach a MASK so that sampling only changes the masked area (inpainting)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"samples": ("LATENT",), "mask": ("MASK",)}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "set_mask"
    CATEGORY = "latent/inpaint"

    def set_mask(self, samples: Latent, mask: torch.Tensor) -> tuple[Latent]:
        s = samples.copy()
        s["noise_mask"] = mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1]))  # [B, 1, H, W]
        return (s,)


NODE_CLASS_MAPPINGS: dict[str, type] = {
    "EmptyLatentImage": EmptyLatentImage,
    "LatentUpscale": LatentUpscale,
    "LatentUpscaleBy": LatentUpscaleBy,
    "LatentComposite": LatentComposite,
    "LatentBlend": LatentBlend,
    "LatentFromBatch": LatentFromBatch,
    "RepeatLatentBatch": RepeatLatentBatch,
    "SetLatentNoiseMask": SetLatentNoiseMask,
}

NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {
    "EmptyLatentImage": "Empty Latent Image",
    "LatentUpscale": "Upscale Latent",
    "LatentUpscaleBy": "Upscale Latent By",
    "LatentComposite": "Latent Composite",
    "LatentBlend": "Latent Blend",
    "LatentFromBatch": "Latent From Batch",
    "RepeatLatentBatch": "Repeat Latent Batch",
    "SetLatentNoiseMask": "Set Latent Noise Mask",
}
