"""Test images written to disk (an RGBA PNG with a transparent half, for mask loading).
"""

from __future__ import annotations

import os

__all__ = ["make_masked_image"]


def make_masked_image(path: str | os.PathLike[str], size: int = 64, seed: int = 0) -> str:
    """Write an RGBA PNG of random colours whose left half is transparent.

    ``LoadImage`` reads it as an IMAGE and a MASK that is 1 on the left half (ComfyUI's
    mask = 1 - alpha): the shape inpainting tests need.  Returns the path.
    """
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    rgba = np.zeros((size, size, 4), dtype=np.uint8)
    rgba[..., :3] = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    rgba[:, size // 2:, 3] = 255  # opaque right half; the transparent left half is the mask
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    Image.fromarray(rgba, "RGBA").save(path)
    return os.fspath(path)
