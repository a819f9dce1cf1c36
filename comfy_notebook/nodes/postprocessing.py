"""Image post-processing nodes: blend, blur, sharpen, palette quantisation, scale to megapixels.

Names, inputs, defaults and results follow ComfyUI's ``comfy_extras/nodes_post_processing.py``
(Comfy-Org/ComfyUI@a125cd8): the Gaussian kernel is sampled on ``linspace(-1, 1, 2r+1)`` (so
``sigma`` is in units of the radius), edges are reflect-padded, quantisation goes through PIL's
median-cut palette.  The code is ours.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from comfy_notebook.nodes.image import common_upscale
from comfy_notebook.nodes.mask import image_alpha_fix

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "blend_images", "gaussian_kernel"]

_BLEND_MODES = ["normal", "multiply", "screen", "overlay", "soft_light", "difference"]


def _soft_light_g(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x <= 0.25, ((16 * x - 12) * x + 4) * x, torch.sqrt(x))


def blend_images(img1: torch.Tensor, img2: torch.Tensor, mode: str) -> torch.Tensor:
    """The blend of ``img2`` over ``img1`` (W3C compositing formulas; soft light per the spec)."""
    if mode == "normal":
        return img2
    if mode == "multiply":
        return img1 * img2
    if mode == "screen":
        return 1 - (1 - img1) * (1 - img2)
    if mode == "overlay":
        return torch.where(img1 <= 0.5, 2 * img1 * img2, 1 - 2 * (1 - img1) * (1 - img2))
    if mode == "soft_light":
        return torch.where(img2 <= 0.5, img1 - (1 - 2 * img2) * img1 * (1 - img1),
                           img1 + (2 * img2 - 1) * (_soft_light_g(img1) - img1))
    if mode == "difference":
        return img1 - img2
    raise ValueError(f"unsupported blend mode {mode!r}; expected one of {_BLEND_MODES}")


class ImageBlend:
    """``image1 * (1 - f) + blend(image1, image2) * f``, clamped; image2 is resized to image1."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "image1": ("IMAGE",), "image2": ("IMAGE",),
            "blend_factor": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01}),
            "blend_mode": (list(_BLEND_MODES),),
        }}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "blend_images"
    CATEGORY = "image/postprocessing"

    def blend_images(self, image1: torch.Tensor, image2: torch.Tensor, blend_factor: float,
                     blend_mode: str) -> tuple[torch.Tensor]:
        image1, image2 = image_alpha_fix(image1, image2)
        if image1.shape != image2.shape:
            resized = common_upscale(image2.permute(0, 3, 1, 2), image1.shape[2], image1.shape[1],
                                     "bicubic", "center")
            image2 = resized.permute(0, 2, 3, 1)
        blended = blend_images(image1, image2, blend_mode)
        return (torch.clamp(image1 * (1 - blend_factor) + blended * blend_factor, 0, 1),)


def gaussian_kernel(kernel_size: int, sigma: float, device: Any = None) -> torch.Tensor:
    """``[k, k]`` Gaussian sampled on a ``[-1, 1]`` grid, normalised to sum 1."""
    axis = torch.linspace(-1, 1, kernel_size, device=device)
    x, y = torch.meshgrid(axis, axis, indexing="ij")
    g = torch.exp(-(x * x + y * y) / (2.0 * sigma * sigma))
    return g / g.sum()


def _filter(image: torch.Tensor, kernel: torch.Tensor, radius: int) -> torch.Tensor:
    """Depthwise ``kernel`` over a reflect-padded ``[B, H, W, C]`` image (ComfyUI pads twice)."""
    c = image.shape[-1]
    k = kernel.to(image.dtype).repeat(c, 1, 1).unsqueeze(1)  # [C, 1, k, k]
    x = F.pad(image.permute(0, 3, 1, 2), (radius,) * 4, "reflect")
    y = F.conv2d(x, k, padding=kernel.shape[-1] // 2, groups=c)[:, :, radius:-radius, radius:-radius]
    return y.permute(0, 2, 3, 1)


class ImageBlur:
    """Gaussian blur of radius ``blur_radius`` (kernel ``2r+1``)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "image": ("IMAGE",),
            "blur_radius": ("INT", {"default": 1, "min": 1, "max": 31, "step": 1}),
            "sigma": ("FLOAT", {"default": 1.0, "min": 0.1, "max": 10.0, "step": 0.1}),
        }}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "blur"
    CATEGORY = "image/postprocessing"

    def blur(self, image: torch.Tensor, blur_radius: int, sigma: float) -> tuple[torch.Tensor]:
        if blur_radius == 0:
            return (image,)
        return (_filter(image, gaussian_kernel(blur_radius * 2 + 1, sigma), blur_radius),)


class ImageSharpen:
    """Unsharp mask: centre weight minus ``alpha * 10`` times a Gaussian, clamped to 0..1."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "image": ("IMAGE",),
            "sharpen_radius": ("INT", {"default": 1, "min": 1, "max": 31, "step": 1}),
            "sigma": ("FLOAT", {"default": 1.0, "min": 0.1, "max": 10.0, "step": 0.01}),
            "alpha": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 5.0, "step": 0.01}),
        }}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "sharpen"
    CATEGORY = "image/postprocessing"

    def sharpen(self, image: torch.Tensor, sharpen_radius: int, sigma: float,
                alpha: float) -> tuple[torch.Tensor]:
        if sharpen_radius == 0:
            return (image,)
        size = sharpen_radius * 2 + 1
        kernel = (gaussian_kernel(size, sigma) * -(alpha * 10)).to(image.dtype)
        c = size // 2
        kernel[c, c] = kernel[c, c] - kernel.sum() + 1.0  # the kernel sums to 1
        return (torch.clamp(_filter(image, kernel, sharpen_radius), 0, 1),)


_DITHERS = ["none", "floyd-steinberg", "bayer-2", "bayer-4", "bayer-8", "bayer-16"]


def _bayer_matrix(n: int) -> np.ndarray:
    """The normalised ``2^n x 2^n`` Bayer threshold matrix (values centred on 0)."""
    if n == 0:
        return np.zeros((1, 1), "float32")
    q = 4 ** n
    m = q * _bayer_matrix(n - 1)
    return np.block([[m - 1.5, m + 0.5], [m + 1.5, m - 0.5]]) / q


def _bayer_dither(im: Image.Image, palette: Image.Image, order: int) -> Image.Image:
    colors = len(palette.getpalette() or []) // 3
    spread = 2 * 256 / colors
    matrix = torch.from_numpy(spread * _bayer_matrix(int(math.log2(order))) + 0.5)
    pixels = torch.from_numpy(np.array(im).astype(np.float32))  # [H, W, 3]
    th, tw = -(-pixels.shape[0] // matrix.shape[0]), -(-pixels.shape[1] // matrix.shape[1])
    tiled = matrix.tile(th, tw).unsqueeze(-1)
    pixels.add_(tiled[:pixels.shape[0], :pixels.shape[1]]).clamp_(0, 255)
    dithered = Image.fromarray(pixels.to(torch.uint8).numpy())
    return dithered.quantize(palette=palette, dither=Image.Dither.NONE)


class ImageQuantize:
    """Reduce each image to ``colors`` colours (PIL median cut), optionally dithered."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "image": ("IMAGE",),
            "colors": ("INT", {"default": 256, "min": 1, "max": 256, "step": 1}),
            "dither": (list(_DITHERS),),
        }}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "quantize"
    CATEGORY = "image/postprocessing"

    def quantize(self, image: torch.Tensor, colors: int, dither: str) -> tuple[torch.Tensor]:
        result = torch.zeros_like(image)
        for b in range(image.shape[0]):
            im = Image.fromarray((image[b] * 255).to(torch.uint8).numpy(), mode="RGB")
            palette = im.quantize(colors=colors)  # the palette (Pillow issue 5836)
            if dither == "none":
                out = im.quantize(palette=palette, dither=Image.Dither.NONE)
            elif dither == "floyd-steinberg":
                out = im.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG)
            elif dither.startswith("bayer"):
                out = _bayer_dither(im, palette, int(dither.split("-")[-1]))
            else:
                raise ValueError(f"unknown dither {dither!r}; expected one of {_DITHERS}")
            result[b] = torch.tensor(np.array(out.convert("RGB"))).float() / 255
        return (result,)


class ImageScaleToTotalPixels:
    """Resize to about ``megapixels`` x 1024^2 pixels, keeping the aspect ratio."""

    upscale_methods = ("nearest-exact", "bilinear", "area", "bicubic", "lanczos")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "image": ("IMAGE",),
            "upscale_method": (list(cls.upscale_methods),),
            "megapixels": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 16.0, "step": 0.01}),
        }}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "upscale"
    CATEGORY = "image/upscaling"

    def upscale(self, image: torch.Tensor, upscale_method: str, megapixels: float) -> tuple[torch.Tensor]:
        samples = image.movedim(-1, 1)  # [B, C, H, W]
        total = int(megapixels * 1024 * 1024)
        scale_by = math.sqrt(total / (samples.shape[3] * samples.shape[2]))
        width, height = round(samples.shape[3] * scale_by), round(samples.shape[2] * scale_by)
        out = common_upscale(samples, width, height, upscale_method, "disabled")
        return (out.movedim(1, -1),)


NODE_CLASS_MAPPINGS: dict[str, type] = {
    "ImageBlend": ImageBlend,
    "ImageBlur": ImageBlur,
    "ImageQuantize": ImageQuantize,
    "ImageSharpen": ImageSharpen,
    "ImageScaleToTotalPixels": ImageScaleToTotalPixels,
}

NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
