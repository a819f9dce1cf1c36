"""Fast latent -> RGB previews (no VAE): a linear map of the 4 SD1 latent channels to RGB.

The factors are the SD1.5 ``latent_rgb_factors`` of ComfyUI's ``comfy/latent_formats.py``
(``SD15``), used by its "latent2rgb" sampling preview: ``rgb = latent^T @ F`` per pixel, then
``(rgb + 1) / 2`` clamped to 0..1.  Real mode reuses this for inline LATENT display.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["SD15_LATENT_RGB_FACTORS", "latent_preview", "latent_to_rgb"]

# rows: latent channels 0..3; columns: R, G, B  (ComfyUI latent_formats.SD15)
SD15_LATENT_RGB_FACTORS: tuple[tuple[float, float, float], ...] = (
    (0.3512, 0.2297, 0.3227),
    (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721),
    (-0.2120, -0.2616, -0.7177),
)


def latent_to_rgb(
    latent: Any,
    factors: Any = SD15_LATENT_RGB_FACTORS,
    bias: Any = None,
) -> np.ndarray:
    """Map latents to RGB previews with a per-pixel linear map.

    Parameters
    ----------
    latent:
        ``[B,C,h,w]`` or ``[C,h,w]`` tensor or array (C = 4 for SD1), or a LATENT dict with
        ``"samples"``.  Tensors are mapped on their own device; only the small RGB result moves
        to the host.
    factors:
        ``C x 3`` matrix (default: SD1.5's latent_rgb_factors).
    bias:
        Optional length-3 bias added after the matrix product.

    Returns
    -------
    numpy.ndarray
        ``[B,h,w,3]`` uint8 images (same spatial size as the latent).
    """
    if isinstance(latent, dict):
        latent = latent["samples"]
    if hasattr(latent, "value") and not hasattr(latent, "shape"):
        latent = latent.value  # a real-mode handle
        if isinstance(latent, dict):
            latent = latent["samples"]
    if len(latent.shape) == 3:
        latent = latent[None]
    channels = latent.shape[1]
    n_factors = len(factors)
    if channels != n_factors:
        raise ValueError(
            f"expected a latent with {n_factors} channels [B,{n_factors},h,w] for these factors, "
            f"received shape {tuple(latent.shape)}; pass the factors of this model family"
        )
    if hasattr(latent, "detach"):  # torch tensor: compute where it lives
        x = latent.detach().float()
        f = x.new_tensor(factors)  # [C,3]
        rgb = x.permute(0, 2, 3, 1) @ f  # [B,h,w,C] @ [C,3] -> [B,h,w,3]
        if bias is not None:
            rgb = rgb + x.new_tensor(bias)
        rgb = ((rgb + 1.0) / 2.0).clamp(0.0, 1.0).mul(255.0).round()
        out: np.ndarray = np.asarray(rgb.cpu().numpy()).astype(np.uint8)
        return out
    x_np = np.asarray(latent, dtype=np.float32)
    rgb_np = np.transpose(x_np, (0, 2, 3, 1)) @ np.asarray(factors, dtype=np.float32)
    if bias is not None:
        rgb_np = rgb_np + np.asarray(bias, dtype=np.float32)
    pixels: np.ndarray = np.rint(np.clip((rgb_np + 1.0) / 2.0, 0.0, 1.0) * 255.0).astype(np.uint8)
    return pixels


def latent_preview(latent: Any, max_size: int = 256) -> Any:
    """The first latent of a batch as an upscaled RGB ``PIL.Image`` (nearest, long side ``max_size``)."""
    from PIL import Image

    rgb = latent_to_rgb(latent)[0]  # [h,w,3]
    img = Image.fromarray(rgb)
    scale = max(1, max_size // max(img.size))
    return img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
