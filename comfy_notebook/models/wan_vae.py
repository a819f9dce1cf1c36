"""The Wan-2.1 causal 3-D VAE as Qwen-Image uses it: one frame at a time, with ComfyUI's key names.

Qwen-Image (and Qwen-Image-Edit) encode and decode single images with the video VAE of Wan 2.1
(``vae/qwen_image_vae.safetensors``, 16 latent channels, 8x spatial downscaling).  The file's
keys follow ComfyUI ``comfy/ldm/wan/vae.py`` (``WanVAE``: ``encoder.conv1``,
``encoder.downsamples.N.residual.{0,2,3,6}``, ``encoder.middle.{0,1,2}``, ``encoder.head.{0,2}``,
``conv1``/``conv2`` around the latent, ``decoder.upsamples.N`` ...; ComfyUI commit a125cd8),
which this module keeps as its own parameter names so the file loads as it is.

On one frame the causal convolutions see their input preceded by zero frames only, so a
``k x 3 x 3`` causal kernel reduces to its last temporal slice: every convolution runs as a 2-D
convolution on ``[frames, C, H, W]`` and the temporal resamplers (``time_conv``) are not used
on a first frame (ComfyUI and diffusers skip them there too).  The parameters keep their
released 3-D shapes, so the parameter count is the released model's (126.9M).

Tiling follows ComfyUI's path for this VAE (``comfy.utils.tiled_scale_multidim``): one pass of
tiles at a stride of ``tile - overlap``, each output tile feathered linearly over the overlap on
every side and the sum divided by the summed weights.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["WanVAE", "WanVAEConfig", "tiled_feathered"]


@dataclass(frozen=True)
class WanVAEConfig:
    """Sizes of a Wan-2.1 VAE.

    Parameters
    ----------
    dim:
        Channels of the first level; level ``i`` has ``dim * dim_mult[i]``.
    z_dim:
        Latent channels.
    dim_mult:
        Channel multiplier per level; ``len(dim_mult) - 1`` spatial halvings.
    num_res_blocks:
        Residual blocks per encoder level (the decoder has one more).
    temporal_downsample:
        Per encoder level transition, whether it also halves time (``downsample3d``, with a
        ``time_conv``); the decoder mirrors it.  Only the parameters depend on it for a frame.
    """

    dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_downsample: tuple[bool, ...] = (False, True, True)

    @classmethod
    def qwen_image(cls) -> WanVAEConfig:
        """The released Qwen-Image / Wan-2.1 VAE (126.9M parameters)."""
        return cls()

    @classmethod
    def tiny(cls) -> WanVAEConfig:
        """A tiny VAE for tests with the real 8x downscaling and 16 latent channels."""
        return cls(dim=8, dim_mult=(1, 2, 2, 2), num_res_blocks=1)

    @property
    def downscale(self) -> int:
        """Pixels per latent pixel along one side."""
        return 2 ** (len(self.dim_mult) - 1)


class CausalConv3d(nn.Conv3d):
    """A causal 3-D convolution (zero frames before the first), run here on single frames."""

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        """[N, Cin, H, W] (N frames, each the first of its clip) -> [N, Cout, H', W']."""
        w = self.weight[:, :, -1]  # the slice that meets the frame; the others see zero padding
        return F.conv2d(x, w, self.bias, stride=self.stride[1:], padding=self.padding[1:])


class RMSNorm(nn.Module):
    """L2-normalise over channels, times ``sqrt(C) * gamma`` (ComfyUI ``RMS_norm``, no bias)."""

    def __init__(self, dim: int, images: bool = True) -> None:
        super().__init__()
        # video norms store gamma as [C, 1, 1, 1], image ones (attention) as [C, 1, 1]
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1) if images else torch.ones(dim, 1, 1, 1))
        self.scale = dim ** 0.5

    def forward(self, x: Tensor) -> Tensor:
        """[N, C, H, W] -> [N, C, H, W]."""
        return F.normalize(x, dim=1) * self.scale * self.gamma.reshape(1, -1, 1, 1).to(x)


class ResidualBlock(nn.Module):
    """Norm-SiLU-conv twice, with a 1x1 shortcut when the width changes (``residual.{0,2,3,6}``)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            RMSNorm(in_dim, images=False), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim, images=False), nn.SiLU(), nn.Dropout(0.0),
            CausalConv3d(out_dim, out_dim, 3, padding=1))
        self.shortcut: nn.Module = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """[N, Cin, H, W] -> [N, Cout, H, W]."""
        return self.residual(x) + self.shortcut(x)


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame (1x1-conv projections)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        """[N, C, H, W] -> [N, C, H, W]."""
        n, c, h, w = x.shape
        qkv = self.to_qkv(self.norm(x)).reshape(n, 1, 3 * c, h * w).transpose(2, 3)
        q, k, v = qkv.chunk(3, dim=-1)  # [N, 1, HW, C] each
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(2, 3).reshape(n, c, h, w))


class _Upsample(nn.Module):
    """Nearest-exact 2x upsampling (parameter-free slot ``resample.0``).

    It copies values, so it runs in the input's dtype: diffusers and ComfyUI round-trip
    through fp32 for old bf16 kernels, which would double the largest activation here.
    """

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="nearest-exact")


class Resample(nn.Module):
    """A level transition: ``upsample{2,3}d`` (2x, conv to half width) or ``downsample{2,3}d``
    (pad right/bottom, stride-2 conv); the 3-D kinds also hold the ``time_conv`` a video uses."""

    def __init__(self, dim: int, mode: str) -> None:
        super().__init__()
        self.mode = mode
        if mode.startswith("upsample"):
            self.resample = nn.Sequential(_Upsample(), nn.Conv2d(dim, dim // 2, 3, padding=1))
            if mode == "upsample3d":
                self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode.startswith("downsample"):
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
            if mode == "downsample3d":
                self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))
        else:
            raise ValueError(f"unknown resample mode {mode!r}")

    def forward(self, x: Tensor) -> Tensor:
        """A first frame: the spatial resampler only (``time_conv`` starts at the second)."""
        return self.resample(x)


def _head(dim: int, out: int) -> nn.Sequential:
    return nn.Sequential(RMSNorm(dim, images=False), nn.SiLU(), CausalConv3d(dim, out, 3, padding=1))


def _middle(dim: int) -> nn.Sequential:
    return nn.Sequential(ResidualBlock(dim, dim), AttentionBlock(dim), ResidualBlock(dim, dim))


class Encoder3d(nn.Module):
    """Frames [N, 3, H, W] -> moments [N, 2z, H/f, W/f] (before ``conv1``)."""

    def __init__(self, c: WanVAEConfig) -> None:
        super().__init__()
        dims = [c.dim * u for u in (1, *c.dim_mult)]
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(itertools.pairwise(dims)):
            for _ in range(c.num_res_blocks):
                layers.append(ResidualBlock(cin, cout))
                cin = cout
            if i != len(c.dim_mult) - 1:
                layers.append(Resample(cout, "downsample3d" if c.temporal_downsample[i] else "downsample2d"))
        self.downsamples = nn.Sequential(*layers)
        self.middle = _middle(dims[-1])
        self.head = _head(dims[-1], 2 * c.z_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.middle(self.downsamples(self.conv1(x))))


class Decoder3d(nn.Module):
    """Latent frames [N, z, h, w] (after ``conv2``) -> pixels [N, 3, h*f, w*f]."""

    def __init__(self, c: WanVAEConfig) -> None:
        super().__init__()
        dims = [c.dim * u for u in (c.dim_mult[-1], *reversed(c.dim_mult))]
        upsample = tuple(reversed(c.temporal_downsample))
        self.conv1 = CausalConv3d(c.z_dim, dims[0], 3, padding=1)
        self.middle = _middle(dims[0])
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(itertools.pairwise(dims)):
            if i > 0:
                cin //= 2  # the previous level's upsampler halved the width
            for _ in range(c.num_res_blocks + 1):
                layers.append(ResidualBlock(cin, cout))
                cin = cout
            if i != len(c.dim_mult) - 1:
                layers.append(Resample(cout, "upsample3d" if upsample[i] else "upsample2d"))
        self.upsamples = nn.Sequential(*layers)
        self.head = _head(dims[-1], 3)

    def forward(self, z: Tensor) -> Tensor:
        return self.head(self.upsamples(self.middle(self.conv1(z))))


def tiled_feathered(fn: Callable[[Tensor], Tensor], x: Tensor, tile: int, overlap: int, scale: float,
                    out_channels: int) -> Tensor:
    """Apply ``fn`` to overlapping 2-D tiles of ``x`` and blend them as ComfyUI's multidim tiler.

    Tiles start every ``tile - overlap`` input pixels (the last ones shorter, clipped to the
    edge); each output tile is weighted by a ramp ``(t+1)/feather`` over ``feather =
    round(overlap * scale)`` pixels at both ends of each axis, and the blend divides by the
    summed weights.  ``scale`` is output pixels per input pixel.  An input that fits one tile is
    ``fn(x)`` exactly.  x: [B, C, H, W] -> [B, out_channels, H*scale, W*scale].
    """
    b, _, h, w = x.shape
    if overlap < 0 or tile <= overlap:
        raise ValueError(f"need 0 <= overlap < tile, received tile={tile}, overlap={overlap}")
    if h <= tile and w <= tile:
        return fn(x)
    oh, ow = round(h * scale), round(w * scale)
    out = torch.zeros(b, out_channels, oh, ow, dtype=torch.float32, device=x.device)
    div = torch.zeros(1, 1, oh, ow, dtype=torch.float32, device=x.device)
    feather = round(overlap * scale)

    def starts(size: int) -> list[int]:
        return list(range(0, size - overlap, tile - overlap)) if size > tile else [0]

    def ramp(n: int) -> Tensor:
        m = torch.ones(n, dtype=torch.float32, device=x.device)
        if 0 < feather < n:
            for t in range(feather):  # both ends; ComfyUI multiplies, so a short tile's ramps overlap
                a = (t + 1) / feather
                m[t] *= a
                m[n - 1 - t] *= a
        return m

    for y in starts(h):
        y = max(0, min(h - overlap, y))
        for x0 in starts(w):
            x0 = max(0, min(w - overlap, x0))
            piece = fn(x[:, :, y:y + min(tile, h - y), x0:x0 + min(tile, w - x0)]).float()
            th, tw = piece.shape[-2:]
            oy, ox = round(y * scale), round(x0 * scale)
            mask = ramp(th)[:, None] * ramp(tw)[None, :]
            out[:, :, oy:oy + th, ox:ox + tw] += piece * mask
            div[:, :, oy:oy + th, ox:ox + tw] += mask
    return (out / div).to(x.dtype)


class WanVAE(nn.Module):
    """The Wan-2.1 VAE on single frames: ``encode`` pixels in -1..1 to latents, ``decode`` back.

    Latents are the raw VAE latents (the family's per-channel ``process_in`` normalises them for
    the diffusion model).  Images and latents are 4-D ``[B, C, H, W]`` (each image one frame);
    5-D ``[B, C, 1, H, W]`` single-frame clips are accepted and returned 5-D.
    """

    #: ComfyUI's tiles for this VAE when it falls back to tiling (latent / pixel units)
    decode_tile, decode_overlap = 32, 8
    encode_tile, encode_overlap = 256, 64

    def __init__(self, config: WanVAEConfig) -> None:
        super().__init__()
        self.config = config
        z = config.z_dim
        self.encoder = Encoder3d(config)
        self.conv1 = CausalConv3d(2 * z, 2 * z, 1)
        self.conv2 = CausalConv3d(z, z, 1)
        self.decoder = Decoder3d(config)

    def _dtype(self) -> torch.dtype:
        return self.conv2.weight.dtype

    @staticmethod
    def _frames(x: Tensor) -> tuple[Tensor, bool]:
        if x.dim() == 5:
            if x.shape[2] != 1:
                raise ValueError(
                    f"this VAE decodes and encodes single frames; received {x.shape[2]} frames "
                    f"(shape {tuple(x.shape)}). Fix: pass images as a batch [B, C, H, W]")
            return x[:, :, 0], True
        if x.dim() != 4:
            raise ValueError(f"expected [B, C, H, W] (or [B, C, 1, H, W]), received shape {tuple(x.shape)}")
        return x, False

    def encode(self, pixels: Tensor) -> Tensor:
        """Images [B, 3, H, W] in -1..1 (H, W multiples of 8) -> latent means [B, z, H/8, W/8].

        The posterior's mean, as ComfyUI's ``WanVAE.encode`` returns it.
        """
        x, video = self._frames(pixels)
        moments = self.conv1(self.encoder(x.to(self._dtype())))
        mu = moments[:, : self.config.z_dim].to(pixels.dtype)
        return mu.unsqueeze(2) if video else mu

    def decode(self, latent: Tensor) -> Tensor:
        """Latents [B, z, h, w] -> images [B, 3, 8h, 8w] in about -1..1 (unclamped)."""
        z, video = self._frames(latent)
        out = self.decoder(self.conv2(z.to(self._dtype()))).to(latent.dtype)
        return out.unsqueeze(2) if video else out

    def decode_tiled(self, latent: Tensor, tile: int | None = None, overlap: int | None = None) -> Tensor:
        """Decode in tiles of ``tile`` latent pixels overlapping by ``overlap`` (ComfyUI: 32 / 8)."""
        z, video = self._frames(latent)
        tile = self.decode_tile if tile is None else tile
        overlap = self.decode_overlap if overlap is None else overlap
        out = tiled_feathered(self.decode, z, tile, overlap, self.config.downscale, 3)
        return out.unsqueeze(2) if video else out

    def encode_tiled(self, pixels: Tensor, tile: int | None = None, overlap: int | None = None) -> Tensor:
        """Encode in tiles of ``tile`` pixels overlapping by ``overlap`` (ComfyUI: 256 / 64).

        Both are rounded down to multiples of the downscale factor.
        """
        x, video = self._frames(pixels)
        f = self.config.downscale
        tile = self.encode_tile if tile is None else tile
        overlap = self.encode_overlap if overlap is None else overlap
        tile, overlap = max(tile // f, 1) * f, (overlap // f) * f
        out = tiled_feathered(self.encode, x, tile, overlap, 1.0 / f, self.config.z_dim)
        return out.unsqueeze(2) if video else out

    def count_parameters(self) -> int:
        """Parameters, the temporal ones included (the released file's count)."""
        return sum(math.prod(p.shape) for p in self.parameters())
