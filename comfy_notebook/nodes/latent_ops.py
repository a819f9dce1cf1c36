"""LATENT arithmetic, batches, transforms, and rebatching of latent and image lists.

Names, inputs, defaults and results follow ComfyUI (Comfy-Org/ComfyUI@a125cd8):
``comfy_extras/nodes_latent.py`` (add/subtract/multiply/interpolate/batch),
``nodes.py`` (crop/flip/rotate) and ``comfy_extras/nodes_rebatch.py`` (list in, list out).
The code is ours.
"""

from __future__ import annotations

from typing import Any

import torch

from comfy_notebook.nodes.image import MAX_RESOLUTION, common_upscale
from comfy_notebook.nodes.mask import repeat_to_batch

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "reshape_latent_to"]

Latent = dict[str, Any]


def reshape_latent_to(shape: torch.Size, latent: torch.Tensor, repeat_batch: bool = True) -> torch.Tensor:
    """``latent`` resized (bilinear, centre crop) to ``shape``'s size, its batch repeated to match."""
    if latent.shape[1:] != shape[1:]:
        latent = common_upscale(latent, shape[-1], shape[-2], "bilinear", "center")
    return repeat_to_batch(latent, shape[0]) if repeat_batch else latent


def _two() -> dict[str, Any]:
    return {"required": {"samples1": ("LATENT",), "samples2": ("LATENT",)}}


class _LatentPairOp:
    """Shared shape of LatentAdd / LatentSubtract: samples2 resized and repeated to samples1,
    then combined element-wise by :meth:`combine`."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return _two()

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "op"
    CATEGORY = "latent/advanced"

    @staticmethod
    def combine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def op(self, samples1: Latent, samples2: Latent) -> tuple[Latent]:
        out = samples1.copy()
        s1 = samples1["samples"]
        out["samples"] = self.combine(s1, reshape_latent_to(s1.shape, samples2["samples"]))
        return (out,)


class LatentAdd(_LatentPairOp):
    """``samples1 + samples2`` (samples2 resized and repeated to samples1)."""

    @staticmethod
    def combine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


class LatentSubtract(_LatentPairOp):
    """``samples1 - samples2`` (samples2 resized and repeated to samples1)."""

    @staticmethod
    def combine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a - b


class LatentMultiply:
    """``samples * multiplier``."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"samples": ("LATENT",), "multiplier": (
            "FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01})}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "op"
    CATEGORY = "latent/advanced"

    def op(self, samples: Latent, multiplier: float) -> tuple[Latent]:
        out = samples.copy()
        out["samples"] = samples["samples"] * multiplier
        return (out,)


class LatentInterpolate:
    """Interpolate directions and magnitudes (per pixel, over channels) separately by ``ratio``.

    As in ComfyUI the norms ``[B, H, W]`` divide ``[B, C, H, W]`` by broadcasting on the
    trailing dimensions, which is per-pixel for batch 1 (and fails or mixes items otherwise).
    """

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"samples1": ("LATENT",), "samples2": ("LATENT",), "ratio": (
            "FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01})}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "op"
    CATEGORY = "latent/advanced"

    def op(self, samples1: Latent, samples2: Latent, ratio: float) -> tuple[Latent]:
        out = samples1.copy()
        s1 = samples1["samples"]
        s2 = reshape_latent_to(s1.shape, samples2["samples"])
        m1 = torch.linalg.vector_norm(s1, dim=1)
        m2 = torch.linalg.vector_norm(s2, dim=1)
        t = torch.nan_to_num(s1 / m1) * ratio + torch.nan_to_num(s2 / m2) * (1.0 - ratio)
        st = torch.nan_to_num(t / torch.linalg.vector_norm(t, dim=1))
        out["samples"] = st * (m1 * ratio + m2 * (1.0 - ratio))
        return (out,)


class LatentBatch:
    """Concatenate two latent batches (samples2 resized to samples1); batch indices concatenate."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return _two()

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "batch"
    CATEGORY = "latent/batch"

    def batch(self, samples1: Latent, samples2: Latent) -> tuple[Latent]:
        out = samples1.copy()
        s1 = samples1["samples"]
        s2 = reshape_latent_to(s1.shape, samples2["samples"], repeat_batch=False)
        out["samples"] = torch.cat((s1, s2), dim=0)
        out["batch_index"] = (list(samples1.get("batch_index", range(s1.shape[0])))
                              + list(samples2.get("batch_index", range(s2.shape[0]))))
        return (out,)


class LatentCrop:
    """The ``width x height`` pixel region at (x, y) (all divided by 8; at least 64 px left)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        size = ("INT", {"default": 512, "min": 64, "max": MAX_RESOLUTION, "step": 8})
        pos = ("INT", {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 8})
        return {"required": {"samples": ("LATENT",), "width": size, "height": size, "x": pos, "y": pos}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "crop"
    CATEGORY = "latent/transform"

    def crop(self, samples: Latent, width: int, height: int, x: int, y: int) -> tuple[Latent]:
        out = samples.copy()
        s = samples["samples"]
        x, y = min(x // 8, s.shape[3] - 8), min(y // 8, s.shape[2] - 8)
        out["samples"] = s[:, :, y:y + height // 8, x:x + width // 8]
        return (out,)


class LatentFlip:
    """Flip vertically (``x-axis``) or horizontally (``y-axis``)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"samples": ("LATENT",),
                             "flip_method": (["x-axis: vertically", "y-axis: horizontally"],)}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "flip"
    CATEGORY = "latent/transform"

    def flip(self, samples: Latent, flip_method: str) -> tuple[Latent]:
        out = samples.copy()
        if flip_method.startswith("x"):
            out["samples"] = torch.flip(samples["samples"], dims=[2])
        elif flip_method.startswith("y"):
            out["samples"] = torch.flip(samples["samples"], dims=[3])
        return (out,)


class LatentRotate:
    """Rotate clockwise by 90, 180 or 270 degrees."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"samples": ("LATENT",),
                             "rotation": (["none", "90 degrees", "180 degrees", "270 degrees"],)}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "rotate"
    CATEGORY = "latent/transform"

    def rotate(self, samples: Latent, rotation: str) -> tuple[Latent]:
        out = samples.copy()
        k = {"90": 1, "180": 2, "270": 3}.get(rotation.split(" ")[0], 0)
        out["samples"] = torch.rot90(samples["samples"], k=k, dims=[3, 2])  # clockwise
        return (out,)


# -- rebatching (INPUT_IS_LIST: every input arrives as a list) --------------------------------

def _entry(latent: Latent, offset: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(samples, noise mask [B, 1, 8h, 8w], batch indices) of one list item."""
    samples = latent["samples"]
    b, _, h, w = samples.shape
    mask = latent.get("noise_mask")
    if mask is None:
        mask = torch.ones((b, 1, h * 8, w * 8))
    # ComfyUI computes a resized mask here but discards the result; masks pass through as given
    if mask.shape[0] < b:
        mask = mask.repeat((b - 1) // mask.shape[0] + 1, 1, 1, 1)[:b]
    index = list(latent["batch_index"]) if "batch_index" in latent else [offset + i for i in range(b)]
    return samples, mask, index


def _emit(out: list[Latent], samples: torch.Tensor, mask: torch.Tensor, index: list[int]) -> None:
    item: Latent = {"samples": samples, "noise_mask": mask, "batch_index": index}
    if mask.mean() == 1.0:  # an all-ones mask means no mask
        del item["noise_mask"]
    out.append(item)


class RebatchLatents:
    """Regroup a list of latent batches into batches of ``batch_size`` (a size change starts anew)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"latents": ("LATENT",),
                             "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096})}}

    RETURN_TYPES = ("LATENT",)
    INPUT_IS_LIST = True
    OUTPUT_IS_LIST = (True,)
    FUNCTION = "rebatch"
    CATEGORY = "latent/batch"

    def rebatch(self, latents: list[Latent], batch_size: list[int]) -> tuple[list[Latent]]:
        size = batch_size[0]
        out: list[Latent] = []
        cur: tuple[torch.Tensor, torch.Tensor, list[int]] | None = None
        processed = 0
        for latent in latents:
            nxt = _entry(latent, processed)
            processed += len(nxt[2])
            if cur is None:
                cur = nxt
            elif nxt[0].shape[-2:] != cur[0].shape[-2:]:
                _emit(out, cur[0][:size], cur[1][:size], cur[2][:size])
                cur = nxt
            else:
                cur = (torch.cat((cur[0], nxt[0])), torch.cat((cur[1], nxt[1])), cur[2] + nxt[2])
            if cur[0].shape[0] > size:
                num = cur[0].shape[0] // size
                for i in range(num):
                    sl = slice(i * size, (i + 1) * size)
                    _emit(out, cur[0][sl], cur[1][sl], cur[2][sl])
                rest = slice(num * size, None)
                cur = (cur[0][rest], cur[1][rest], cur[2][rest]) if num * size < len(cur[2]) else None
        if cur is not None:
            _emit(out, cur[0][:size], cur[1][:size], cur[2][:size])
        return (out,)


class RebatchImages:
    """Regroup a list of image batches into batches of ``batch_size`` images."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"images": ("IMAGE",),
                             "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096})}}

    RETURN_TYPES = ("IMAGE",)
    INPUT_IS_LIST = True
    OUTPUT_IS_LIST = (True,)
    FUNCTION = "rebatch"
    CATEGORY = "image/batch"

    def rebatch(self, images: list[torch.Tensor], batch_size: list[int]) -> tuple[list[torch.Tensor]]:
        size = batch_size[0]
        singles = [img[i:i + 1] for img in images for i in range(img.shape[0])]
        return ([torch.cat(singles[i:i + size], dim=0) for i in range(0, len(singles), size)],)


NODE_CLASS_MAPPINGS: dict[str, type] = {
    "LatentAdd": LatentAdd,
    "LatentSubtract": LatentSubtract,
    "LatentMultiply": LatentMultiply,
    "LatentInterpolate": LatentInterpolate,
    "LatentBatch": LatentBatch,
    "LatentCrop": LatentCrop,
    "LatentFlip": LatentFlip,
    "LatentRotate": LatentRotate,
    "RebatchLatents": RebatchLatents,
    "RebatchImages": RebatchImages,
}

NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {
    "LatentCrop": "Crop Latent",
    "LatentFlip": "Flip Latent",
    "LatentRotate": "Rotate Latent",
    "RebatchLatents": "Rebatch Latents",
    "RebatchImages": "Rebatch Images",
}
