"""Fast latent -> RGB previews (no VAE): a linear map of the latent channels to RGB.

Used by the widgets (sampling previews, gallery) and real mode's inline LATENT display.

The factors are the latent format's ``rgb_factors`` (and ``rgb_bias``), as ComfyUI's
"latent2rgb" sampling preview uses its ``latent_formats``: ``rgb = latent^T @ F + bias`` per
pixel, then ``(rgb + 1) / 2`` clamped to 0..1.  A LATENT carries no family, so without explicit
factors the default format for its channel count is used
(:func:`comfy_notebook.families.latent_format_for`).  Real mode reuses this for inline LATENT
display.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["latent_preview", "latent_to_rgb", "preview_factors"]


def preview_factors(channels: int, family: str | None = None) -> tuple[Any, Any]:
    """``(factors C x 3, bias or None)`` of the latent format for ``channels`` (or ``family``)."""
    from comfy_notebook.families import latent_format_for

    fmt = latent_format_for(channels, family)
    if fmt is None or fmt.rgb_factors is None:
        raise ValueError(f"no latent->RGB preview factors for {channels}-channel latents"
                         + (f" of family {family!r}" if family else ""))
    return fmt.rgb_factors, fmt.rgb_bias


def latent_to_rgb(
    latent: Any,
    factors: Any = None,
    bias: Any = None,
) -> np.ndarray:
    """Map latents to RGB previews with a per-pixel linear map.

    Parameters
    ----------
    latent:
        ``[B,C,h,w]`` or ``[C,h,w]`` tensor or array, or a LATENT dict with
        ``"samples"``.  Tensors are mapped on their own device; only the small RGB result moves
        to the host.
    factors:
        ``C x 3`` matrix (default: :func:`preview_factors` of the latent's channel count,
        with its bias).
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
    if factors is None:
        factors, default_bias = preview_factors(int(channels))
        bias = default_bias if bias is None else bias
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


def latent_preview(latent: Any, max_size: int = 256, latent_format: Any = None) -> Any:
    """The first latent of a batch as an upscaled RGB ``PIL.Image`` (nearest, long side ``max_size``).

    ``latent_format`` (a family's, with ``rgb_factors`` / ``rgb_bias``) picks the factors; without
    one the default format for the channel count is used.
    """
    from PIL import Image

    if latent_format is not None and getattr(latent_format, "rgb_factors", None) is not None:
        rgb = latent_to_rgb(latent, latent_format.rgb_factors, latent_format.rgb_bias)[0]
    else:
        rgb = latent_to_rgb(latent)[0]  # [h,w,3]
    img = Image.fromarray(rgb)
    scale = max(1, max_size // max(img.size))
    return img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
