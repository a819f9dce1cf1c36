"""The KL autoencoder (VAE) of Stable Diffusion, with LDM checkpoint key names, and tiling.

Reference layout: CompVis/stable-diffusion ``ldm/modules/diffusionmodules/model.py`` (Encoder,
Decoder) and ``ldm/models/autoencoder.py`` (``quant_conv``/``post_quant_conv``) at 21f890f.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from comfy_notebook.models.layers import Conv1x1, group_norm

__all__ = ["AutoencoderKL", "VAEConfig", "tiled_apply"]


@dataclass(frozen=True)
class VAEConfig:
    """Sizes of a KL autoencoder.

    Parameters
    ----------
    in_channels, out_channels:
        Image channels (3).
    ch:
        Channels of the first level; level ``i`` has ``ch * ch_mult[i]``.
    ch_mult:
        Channel multiplier per level; ``len(ch_mult) - 1`` halvings of the resolution.
    num_res_blocks:
        ResNet blocks per encoder level (the decoder has one more).
    z_channels:
        Latent channels.
    use_quant_conv:
        Whether the 1x1 ``quant_conv``/``post_quant_conv`` exist (SD VAEs; the Flux and SD3
        VAEs have none).
    """

    in_channels: int = 3
    out_channels: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 4
    use_quant_conv: bool = True

    @classmethod
    def sd(cls) -> VAEConfig:
        """The SD1/SD2/SDXL VAE (83M parameters, 8x downscaling, 4 latent channels)."""
        return cls()

    @classmethod
    def tiny(cls) -> VAEConfig:
        """A tiny VAE for tests with the real 8x downscaling (four levels, 32/64 channels)."""
        return cls(ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1)

    @classmethod
    def flux(cls) -> VAEConfig:
        """The Flux.1 VAE (``ae.safetensors``): 16 latent channels, no quant convs."""
        return cls(z_channels=16, use_quant_conv=False)

    @classmethod
    def flux_tiny(cls) -> VAEConfig:
        """A tiny 16-channel, quant-conv-free VAE for tests (8x downscaling)."""
        return cls(ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1, z_channels=16, use_quant_conv=False)

    @property
    def downscale(self) -> int:
        """Pixels per latent pixel along one side."""
        return 2 ** (len(self.ch_mult) - 1)


class ResnetBlock(nn.Module):
    """Two GroupNorm-SiLU-conv stages with a (1x1-conv) shortcut."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels, eps=1e-6)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels, eps=1e-6)
        self.dropout = nn.Dropout(0.0)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = Conv1x1(in_channels, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        """[B, Cin, H, W] -> [B, Cout, H, W]."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over pixels with 1x1-conv projections."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = group_norm(channels, eps=1e-6)
        self.q = Conv1x1(channels, channels)
        self.k = Conv1x1(channels, channels)
        self.v = Conv1x1(channels, channels)
        self.proj_out = Conv1x1(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, C, H, W]."""
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (p(y).reshape(b, 1, c, h * w).transpose(2, 3) for p in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # [B, 1, HW, C]
        out = out.transpose(2, 3).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Pad right/bottom by one, then a stride-2 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, C, H/2, W/2]."""
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest 2x upsampling and a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, C, 2H, 2W]."""
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: ``block.N`` ResNet blocks and an optional resampler."""

    def __init__(self, blocks: list[nn.Module], resample: nn.Module | None, name: str) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList()  # SD VAEs have no attention outside the middle block
        if resample is not None:
            self.add_module(name, resample)


class _Mid(nn.Module):
    """The middle block: ResNet, attention, ResNet."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, C, H, W]."""
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    """Image [B, 3, H, W] -> moments [B, 2z, H/f, W/f] (before ``quant_conv``)."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(config.in_channels, config.ch, 3, padding=1)
        self.down = nn.ModuleList()
        ch = config.ch
        for level, mult in enumerate(config.ch_mult):
            blocks: list[nn.Module] = []
            for _ in range(config.num_res_blocks):
                blocks.append(ResnetBlock(ch, config.ch * mult))
                ch = config.ch * mult
            last = level == len(config.ch_mult) - 1
            self.down.append(_Level(blocks, None if last else Downsample(ch), "downsample"))
        self.mid = _Mid(ch)
        self.norm_out = group_norm(ch, eps=1e-6)
        self.conv_out = nn.Conv2d(ch, 2 * config.z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """[B, 3, H, W] -> [B, 2z, H/f, W/f]."""
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                h = block(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent [B, z, h, w] (after ``post_quant_conv``) -> image [B, 3, h*f, w*f]."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        ch = config.ch * config.ch_mult[-1]
        self.conv_in = nn.Conv2d(config.z_channels, ch, 3, padding=1)
        self.mid = _Mid(ch)
        levels: list[nn.Module] = []
        for level in reversed(range(len(config.ch_mult))):
            blocks: list[nn.Module] = []
            for _ in range(config.num_res_blocks + 1):
                blocks.append(ResnetBlock(ch, config.ch * config.ch_mult[level]))
                ch = config.ch * config.ch_mult[level]
            levels.append(_Level(blocks, Upsample(ch) if level != 0 else None, "upsample"))
        self.up = nn.ModuleList(reversed(levels))  # up[0] is the full-resolution level
        self.norm_out = group_norm(ch, eps=1e-6)
        self.conv_out = nn.Conv2d(ch, config.out_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        """[B, z, h, w] -> [B, 3, h*f, w*f]."""
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            for block in level.block:
                h = block(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


def tiled_apply(
    fn: Callable[[Tensor], Tensor],
    x: Tensor,
    tile: int,
    overlap: int,
    scale: float,
    out_channels: int,
) -> Tensor:
    """Apply ``fn`` to overlapping tiles of ``x`` and blend the results.

    Tiles of ``tile`` input pixels overlap by ``overlap``; each output tile is weighted by a mask
    that ramps linearly across the overlap at inner edges (1 at image borders), and the sum is
    divided by the summed weights.  ``scale`` is output pixels per input pixel.
    x: [B, C, H, W] -> [B, out_channels, H*scale, W*scale]
    """
    b, _, h, w = x.shape
    if overlap < 0 or tile <= overlap:
        raise ValueError(f"need 0 <= overlap < tile, received tile={tile}, overlap={overlap}")
    out_h, out_w = round(h * scale), round(w * scale)
    out = torch.zeros(b, out_channels, out_h, out_w, dtype=x.dtype, device=x.device)
    weight = torch.zeros(1, 1, out_h, out_w, dtype=x.dtype, device=x.device)

    def starts(size: int) -> list[int]:
        if size <= tile:
            return [0]
        step = tile - overlap
        pos = list(range(0, size - tile, step))
        return [*pos, size - tile]

    def ramp(n: int, lo_edge: bool, hi_edge: bool, fade: int) -> Tensor:
        mask = torch.ones(n, dtype=x.dtype, device=x.device)
        fade = min(fade, n // 2)
        if fade > 0:
            r = (torch.arange(fade, dtype=x.dtype, device=x.device) + 1) / (fade + 1)
            if lo_edge:
                mask[:fade] = r
            if hi_edge:
                mask[n - fade:] = r.flip(0)
        return mask

    fade = round(overlap * scale)
    for y0 in starts(h):
        for x0 in starts(w):
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            piece = fn(x[:, :, y0:y1, x0:x1])  # [B, Co, th*s, tw*s]
            oy0, ox0 = round(y0 * scale), round(x0 * scale)
            th, tw = piece.shape[-2:]
            my = ramp(th, y0 > 0, y1 < h, fade)
            mx = ramp(tw, x0 > 0, x1 < w, fade)
            mask = (my[:, None] * mx[None, :])[None, None]  # [1, 1, th, tw]
            out[:, :, oy0:oy0 + th, ox0:ox0 + tw] += piece.to(x.dtype) * mask
            weight[:, :, oy0:oy0 + th, ox0:ox0 + tw] += mask
    return out / weight


class AutoencoderKL(nn.Module):
    """The KL autoencoder: ``encode`` pixels in -1..1 to latents, ``decode`` latents to pixels."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        z = config.z_channels
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        if config.use_quant_conv:
            self.quant_conv = Conv1x1(2 * z, 2 * z)
            self.post_quant_conv = Conv1x1(z, z)

    def _dtype(self) -> torch.dtype:
        return self.decoder.conv_out.weight.dtype

    def _quant(self, moments: Tensor) -> Tensor:
        return self.quant_conv(moments) if self.config.use_quant_conv else moments

    def _post_quant(self, z: Tensor) -> Tensor:
        return self.post_quant_conv(z) if self.config.use_quant_conv else z

    def encode(self, pixels: Tensor) -> Tensor:
        """Encode images to latents.

        Returns the mean of the posterior, not a sample: ComfyUI's KL regulariser is built with
        ``sample=False`` and so returns the distribution's mode (= mean) on VAEEncode.

        Parameters
        ----------
        pixels:
            [B, 3, H, W] in -1..1, H and W multiples of ``config.downscale``.

        Returns
        -------
        Tensor
            [B, z_channels, H/f, W/f], unscaled (apply the family's ``process_in`` for the UNet).
        """
        moments = self._quant(self.encoder(pixels.to(self._dtype())))  # [B, 2z, h, w]
        return moments[:, : self.config.z_channels].to(pixels.dtype)

    def decode(self, latent: Tensor) -> Tensor:
        """Decode latents [B, z, h, w] to pixels [B, 3, h*f, w*f] in about -1..1 (unclamped)."""
        return self.decoder(self._post_quant(latent.to(self._dtype()))).to(latent.dtype)

    def decode_tiled(self, latent: Tensor, tile: int = 64, overlap: int = 16) -> Tensor:
        """Decode in overlapping latent tiles of ``tile`` latent pixels, blended over ``overlap``.

        Equal to :meth:`decode` when the latent fits in one tile; close to it otherwise.
        """
        f = self.config.downscale
        return tiled_apply(self.decode, latent, tile, overlap, f, self.config.out_channels)

    def encode_tiled(self, pixels: Tensor, tile: int = 512, overlap: int = 64) -> Tensor:
        """Encode in overlapping pixel tiles of ``tile`` pixels, blended over ``overlap``.

        ``tile`` and ``overlap`` are rounded down to multiples of the downscale factor.
        """
        f = self.config.downscale
        tile, overlap = max(tile // f, 1) * f, (overlap // f) * f
        return tiled_apply(self.encode, pixels, tile, overlap, 1.0 / f, self.config.z_channels)
