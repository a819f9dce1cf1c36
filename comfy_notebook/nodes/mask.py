"""MASK nodes: conversions to and from images, solid/invert/crop/composite/feather/grow/threshold,
and the masked image/latent composites.

MASK is ``[B, H, W]`` float (values usually 0..1); IMAGE ``[B, H, W, C]``.  Names, inputs,
defaults and results follow ComfyUI's ``comfy_extras/nodes_mask.py`` (Comfy-Org/ComfyUI@a125cd8),
quirks included where a result depends on them (noted at each); the code is ours.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from comfy_notebook.nodes.image import MAX_RESOLUTION

__all__ = [
    "NODE_CLASS_MAPPINGS",
    "NODE_DISPLAY_NAME_MAPPINGS",
    "composite",
    "grow_mask",
    "repeat_to_batch",
]


def repeat_to_batch(t: torch.Tensor, batch: int) -> torch.Tensor:
    """First ``batch`` items of ``t``, repeating it when it has fewer (ComfyUI's rule)."""
    n = t.shape[0]
    if n > batch:
        return t[:batch]
    if n < batch:
        reps = -(-batch // n)
        return t.repeat(reps, *([1] * (t.ndim - 1)))[:batch]
    return t


def image_alpha_fix(destination: torch.Tensor, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Match channel counts: drop the source's extra channels or give the destination an opaque alpha."""
    if destination.shape[-1] < source.shape[-1]:
        source = source[..., :destination.shape[-1]]
    elif destination.shape[-1] > source.shape[-1]:
        destination = F.pad(destination, (0, 1), value=1.0)
    return destination, source


def composite(destination: torch.Tensor, source: torch.Tensor, x: int, y: int,
              mask: torch.Tensor | None = None, multiplier: int = 8,
              resize_source: bool = False) -> torch.Tensor:
    """Paste ``source`` into ``destination`` (both ``[B, C, H, W]``) at pixel ``(x, y)``.

    ``multiplier`` is pixels per element (8 for latents, 1 for images).  ``mask`` (any
    ``[..., h, w]``) is resized bilinearly to the source and blends source over destination.
    ``destination`` is modified in place and returned.
    """
    source = source.to(destination.device)
    if resize_source:
        source = F.interpolate(source, size=destination.shape[-2:], mode="bilinear")
    source = repeat_to_batch(source, destination.shape[0])
    x = max(-source.shape[-1] * multiplier, min(x, destination.shape[-1] * multiplier))
    y = max(-source.shape[-2] * multiplier, min(y, destination.shape[-2] * multiplier))
    left, top = x // multiplier, y // multiplier
    right, bottom = left + source.shape[-1], top + source.shape[-2]
    if mask is None:
        mask = torch.ones_like(source)
    else:
        mask = mask.to(destination.device).reshape(-1, 1, mask.shape[-2], mask.shape[-1])
        mask = F.interpolate(mask, size=source.shape[-2:], mode="bilinear")
        mask = repeat_to_batch(mask, source.shape[0])
    visible_w = destination.shape[-1] - left + min(0, x)
    visible_h = destination.shape[-2] - top + min(0, y)
    mask = mask[:, :, :visible_h, :visible_w]
    src = mask * source[..., :visible_h, :visible_w]
    dst = (1.0 - mask) * destination[..., top:bottom, left:right]
    destination[..., top:bottom, left:right] = src + dst
    return destination


class LatentCompositeMasked:
    """Paste one latent into another at (x, y) pixels, optionally through a mask."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        pos = ("INT", {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 8})
        return {"required": {"destination": ("LATENT",), "source": ("LATENT",), "x": pos, "y": pos,
                             "resize_source": ("BOOLEAN", {"default": False})},
                "optional": {"mask": ("MASK",)}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "composite"
    CATEGORY = "latent"

    def composite(self, destination: dict, source: dict, x: int, y: int, resize_source: bool,
                  mask: torch.Tensor | None = None) -> tuple[dict]:
        out = destination.copy()
        out["samples"] = composite(destination["samples"].clone(), source["samples"], x, y, mask, 8,
                                   resize_source)
        return (out,)


class ImageCompositeMasked:
    """Paste ``source`` into ``destination`` at (x, y), optionally through a mask."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        pos = ("INT", {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 1})
        return {"required": {"destination": ("IMAGE",), "source": ("IMAGE",), "x": pos, "y": pos,
                             "resize_source": ("BOOLEAN", {"default": False})},
                "optional": {"mask": ("MASK",)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "composite"
    CATEGORY = "image"

    def composite(self, destination: torch.Tensor, source: torch.Tensor, x: int, y: int,
                  resize_source: bool, mask: torch.Tensor | None = None) -> tuple[torch.Tensor]:
        destination, source = image_alpha_fix(destination, source)
        dst = destination.clone().movedim(-1, 1)  # [B, C, H, W]
        out = composite(dst, source.movedim(-1, 1), x, y, mask, 1, resize_source)
        return (out.movedim(1, -1),)


class MaskToImage:
    """MASK ``[B, H, W]`` -> grey IMAGE ``[B, H, W, 3]``."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"mask": ("MASK",)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "mask_to_image"
    CATEGORY = "mask"

    def mask_to_image(self, mask: torch.Tensor) -> tuple[torch.Tensor]:
        m = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).movedim(1, -1)  # [B, H, W, 1]
        return (m.expand(-1, -1, -1, 3),)


_CHANNELS = ["red", "green", "blue", "alpha"]


class ImageToMask:
    """One channel of an IMAGE as a MASK."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"image": ("IMAGE",), "channel": (list(_CHANNELS),)}}

    RETURN_TYPES = ("MASK",)
    FUNCTION = "image_to_mask"
    CATEGORY = "mask"

    def image_to_mask(self, image: torch.Tensor, channel: str) -> tuple[torch.Tensor]:
        return (image[:, :, :, _CHANNELS.index(channel)],)


class SolidMask:
    """A ``[1, height, width]`` mask filled with ``value``."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        size = ("INT", {"default": 512, "min": 1, "max": MAX_RESOLUTION, "step": 1})
        return {"required": {"value": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}),
                             "width": size, "height": size}}

    RETURN_TYPES = ("MASK",)
    FUNCTION = "solid"
    CATEGORY = "mask"

    def solid(self, value: float, width: int, height: int) -> tuple[torch.Tensor]:
        return (torch.full((1, height, width), value, dtype=torch.float32),)


class InvertMask:
    """``1 - mask``."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"mask": ("MASK",)}}

    RETURN_TYPES = ("MASK",)
    FUNCTION = "invert"
    CATEGORY = "mask"

    def invert(self, mask: torch.Tensor) -> tuple[torch.Tensor]:
        return (1.0 - mask,)


class CropMask:
    """The ``width x height`` region of the mask at (x, y) (clipped at the mask's edges)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        pos = ("INT", {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 1})
        size = ("INT", {"default": 512, "min": 1, "max": MAX_RESOLUTION, "step": 1})
        return {"required": {"mask": ("MASK",), "x": pos, "y": pos, "width": size, "height": size}}

    RETURN_TYPES = ("MASK",)
    FUNCTION = "crop"
    CATEGORY = "mask"

    def crop(self, mask: torch.Tensor, x: int, y: int, width: int, height: int) -> tuple[torch.Tensor]:
        mask = mask.reshape(-1, mask.shape[-2], mask.shape[-1])
        return (mask[:, y:y + height, x:x + width],)


_MASK_OPS = ["multiply", "add", "subtract", "and", "or", "xor"]


class MaskComposite:
    """Combine ``source`` into ``destination`` at (x, y) with an arithmetic or logical operation."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        pos = ("INT", {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 1})
        return {"required": {"destination": ("MASK",), "source": ("MASK",), "x": pos, "y": pos,
                             "operation": (list(_MASK_OPS),)}}

    RETURN_TYPES = ("MASK",)
    FUNCTION = "combine"
    CATEGORY = "mask"

    def combine(self, destination: torch.Tensor, source: torch.Tensor, x: int, y: int,
                operation: str) -> tuple[torch.Tensor]:
        out = destination.reshape(-1, destination.shape[-2], destination.shape[-1]).clone()
        source = source.reshape(-1, source.shape[-2], source.shape[-1])
        right = min(x + source.shape[-1], out.shape[-1])
        bottom = min(y + source.shape[-2], out.shape[-2])
        src = source[:, :bottom - y, :right - x]
        dst = out[:, y:bottom, x:right]
        if operation == "multiply":
            res = dst * src
        elif operation == "add":
            res = dst + src
        elif operation == "subtract":
            res = dst - src
        else:  # logical operations on the rounded masks
            a, b = dst.round().bool(), src.round().bool()
            fn = {"and": torch.bitwise_and, "or": torch.bitwise_or, "xor": torch.bitwise_xor}[operation]
            res = fn(a, b).float()
        out[:, y:bottom, x:right] = res
        return (out.clamp(0.0, 1.0),)


class FeatherMask:
    """Fade the mask linearly towards each edge over ``left/top/right/bottom`` pixels."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        n = ("INT", {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 1})
        return {"required": {"mask": ("MASK",), "left": n, "top": n, "right": n, "bottom": n}}

    RETURN_TYPES = ("MASK",)
    FUNCTION = "feather"
    CATEGORY = "mask"

    def feather(self, mask: torch.Tensor, left: int, top: int, right: int,
                bottom: int) -> tuple[torch.Tensor]:
        out = mask.reshape(-1, mask.shape[-2], mask.shape[-1]).clone()
        w, h = out.shape[-1], out.shape[-2]
        left, right, top, bottom = min(left, w), min(right, w), min(top, h), min(bottom, h)
        for i in range(left):
            out[:, :, i] *= (i + 1.0) / left
        # ComfyUI indexes the far edges with -i, so step 0 scales the *first* column/row
        # (-0 == 0) and the last one is never scaled; kept for identical results.
        for i in range(right):
            out[:, :, -i] *= (i + 1) / right
        for i in range(top):
            out[:, i, :] *= (i + 1) / top
        for i in range(bottom):
            out[:, -i, :] *= (i + 1) / bottom
        return (out,)


def grow_mask(mask: torch.Tensor, expand: int, tapered_corners: bool = True) -> torch.Tensor:
    """Grey dilation (``expand`` > 0) or erosion (< 0), ``|expand|`` times with a 3x3 footprint.

    The footprint is a cross with tapered corners, else the full square; edges behave as
    scipy's ``grey_dilation`` / ``grey_erosion`` (reflect mode: the edge pixel repeats).
    mask: [B, H, W] -> [B, H, W]
    """
    m = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).float()
    sign = 1.0 if expand >= 0 else -1.0
    m = m * sign  # erosion = -dilation(-m)
    for _ in range(abs(expand)):
        padded = F.pad(m, (1, 1, 1, 1), mode="replicate")
        if tapered_corners:
            c = padded[:, :, 1:-1, 1:-1]
            m = torch.stack([c, padded[:, :, :-2, 1:-1], padded[:, :, 2:, 1:-1],
                             padded[:, :, 1:-1, :-2], padded[:, :, 1:-1, 2:]]).amax(0)
        else:
            m = F.max_pool2d(padded, 3, stride=1)
    return (m * sign).reshape(-1, mask.shape[-2], mask.shape[-1]).to(mask.dtype)


class GrowMask:
    """Grow (positive ``expand``) or shrink (negative) the mask by whole pixels."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "mask": ("MASK",),
            "expand": ("INT", {"default": 0, "min": -MAX_RESOLUTION, "max": MAX_RESOLUTION, "step": 1}),
            "tapered_corners": ("BOOLEAN", {"default": True}),
        }}

    RETURN_TYPES = ("MASK",)
    FUNCTION = "expand_mask"
    CATEGORY = "mask"

    def expand_mask(self, mask: torch.Tensor, expand: int, tapered_corners: bool) -> tuple[torch.Tensor]:
        return (grow_mask(mask, expand, tapered_corners),)


class ThresholdMask:
    """1 where the mask exceeds ``value``, else 0."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"mask": ("MASK",),
                             "value": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01})}}

    RETURN_TYPES = ("MASK",)
    FUNCTION = "image_to_mask"
    CATEGORY = "mask"

    def image_to_mask(self, mask: torch.Tensor, value: float) -> tuple[torch.Tensor]:
        return ((mask > value).float(),)


NODE_CLASS_MAPPINGS: dict[str, type] = {
    "LatentCompositeMasked": LatentCompositeMasked,
    "ImageCompositeMasked": ImageCompositeMasked,
    "MaskToImage": MaskToImage,
    "ImageToMask": ImageToMask,
    "SolidMask": SolidMask,
    "InvertMask": InvertMask,
    "CropMask": CropMask,
    "MaskComposite": MaskComposite,
    "FeatherMask": FeatherMask,
    "GrowMask": GrowMask,
    "ThresholdMask": ThresholdMask,
}

NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {
    "ImageToMask": "Convert Image to Mask",
    "MaskToImage": "Convert Mask to Image",
}
