"""Tensor-only IMAGE nodes: scaling, inversion, batching, outpaint padding, empty images, crops.

IMAGE is a float tensor ``[B, H, W, C]`` in 0..1 on the CPU (ComfyUI's intermediate device);
MASK is ``[B, H, W]``.  Names, inputs, defaults and behaviour follow ComfyUI's ``nodes.py`` and
``comfy_extras/nodes_images.py``; the resize helper follows ``comfy/utils.py common_upscale``
(``torch.nn.functional.interpolate``, ``bislerp`` for latents, ``lanczos`` through PIL).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = [
    "MAX_RESOLUTION",
    "NODE_CLASS_MAPPINGS",
    "NODE_DISPLAY_NAME_MAPPINGS",
    "EmptyImage",
    "ImageBatch",
    "ImageCrop",
    "ImageInvert",
    "ImagePadForOutpaint",
    "ImageScale",
    "ImageScaleBy",
    "bislerp",
    "common_upscale",
    "lanczos",
]

MAX_RESOLUTION = 16384


# ---------------------------------------------------------------------------------------------
# Resize helpers (ComfyUI comfy/utils.py behaviour, our code)
# ---------------------------------------------------------------------------------------------


def _slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of rows of ``a`` and ``b`` ([N, C]) by ``t`` ([N, 1]).

    Directions are slerped and norms interpolated linearly; nearly equal directions keep
    ``a``, nearly opposite ones fall back to linear interpolation (ComfyUI's rule).
    """
    c = a.shape[-1]
    na = torch.linalg.vector_norm(a, dim=-1, keepdim=True)  # [N, 1]
    nb = torch.linalg.vector_norm(b, dim=-1, keepdim=True)
    ua = torch.where(na.expand(-1, c) == 0, torch.zeros_like(a), a / na)
    ub = torch.where(nb.expand(-1, c) == 0, torch.zeros_like(b), b / nb)
    dot = (ua * ub).sum(1)  # [N]
    omega = torch.acos(dot)
    so = torch.sin(omega)
    ts = t.squeeze(1)
    out: torch.Tensor = (torch.sin((1.0 - ts) * omega) / so).unsqueeze(1) * ua + (
        torch.sin(ts * omega) / so
    ).unsqueeze(1) * ub
    out = out * (na * (1.0 - t) + nb * t).expand(-1, c)
    same = dot > 1 - 1e-5
    opposite = dot < 1e-5 - 1
    out[same] = a[same]
    out[opposite] = (a * (1.0 - t) + b * t)[opposite]
    return out


def _bilinear_taps(old: int, new: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices (low, high) and fractions for resizing a length ``old`` axis to ``new``.

    The positions are those of bilinear interpolation of the index ramp (align_corners=False).
    """
    ramp = torch.arange(old, dtype=torch.float32).reshape(1, 1, 1, -1)
    pos = F.interpolate(ramp, size=(1, new), mode="bilinear").reshape(-1)  # [new]
    frac = pos - pos.floor()
    low = pos.to(torch.int64)
    ramp_hi = ramp + 1
    ramp_hi[..., -1] -= 1
    high = F.interpolate(ramp_hi, size=(1, new), mode="bilinear").reshape(-1).to(torch.int64)
    return frac, low, high


def bislerp(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Resize ``[B, C, H, W]`` to ``[B, C, height, width]`` by slerping channel vectors.

    Separable: first along the width, then along the height; each output pixel's channel
    vector is the slerp of its two bilinear source taps (ComfyUI's "bislerp").
    """
    dtype = samples.dtype
    x = samples.float()
    n, c, h, w = x.shape
    frac, lo, hi = _bilinear_taps(w, width)
    a = x[..., lo].movedim(1, -1).reshape(-1, c)  # [n*h*width, c]
    b = x[..., hi].movedim(1, -1).reshape(-1, c)
    t = frac.reshape(1, 1, -1).expand(n, h, -1).reshape(-1, 1)
    x = _slerp(a, b, t).reshape(n, h, width, c).movedim(-1, 1)  # [n, c, h, width]
    frac, lo, hi = _bilinear_taps(h, height)
    a = x[:, :, lo, :].movedim(1, -1).reshape(-1, c)  # [n*height*width, c]
    b = x[:, :, hi, :].movedim(1, -1).reshape(-1, c)
    t = frac.reshape(1, -1, 1).expand(n, -1, width).reshape(-1, 1)
    x = _slerp(a, b, t).reshape(n, height, width, c).movedim(-1, 1)
    return x.to(dtype)


def lanczos(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Resize ``[B, C, H, W]`` (values 0..1) with PIL's Lanczos filter through 8-bit images."""
    frames = samples.squeeze(1) if samples.shape[1] == 1 else samples.movedim(1, -1)
    out = []
    for frame in frames:
        arr = np.clip(255.0 * frame.detach().cpu().float().numpy(), 0, 255).astype(np.uint8)
        img = Image.fromarray(arr).resize((width, height), resample=Image.Resampling.LANCZOS)
        res = torch.from_numpy(np.asarray(img).astype(np.float32) / 255.0)
        out.append(res.movedim(-1, 0) if res.ndim == 3 else res)
    return torch.stack(out).to(samples.device, samples.dtype)


def common_upscale(
    samples: torch.Tensor, width: int, height: int, upscale_method: str, crop: str
) -> torch.Tensor:
    """Resize channels-first ``[B, C, H, W]`` (or ``[B, C, T, H, W]``) to ``height x width``.

    Parameters
    ----------
    samples:
        The tensor to resize; a 5-d tensor is resized frame by frame.
    width, height:
        Target size.
    upscale_method:
        ``"nearest-exact"``, ``"bilinear"``, ``"area"``, ``"bicubic"`` (``torch`` interpolate),
        ``"bislerp"`` or ``"lanczos"``.
    crop:
        ``"disabled"`` or ``"center"`` (crop the source to the target aspect ratio first).
    """
    shape = tuple(samples.shape)
    if len(shape) > 4:  # [B, C, T, H, W] -> [B*T, C, H, W]
        samples = samples.reshape(shape[0], shape[1], -1, shape[-2], shape[-1]).movedim(2, 1)
        samples = samples.reshape(-1, shape[1], shape[-2], shape[-1])
    if crop == "center":
        old_w, old_h = samples.shape[-1], samples.shape[-2]
        old_aspect, new_aspect = old_w / old_h, width / height
        x = y = 0
        if old_aspect > new_aspect:
            x = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
        elif old_aspect < new_aspect:
            y = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
        samples = samples.narrow(-2, y, old_h - 2 * y).narrow(-1, x, old_w - 2 * x)
    if upscale_method == "bislerp":
        out = bislerp(samples, width, height)
    elif upscale_method == "lanczos":
        out = lanczos(samples, width, height)
    else:
        out = F.interpolate(samples, size=(height, width), mode=upscale_method)
    if len(shape) == 4:
        return out
    out = out.reshape((shape[0], -1, shape[1], height, width))
    return out.movedim(2, 1).reshape((*shape[:-2], height, width))


# ---------------------------------------------------------------------------------------------
# Nodes
# ---------------------------------------------------------------------------------------------

_UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
_CROP_METHODS = ["disabled", "center"]


class ImageScale:
    """Resize images to a width and height (0 keeps the aspect ratio from the other side)."""

    upscale_methods = _UPSCALE_METHODS
    crop_methods = _CROP_METHODS

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "image": ("IMAGE",),
                "upscale_method": (cls.upscale_methods,),
                "width": ("INT", {"default": 512, "min": 0, "max": MAX_RESOLUTION, "step": 1}),
                "height": ("INT", {"default": 512, "min": 0, "max": MAX_RESOLUTION, "step": 1}),
                "crop": (cls.crop_methods,),
            }
        }

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "upscale"
    CATEGORY = "image/upscaling"

    def upscale(
        self, image: torch.Tensor, upscale_method: str, width: int, height: int, crop: str
    ) -> tuple[torch.Tensor]:
        if width == 0 and height == 0:
            return (image,)
        samples = image.movedim(-1, 1)  # [B, C, H, W]
        if width == 0:
            width = max(1, round(samples.shape[3] * height / samples.shape[2]))
        elif height == 0:
            height = max(1, round(samples.shape[2] * width / samples.shape[3]))
        out = common_upscale(samples, width, height, upscale_method, crop)
        return (out.movedim(1, -1),)


class ImageScaleBy:
    """Resize images by a factor."""

    upscale_methods = _UPSCALE_METHODS

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "image": ("IMAGE",),
                "upscale_method": (cls.upscale_methods,),
                "scale_by": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 8.0, "step": 0.01}),
            }
        }

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "upscale"
    CATEGORY = "image/upscaling"

    def upscale(self, image: torch.Tensor, upscale_method: str, scale_by: float) -> tuple[torch.Tensor]:
        samples = image.movedim(-1, 1)  # [B, C, H, W]
        width = round(samples.shape[3] * scale_by)
        height = round(samples.shape[2] * scale_by)
        out = common_upscale(samples, width, height, upscale_method, "disabled")
        return (out.movedim(1, -1),)


class ImageInvert:
    """``1 - image`` (an alpha channel is kept as it is)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"image": ("IMAGE",)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "invert"
    CATEGORY = "image"

    def invert(self, image: torch.Tensor) -> tuple[torch.Tensor]:
        out = 1.0 - image
        if image.shape[-1] == 4:
            out[..., 3] = image[..., 3]
        return (out,)


class ImageBatch:
    """Concatenate two image batches; the second is resized (bilinear, center crop) to the first."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"image1": ("IMAGE",), "image2": ("IMAGE",)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "batch"
    CATEGORY = "image"

    def batch(self, image1: torch.Tensor, image2: torch.Tensor) -> tuple[torch.Tensor]:
        if image1.shape[-1] != image2.shape[-1]:  # RGB + RGBA: pad the RGB one with opaque alpha
            if image1.shape[-1] > image2.shape[-1]:
                image2 = F.pad(image2, (0, 1), mode="constant", value=1.0)
            else:
                image1 = F.pad(image1, (0, 1), mode="constant", value=1.0)
        if image1.shape[1:] != image2.shape[1:]:
            image2 = common_upscale(
                image2.movedim(-1, 1), image1.shape[2], image1.shape[1], "bilinear", "center"
            ).movedim(1, -1)
        return (torch.cat((image1, image2), dim=0),)


class EmptyImage:
    """A batch of images filled with one colour (``0xRRGGBB``)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "width": ("INT", {"default": 512, "min": 1, "max": MAX_RESOLUTION, "step": 1}),
                "height": ("INT", {"default": 512, "min": 1, "max": MAX_RESOLUTION, "step": 1}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096}),
                "color": (
                    "INT",
                    {"default": 0, "min": 0, "max": 0xFFFFFF, "step": 1, "display": "color"},
                ),
            }
        }

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "generate"
    CATEGORY = "image"

    def generate(
        self, width: int, height: int, batch_size: int = 1, color: int = 0
    ) -> tuple[torch.Tensor]:
        rgb = torch.tensor(
            [((color >> 16) & 0xFF) / 0xFF, ((color >> 8) & 0xFF) / 0xFF, (color & 0xFF) / 0xFF],
            dtype=torch.float32,
        )
        return (rgb.expand(batch_size, height, width, 3).clone(),)  # [B, H, W, 3]


class ImagePadForOutpaint:
    """Pad images with grey (0.5) and return the MASK of the new area, feathered inward."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        side = ("INT", {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 8})
        return {
            "required": {
                "image": ("IMAGE",),
                "left": side,
                "top": side,
                "right": side,
                "bottom": side,
                "feathering": ("INT", {"default": 40, "min": 0, "max": MAX_RESOLUTION, "step": 1}),
            }
        }

    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "expand_image"
    CATEGORY = "image"

    def expand_image(
        self, image: torch.Tensor, left: int, top: int, right: int, bottom: int, feathering: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b, h, w, c = image.shape
        out = torch.full((b, h + top + bottom, w + left + right, c), 0.5, dtype=torch.float32)
        out[:, top : top + h, left : left + w, :] = image
        mask = torch.ones((h + top + bottom, w + left + right), dtype=torch.float32)
        inner = torch.zeros((h, w), dtype=torch.float32)
        if feathering > 0 and feathering * 2 < h and feathering * 2 < w:
            i = torch.arange(h).reshape(-1, 1).expand(h, w)
            j = torch.arange(w).reshape(1, -1).expand(h, w)
            # distance to each padded edge; an edge that was not padded does not feather
            dt = i if top != 0 else torch.full_like(i, h)
            db = h - i if bottom != 0 else torch.full_like(i, h)
            dl = j if left != 0 else torch.full_like(j, w)
            dr = w - j if right != 0 else torch.full_like(j, w)
            d = torch.minimum(torch.minimum(dt, db), torch.minimum(dl, dr)).float()
            v = (feathering - d) / feathering
            inner = torch.where(d < feathering, v * v, inner)
        mask[top : top + h, left : left + w] = inner
        return (out, mask.unsqueeze(0))  # [B, H', W', C], [1, H', W']


class ImageCrop:
    """Crop a ``width x height`` window at ``(x, y)`` (clamped to the image)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "image": ("IMAGE",),
                "width": ("INT", {"default": 512, "min": 1, "max": MAX_RESOLUTION, "step": 1}),
                "height": ("INT", {"default": 512, "min": 1, "max": MAX_RESOLUTION, "step": 1}),
                "x": ("INT", {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 1}),
                "y": ("INT", {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 1}),
            }
        }

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "crop"
    CATEGORY = "image/transform"

    def crop(
        self, image: torch.Tensor, width: int, height: int, x: int, y: int
    ) -> tuple[torch.Tensor]:
        x = min(x, image.shape[2] - 1)
        y = min(y, image.shape[1] - 1)
        return (image[:, y : y + height, x : x + width, :],)


NODE_CLASS_MAPPINGS: dict[str, type] = {
    "ImageScale": ImageScale,
    "ImageScaleBy": ImageScaleBy,
    "ImageInvert": ImageInvert,
    "ImageBatch": ImageBatch,
    "ImagePadForOutpaint": ImagePadForOutpaint,
    "EmptyImage": EmptyImage,
    "ImageCrop": ImageCrop,
}

NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {
    "ImageScale": "Upscale Image",
    "ImageScaleBy": "Upscale Image By",
    "ImageInvert": "Invert Image",
    "ImageBatch": "Batch Images",
    "ImagePadForOutpaint": "Pad Image for Outpainting",
    "EmptyImage": "EmptyImage",
    "ImageCrop": "Image Crop",
}
