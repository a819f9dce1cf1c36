"""Random-weight upscale models (RRDBNet: RealESRGAN and ESRGAN layouts) that spandrel detects.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from comfy_notebook.testing._core import _save

__all__ = ["make_esrgan"]


def make_esrgan(path: str | os.PathLike[str], *, layout: str = "realesrgan", scale: int = 4,
                num_feat: int = 8, num_block: int = 1, seed: int = 0) -> str:
    """Write a random RRDBNet upscaler in a released key layout (what spandrel detects).

    ``layout="realesrgan"``: BasicSR's RRDBNet names (``conv_first``, ``body.N.rdbK.convJ``,
    ``conv_body``, ``conv_up1/2``, ``conv_hr``, ``conv_last``) under ``params_ema``, as the
    RealESRGAN x4plus release ships them (scale 4 only).  ``layout="esrgan"``: the original
    ESRGAN sequential names (``model.0``, ``model.1.sub.N.RDBK.convJ.0``, ``model.{3,6,...}``).
    Growth channels are 32 as in every release.  ``.pth`` files are torch pickles,
    ``.safetensors`` hold the flat dict.
    """
    gc, nf, g = 32, num_feat, torch.Generator().manual_seed(seed)
    ups = {2: 1, 4: 2, 8: 3}[scale]

    def conv(cin: int, cout: int) -> tuple[Tensor, Tensor]:
        return torch.randn(cout, cin, 3, 3, generator=g) * (0.5 / (cin * 9) ** 0.5), torch.randn(cout, generator=g) * 0.01

    sd: dict[str, Tensor] = {}

    def put(name: str, cin: int, cout: int) -> None:
        sd[f"{name}.weight"], sd[f"{name}.bias"] = conv(cin, cout)

    rdb = [(nf, gc), (nf + gc, gc), (nf + 2 * gc, gc), (nf + 3 * gc, gc), (nf + 4 * gc, nf)]
    if layout == "realesrgan":
        if scale != 4:
            raise ValueError("RealESRGAN layout files here are x4 (x2plus uses pixel-unshuffle)")
        put("conv_first", 3, nf)
        for b in range(num_block):
            for k in (1, 2, 3):
                for j, (cin, cout) in enumerate(rdb, 1):
                    put(f"body.{b}.rdb{k}.conv{j}", cin, cout)
        for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
            put(name, nf, nf)
        put("conv_last", nf, 3)
    elif layout == "esrgan":
        put("model.0", 3, nf)
        for b in range(num_block):
            for k in (1, 2, 3):
                for j, (cin, cout) in enumerate(rdb, 1):
                    put(f"model.1.sub.{b}.RDB{k}.conv{j}.0", cin, cout)
        put(f"model.1.sub.{num_block}", nf, nf)
        for u in range(ups):
            put(f"model.{3 + 3 * u}", nf, nf)
        put(f"model.{3 * ups + 2}", nf, nf)
        put(f"model.{3 * ups + 4}", nf, 3)
    else:
        raise ValueError(f"unknown layout {layout!r}; expected 'realesrgan' or 'esrgan'")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if str(path).endswith(".safetensors"):
        _save(sd, path)
    else:
        torch.save({"params_ema": sd} if layout == "realesrgan" else sd, str(path))
    return str(path)
