"""VAE nodes: decode and encode (plain and tiled) and the inpainting encoders."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from comfy_notebook.runtime.values import VAEValue

Conditioning = list[list[Any]]


class VAEDecode:
    """LATENT -> IMAGE."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "samples": ("LATENT", {"tooltip": "The latent to be decoded."}),
            "vae": ("VAE", {"tooltip": "The VAE model used for decoding the latent."}),
        }}

    RETURN_TYPES = ("IMAGE",)
    OUTPUT_TOOLTIPS = ("The decoded image.",)
    FUNCTION = "decode"
    CATEGORY = "latent"
    DESCRIPTION = "Decodes latent images back into pixel space images."

    def decode(self, vae: VAEValue, samples: dict[str, Any]) -> tuple[torch.Tensor]:
        return (vae.decode(samples["samples"]),)


class VAEDecodeTiled:
    """LATENT -> IMAGE in overlapping tiles (for images too large to decode at once)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "samples": ("LATENT",),
            "vae": ("VAE",),
            "tile_size": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 32}),
            "overlap": ("INT", {"default": 64, "min": 0, "max": 4096, "step": 32}),
            "temporal_size": ("INT", {"default": 64, "min": 8, "max": 4096, "step": 4,
                                      "tooltip": "Only used for video VAEs."}),
            "temporal_overlap": ("INT", {"default": 8, "min": 4, "max": 4096, "step": 4,
                                         "tooltip": "Only used for video VAEs."}),
        }}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "decode"
    CATEGORY = "_for_testing"

    def decode(self, vae: VAEValue, samples: dict[str, Any], tile_size: int, overlap: int = 64,
               temporal_size: int = 64, temporal_overlap: int = 8) -> tuple[torch.Tensor]:
        if tile_size < overlap * 4:
            overlap = tile_size // 4
        return (vae.decode(samples["samples"], tiled=True, tile=tile_size // 8, overlap=overlap // 8),)


class VAEEncode:
    """IMAGE -> LATENT."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"pixels": ("IMAGE",), "vae": ("VAE",)}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "encode"
    CATEGORY = "latent"

    def encode(self, vae: VAEValue, pixels: torch.Tensor) -> tuple[dict[str, Any]]:
        return ({"samples": vae.encode(pixels)},)


class VAEEncodeTiled:
    """IMAGE -> LATENT in overlapping tiles."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "pixels": ("IMAGE",),
            "vae": ("VAE",),
            "tile_size": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 64}),
            "overlap": ("INT", {"default": 64, "min": 0, "max": 4096, "step": 32}),
            "temporal_size": ("INT", {"default": 64, "min": 8, "max": 4096, "step": 4}),
            "temporal_overlap": ("INT", {"default": 8, "min": 4, "max": 4096, "step": 4}),
        }}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "encode"
    CATEGORY = "_for_testing"

    def encode(self, vae: VAEValue, pixels: torch.Tensor, tile_size: int, overlap: int,
               temporal_size: int = 64, temporal_overlap: int = 8) -> tuple[dict[str, Any]]:
        return ({"samples": vae.encode(pixels, tiled=True, tile=tile_size, overlap=overlap)},)


def _crop_to_8(pixels: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre-crop IMAGE ``[B,H,W,C]`` and mask ``[B,1,H,W]`` to multiples of 8."""
    h, w = (pixels.shape[1] // 8) * 8, (pixels.shape[2] // 8) * 8
    if (h, w) != tuple(pixels.shape[1:3]):
        y, x = (pixels.shape[1] % 8) // 2, (pixels.shape[2] % 8) // 2
        pixels = pixels[:, y:y + h, x:x + w, :]
        mask = mask[:, :, y:y + h, x:x + w]
    return pixels, mask


def _mask_to_pixels(mask: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """MASK ``[B,H,W]`` or ``[H,W]`` resized (bilinear) to the image: ``[B,1,H,W]``."""
    m = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).float()
    return F.interpolate(m, size=(pixels.shape[1], pixels.shape[2]), mode="bilinear")


def _grey_out(pixels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked pixels set to 0.5 grey (what inpainting encoders see)."""
    keep = (1.0 - mask.round()).squeeze(1).unsqueeze(-1)  # [B,H,W,1]
    out = pixels.clone()
    out[..., :3] = (out[..., :3] - 0.5) * keep + 0.5
    return out


class VAEEncodeForInpaint:
    """Encode an image with its masked area greyed out; the latent carries a grown noise mask."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "pixels": ("IMAGE",),
            "vae": ("VAE",),
            "mask": ("MASK",),
            "grow_mask_by": ("INT", {"default": 6, "min": 0, "max": 64, "step": 1}),
        }}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "encode"
    CATEGORY = "latent/inpaint"

    def encode(self, vae: VAEValue, pixels: torch.Tensor, mask: torch.Tensor,
               grow_mask_by: int = 6) -> tuple[dict[str, Any]]:
        mask = _mask_to_pixels(mask, pixels)
        pixels, mask = _crop_to_8(pixels, mask)
        if grow_mask_by == 0:
            grown = mask
        else:  # grow the mask a little so the inpainted area blends in latent space
            kernel = torch.ones((1, 1, grow_mask_by, grow_mask_by))
            padding = math.ceil((grow_mask_by - 1) / 2)
            grown = torch.clamp(F.conv2d(mask.round(), kernel, padding=padding), 0, 1)
        latent = vae.encode(_grey_out(pixels, mask))
        h, w = pixels.shape[1], pixels.shape[2]
        return ({"samples": latent, "noise_mask": grown[:, :, :h, :w].round()},)


class InpaintModelConditioning:
    """Conditioning for inpainting models (masked image latent + mask) and the LATENT to sample.

    Every entry gets ``concat_latent_image`` (the VAE latent of the image with the masked pixels
    greyed) and ``concat_mask`` (the pixel mask); an inpainting UNet receives them as its extra
    input channels (``comfy_notebook.sampling.ksampler.inpaint_concat``), a regular UNet ignores
    them.
    """

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "positive": ("CONDITIONING",),
            "negative": ("CONDITIONING",),
            "vae": ("VAE",),
            "pixels": ("IMAGE",),
            "mask": ("MASK",),
            "noise_mask": ("BOOLEAN", {"default": True, "tooltip": (
                "Add a noise mask to the latent so sampling only happens within the mask.")}),
        }}

    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "LATENT")
    RETURN_NAMES = ("positive", "negative", "latent")
    FUNCTION = "encode"
    CATEGORY = "conditioning/inpaint"

    def encode(self, positive: Conditioning, negative: Conditioning, pixels: torch.Tensor,
               vae: VAEValue, mask: torch.Tensor, noise_mask: bool = True) -> tuple[Any, Any, Any]:
        mask = _mask_to_pixels(mask, pixels)
        pixels, mask = _crop_to_8(pixels, mask)
        concat_latent = vae.encode(_grey_out(pixels, mask))
        orig_latent = vae.encode(pixels)
        out_latent: dict[str, Any] = {"samples": orig_latent}
        if noise_mask:
            out_latent["noise_mask"] = mask
        extra = {"concat_latent_image": concat_latent, "concat_mask": mask}
        pos = [[c, {**o, **extra}] for c, o in positive]
        neg = [[c, {**o, **extra}] for c, o in negative]
        return (pos, neg, out_latent)


NODE_CLASS_MAPPINGS = {
    "VAEDecode": VAEDecode,
    "VAEDecodeTiled": VAEDecodeTiled,
    "VAEEncode": VAEEncode,
    "VAEEncodeTiled": VAEEncodeTiled,
    "VAEEncodeForInpaint": VAEEncodeForInpaint,
    "InpaintModelConditioning": InpaintModelConditioning,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "VAEDecode": "VAE Decode",
    "VAEDecodeTiled": "VAE Decode (Tiled)",
    "VAEEncode": "VAE Encode",
    "VAEEncodeTiled": "VAE Encode (Tiled)",
    "VAEEncodeForInpaint": "VAE Encode (for Inpainting)",
}
