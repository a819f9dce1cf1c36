"""T2I-Adapter (Mou et al. 2023): a small conv net turning a control image into features the UNet
adds to its input blocks.

Three layouts, with the original TencentARC key names (as ComfyUI loads them,
``comfy/t2i_adapter/adapter.py`` and ``comfy/controlnet.py: load_t2i_adapter`` at a125cd8):

- full (``conv_in``, ``body.N.{in_conv,block1,block2,down_opt.op}``): 4 levels of ``nums_rb``
  ResNet blocks after an 8x pixel unshuffle;
- full XL (the same keys, 16x unshuffle, one stride-2 level; recognised, as ComfyUI does, by
  ``conv_in`` taking 256 or 768 channels);
- light (``body.N.{in_conv,body.M.{block1,block2},out_conv}``).

:func:`convert_diffusers_adapter` renames diffusers' ``T2IAdapter`` keys (``adapter.body.N.resnets.M``)
to these names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from comfy_notebook.models.unet import ControlResiduals

__all__ = ["AdapterConfig", "T2IAdapter", "convert_diffusers_adapter", "is_adapter_state_dict"]

# Family fact (to move into comfy_notebook/families/): SDXL adapters see 16x16 pixel patches of
# a 1- or 3-channel image, so their conv_in takes 256 or 768 channels (ComfyUI's rule).
_XL_CIN = (256, 768)


@dataclass(frozen=True)
class AdapterConfig:
    """Sizes of a T2I-Adapter.

    ``kind`` is ``"full"``, ``"full_xl"`` or ``"light"``; ``cin`` the channels after the pixel
    unshuffle; ``channels`` the width of each of the 4 levels; ``nums_rb`` ResNet blocks per
    level; ``ksize`` the kernel of ``in_conv``/``block2`` (full); ``use_conv`` a strided conv
    instead of average pooling to go down a level (full).
    """

    kind: str = "full"
    cin: int = 192
    channels: tuple[int, ...] = (320, 640, 1280, 1280)
    nums_rb: int = 2
    ksize: int = 1
    use_conv: bool = False

    @property
    def unshuffle(self) -> int:
        """Pixel-unshuffle factor: 16 for SDXL adapters, else 8."""
        return 16 if self.kind == "full_xl" else 8

    def residual_elements(self, h: int, w: int) -> int:
        """Values of one image's features on an [h, w] latent (one map per level, halving; an upper bound)."""
        return sum(c * -(-h // 2**i) * -(-w // 2**i) for i, c in enumerate(self.channels))

    @property
    def input_channels(self) -> int:
        """Channels of the control image the adapter takes (1 or 3)."""
        return self.cin // (self.unshuffle * self.unshuffle)

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, Any]) -> AdapterConfig:
        """Read the sizes from an original-layout adapter state dict's shapes."""
        keys = list(sd.keys())
        if "body.0.in_conv.weight" in sd and "conv_in.weight" not in sd:
            n = len({k.split(".")[1] for k in keys if k.startswith("body.") and k.endswith(".out_conv.weight")})
            channels = tuple(int(sd[f"body.{i}.out_conv.weight"].shape[0]) for i in range(n))
            nums_rb = len({k.split(".")[3] for k in keys if k.startswith("body.0.body.")})
            return cls(kind="light", cin=int(sd["body.0.in_conv.weight"].shape[1]), channels=channels,
                       nums_rb=nums_rb)
        cin, ch = int(sd["conv_in.weight"].shape[1]), int(sd["conv_in.weight"].shape[0])
        blocks = len({k.split(".")[1] for k in keys if k.startswith("body.") and k.endswith(".block1.weight")})
        return cls(kind="full_xl" if cin in _XL_CIN else "full", cin=cin,
                   channels=(ch, ch * 2, ch * 4, ch * 4), nums_rb=max(1, blocks // 4),
                   ksize=int(sd["body.0.block2.weight"].shape[2]),
                   use_conv=any(k.endswith("down_opt.op.weight") for k in keys))


def is_adapter_state_dict(sd: Mapping[str, Any]) -> bool:
    """Whether ``sd`` holds a T2I-Adapter (original or diffusers layout)."""
    return ("conv_in.weight" in sd and "body.0.block1.weight" in sd) or "body.0.in_conv.weight" in sd or (
        "adapter.body.0.resnets.0.block1.weight" in sd)


def convert_diffusers_adapter(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """diffusers ``T2IAdapter`` keys -> original keys (full: ``adapter.body.I.resnets.J`` ->
    ``body.{I*nums_rb+J}``, the level's ``in_conv`` to its first block; light:
    ``adapter.body.I.resnets.J`` -> ``body.I.body.J``)."""
    light = any(k.endswith(".out_conv.weight") for k in sd)
    nrb = 1 + max(int(k.split(".")[4]) for k in sd if k.startswith("adapter.body.0.resnets."))
    out = {}
    for k, v in sd.items():
        parts = k.removeprefix("adapter.").split(".")
        if parts[0] == "body" and not light:
            level = int(parts[1])
            if parts[2] == "resnets":
                parts = ["body", str(level * nrb + int(parts[3])), *parts[4:]]
            else:  # in_conv belongs to the level's first block
                parts = ["body", str(level * nrb), *parts[2:]]
        elif parts[0] == "body" and parts[2] == "resnets":
            parts = ["body", parts[1], "body", *parts[3:]]
        out[".".join(parts)] = v
    return out


def _downsample(x: Tensor) -> Tensor:
    """2x average pooling padded to odd sizes as the original (``padding = [H % 2, W % 2]``)."""
    return F.avg_pool2d(x, 2, 2, padding=(x.shape[2] % 2, x.shape[3] % 2))


class ResnetBlock(nn.Module):
    """Full adapter block: optional downsample and ``in_conv``, then ``block2(relu(block1(x))) + x``."""

    def __init__(self, in_c: int, out_c: int, down: bool, ksize: int, use_conv: bool) -> None:
        super().__init__()
        pad = ksize // 2
        self.in_conv = nn.Conv2d(in_c, out_c, ksize, 1, pad) if in_c != out_c else None
        self.block1 = nn.Conv2d(out_c, out_c, 3, 1, 1)
        self.act = nn.ReLU()
        self.block2 = nn.Conv2d(out_c, out_c, ksize, 1, pad)
        self.down = down
        if down and use_conv:
            self.down_opt = nn.Sequential()
            self.down_opt.op = nn.Conv2d(in_c, in_c, 3, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        """[B, Cin, H, W] -> [B, Cout, H', W']."""
        if self.down:
            x = self.down_opt(x) if hasattr(self, "down_opt") else _downsample(x)
        if self.in_conv is not None:
            x = self.in_conv(x)
        return self.block2(self.act(self.block1(x))) + x


class LightResnetBlock(nn.Module):
    """``block2(relu(block1(x))) + x`` with 3x3 convs."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.block1 = nn.Conv2d(c, c, 3, 1, 1)
        self.act = nn.ReLU()
        self.block2 = nn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, C, H, W]."""
        return self.block2(self.act(self.block1(x))) + x


class Extractor(nn.Module):
    """Light adapter level: optional 2x pooling, 1x1 in, ResNet blocks at a quarter width, 1x1 out."""

    def __init__(self, in_c: int, inter_c: int, out_c: int, nums_rb: int, down: bool) -> None:
        super().__init__()
        self.in_conv = nn.Conv2d(in_c, inter_c, 1)
        self.body = nn.Sequential(*(LightResnetBlock(inter_c) for _ in range(nums_rb)))
        self.out_conv = nn.Conv2d(inter_c, out_c, 1)
        self.down = down

    def forward(self, x: Tensor) -> Tensor:
        """[B, Cin, H, W] -> [B, Cout, H', W']."""
        if self.down:
            x = _downsample(x)
        return self.out_conv(self.body(self.in_conv(x)))


class T2IAdapter(nn.Module):
    """``forward(image [B, C, H, W]) -> ControlResiduals`` (``input`` per UNet input block, XL: ``middle``)."""

    def __init__(self, config: AdapterConfig) -> None:
        super().__init__()
        self.config = config
        ch = config.channels
        self.body = nn.ModuleList()
        if config.kind == "light":
            for i, c in enumerate(ch):
                self.body.append(Extractor(config.cin if i == 0 else ch[i - 1], c // 4, c, config.nums_rb, i > 0))
            return
        # full: level i's first block widens (and, but for XL level 1, goes down a level)
        down_levels = (2,) if config.kind == "full_xl" else (1, 2, 3)
        for i, c in enumerate(ch):
            for j in range(config.nums_rb):
                in_c = ch[i - 1] if i > 0 and j == 0 else c
                self.body.append(ResnetBlock(in_c, c, i in down_levels and j == 0, config.ksize, config.use_conv))
        self.conv_in = nn.Conv2d(config.cin, ch[0], 3, 1, 1)

    def features(self, image: Tensor) -> list[Tensor]:
        """The feature map of each level: [B, C_i, H/8/2^i, W/8/2^i] (XL: see the class doc)."""
        x = F.pixel_unshuffle(image, self.config.unshuffle)  # [B, cin, H/u, W/u]
        out = []
        if self.config.kind == "light":
            for block in self.body:
                x = block(x)
                out.append(x)
            return out
        x = self.conv_in(x)
        nrb = self.config.nums_rb
        for i in range(len(self.config.channels)):
            for j in range(nrb):
                x = self.body[i * nrb + j](x)
            out.append(x)
        return out

    def forward(self, image: Tensor) -> ControlResiduals:
        """Features placed at the UNet input blocks that end each level.

        SD1/SD2 UNets have 3 input blocks per level (2 ResBlocks + downsample): level ``i``'s
        features go after block ``3i + 2``.  SDXL's adapter feeds blocks 3, 5 and 8 and the
        middle block (ComfyUI's ``Adapter.forward`` layout).
        """
        feats = self.features(image)
        if self.config.kind == "full_xl":
            f0, f1, f2, f3 = feats
            return ControlResiduals(input=(None, None, None, f0, None, f1, None, None, f2), middle=f3)
        placed: list[Tensor | None] = []
        for f in feats:
            placed += [None, None, f]
        return ControlResiduals(input=tuple(placed))
