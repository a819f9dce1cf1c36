"""Image conversion shared by the widgets and ``comfy_notebook.plot`` (no torch import)."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from PIL import Image


def _as_numpy(value: Any) -> np.ndarray:
    """Tensor (duck-typed ``detach``) or array-like -> numpy array on the host."""
    if hasattr(value, "detach"):
        value = value.detach()
        if str(getattr(value, "dtype", "")) == "torch.bfloat16":
            value = value.float()
        return np.asarray(value.cpu().numpy())
    return np.asarray(value)


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Float 0..1 or integer 0..255 pixels -> uint8."""
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating) or array.dtype == np.bool_:
        array = np.rint(array.astype(np.float32) * 255.0)
    out: np.ndarray = np.clip(array, 0, 255).astype(np.uint8)
    return out


def _hwc(array: np.ndarray) -> np.ndarray:
    """[H,W] / [H,W,1] / [H,W,4] -> [H,W,3] uint8 (alpha dropped)."""
    if array.ndim == 2:
        array = array[:, :, None]
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return array[:, :, :3]


def to_images(value: Any) -> list[np.ndarray]:
    """Convert images of any accepted kind to a list of ``[H,W,3]`` uint8 arrays.

    Accepts IMAGE tensors ``[B,H,W,C]`` (float 0..1), ``[H,W,C]`` tensors, numpy arrays of the
    same shapes (float 0..1 or uint8), MASK tensors ``[B,H,W]``, PIL images, LATENT dicts
    (``{"samples": [B,4,h,w]}``, shown through the latent->RGB factors of its latent format), real-mode handles
    (anything with ``.value``) and lists or tuples of these.
    """
    if hasattr(value, "value") and not isinstance(value, np.ndarray | Image.Image):
        return to_images(value.value)
    if isinstance(value, list | tuple):
        return [img for item in value for img in to_images(item)]
    if isinstance(value, Image.Image):
        return [np.asarray(value.convert("RGB"))]
    if isinstance(value, dict) and "samples" in value:
        from comfy_notebook.widgets.preview import latent_to_rgb

        return list(latent_to_rgb(value["samples"]))
    array = _as_numpy(value)
    if array.ndim == 4:  # [B,H,W,C]
        if array.shape[-1] not in (1, 3, 4):
            raise ValueError(
                f"expected an IMAGE batch [B,H,W,C] with C in 1, 3 or 4, received shape "
                f"{tuple(array.shape)}; a LATENT goes in as its dict {{'samples': ...}}"
            )
        return [_hwc(_to_uint8(a)) for a in array]
    if array.ndim == 3 and array.shape[-1] in (1, 3, 4):  # [H,W,C]
        return [_hwc(_to_uint8(array))]
    if array.ndim == 3:  # MASK batch [B,H,W]
        return [_hwc(_to_uint8(a)) for a in array]
    if array.ndim == 2:  # one mask [H,W]
        return [_hwc(_to_uint8(array))]
    raise ValueError(
        f"expected an image ([B,H,W,C], [H,W,C], [H,W], PIL image or handle), received "
        f"{type(value).__name__} with shape {tuple(array.shape)}"
    )


def png_bytes(image: np.ndarray, max_size: int | None = None, pnginfo: Any = None) -> bytes:
    """Encode a ``[H,W,3]`` uint8 array as PNG, downscaled to ``max_size`` on its long side."""
    pil = Image.fromarray(image)
    if max_size is not None and max(pil.size) > max_size:
        pil.thumbnail((max_size, max_size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    pil.save(buf, format="PNG", pnginfo=pnginfo, compress_level=1)
    return buf.getvalue()


def data_url(image: np.ndarray, max_size: int | None = None) -> str:
    """A ``data:image/png;base64,...`` URL of the image (thumbnail size with ``max_size``)."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(image, max_size)).decode("ascii")
