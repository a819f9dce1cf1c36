"""The LDM UNet of Stable Diffusion 1.x (and the options SD2/SDXL need), checkpoint key names.

Reference layout: CompVis/stable-diffusion ``ldm/modules/diffusionmodules/openaimodel.py`` at
21f890f; parameter names equal the keys under ``model.diffusion_model.`` so loading is strict with
no renaming table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from comfy_notebook.models.layers import Conv1x1, SpatialTransformer, group_norm

__all__ = ["ControlResiduals", "UNetConfig", "UNetEncoder", "UNetModel", "timestep_embedding"]


@dataclass(frozen=True)
class UNetConfig:
    """Sizes of an LDM UNet.

    Parameters
    ----------
    in_channels, out_channels:
        Latent channels in and out.
    model_channels:
        Channels of the first level; level ``i`` has ``model_channels * channel_mult[i]``.
    channel_mult:
        Channel multiplier per resolution level.
    num_res_blocks:
        ResBlocks per level on the input side (the output side has one more).
    transformer_depth:
        Transformer blocks per attention layer, per level, input side; 0 = no attention there.
    transformer_depth_output:
        The same for the output side, per level (``None``: as ``transformer_depth``).
    transformer_depth_middle:
        Transformer blocks in the middle block (``None``: the largest level depth).
    context_dim:
        Width of the text conditioning.
    num_heads, num_head_channels:
        Exactly one is positive: a fixed head count (SD1: 8) or a fixed head width (SD2: 64).
    use_linear_in_transformer:
        Linear instead of 1x1-conv ``proj_in``/``proj_out`` (SD2, SDXL).
    adm_in_channels:
        Width of the extra ``y`` vector embedding (SDXL ``label_emb``); ``None`` for none.
    """

    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    transformer_depth: tuple[int, ...] = (1, 1, 1, 0)
    transformer_depth_output: tuple[int, ...] | None = None
    transformer_depth_middle: int | None = None
    context_dim: int = 768
    num_heads: int = 8
    num_head_channels: int = -1
    use_linear_in_transformer: bool = False
    adm_in_channels: int | None = None

    def __post_init__(self) -> None:
        levels = len(self.channel_mult)
        if len(self.transformer_depth) != levels:
            raise ValueError(
                f"transformer_depth needs one entry per level ({levels}), got {self.transformer_depth}"
            )
        if self.transformer_depth_output is not None and len(self.transformer_depth_output) != levels:
            raise ValueError(
                f"transformer_depth_output needs {levels} entries, got {self.transformer_depth_output}"
            )
        if (self.num_heads > 0) == (self.num_head_channels > 0):
            raise ValueError("set exactly one of num_heads and num_head_channels to a positive value")

    @classmethod
    def sd15(cls) -> UNetConfig:
        """Stable Diffusion 1.x (1.4, 1.5): 860M parameters."""
        return cls()

    @classmethod
    def sd21(cls) -> UNetConfig:
        """Stable Diffusion 2.x (2.0, 2.1; 512 and 768): 866M parameters, 64-wide heads."""
        return cls(context_dim=1024, num_heads=-1, num_head_channels=64, use_linear_in_transformer=True)

    @classmethod
    def sdxl(cls) -> UNetConfig:
        """SDXL 1.0 base: 2.57B parameters, ``y`` of 2816."""
        return cls(channel_mult=(1, 2, 4), transformer_depth=(0, 2, 10), context_dim=2048,
                   num_heads=-1, num_head_channels=64, use_linear_in_transformer=True,
                   adm_in_channels=2816)

    @classmethod
    def sdxl_refiner(cls) -> UNetConfig:
        """SDXL 1.0 refiner: 2.3B parameters, 384 channels, ``y`` of 2560."""
        return cls(model_channels=384, transformer_depth=(0, 4, 4, 0), context_dim=1280,
                   num_heads=-1, num_head_channels=64, use_linear_in_transformer=True,
                   adm_in_channels=2560)

    @classmethod
    def sd1_tiny(cls) -> UNetConfig:
        """A tiny SD1-shaped UNet for tests (two levels, 32/64 channels)."""
        return cls(model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                   transformer_depth=(1, 1), context_dim=32)

    @classmethod
    def sd1_tiny_linear(cls) -> UNetConfig:
        """Tiny UNet with linear projections and uneven transformer depth (SDXL-like options)."""
        return cls(model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
                   transformer_depth=(0, 1, 2), transformer_depth_output=(0, 2, 1),
                   context_dim=32, use_linear_in_transformer=True)

    @property
    def depth_output(self) -> tuple[int, ...]:
        """Transformer depth per level on the output side."""
        return self.transformer_depth_output or self.transformer_depth

    @property
    def depth_middle(self) -> int:
        """Transformer depth of the middle block."""
        if self.transformer_depth_middle is not None:
            return self.transformer_depth_middle
        return max(self.transformer_depth)

    def heads_for(self, channels: int) -> tuple[int, int]:
        """(heads, head width) of an attention layer with ``channels`` channels."""
        if self.num_heads > 0:
            return self.num_heads, channels // self.num_heads
        return channels // self.num_head_channels, self.num_head_channels


def timestep_embedding(timesteps: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding ``[cos | sin]`` of (possibly fractional) timesteps: [B] -> [B, dim]."""
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    freqs = torch.exp(-math.log(max_period) * exponent)  # [half]
    args = timesteps.float()[:, None] * freqs[None]  # [B, half]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class ResBlock(nn.Module):
    """Two 3x3 convs with a timestep-embedding shift in between and a residual connection."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(
            group_norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            group_norm(out_channels), nn.SiLU(), nn.Dropout(0.0),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip_connection: nn.Module = (
            nn.Identity() if channels == out_channels else Conv1x1(channels, out_channels)
        )

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """x: [B, C, H, W], emb: [B, E] -> [B, Cout, H, W]."""
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class Downsample(nn.Module):
    """Stride-2 3x3 conv (key ``op``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, C, ceil(H/2), ceil(W/2)]."""
        return self.op(x)


class Upsample(nn.Module):
    """Nearest 2x upsampling (or to the skip tensor's size) followed by a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """[B, C, H, W] -> [B, C, 2H, 2W] (or ``size``)."""
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode="nearest")
        return self.conv(x)


class TimestepBlock(nn.Sequential):
    """A sequence of UNet layers; each gets the inputs its kind needs."""

    def forward(  # type: ignore[override]
        self, x: Tensor, emb: Tensor, context: Tensor, size: tuple[int, int] | None = None
    ) -> Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            elif isinstance(layer, Upsample):
                x = layer(x, size)
            else:
                x = layer(x)
        return x


class ControlResiduals(NamedTuple):
    """What a ControlNet / T2I-Adapter adds to the UNet (ComfyUI's ``control`` dict, in block order).

    ``input[i]`` is added to the output of input block ``i`` (T2I-Adapter features), ``middle``
    after the middle block, ``output[i]`` to the skip connection of input block ``i`` as the
    output side takes it (ControlNet zero-conv outputs).  ``None`` entries and missing tail
    entries add nothing.  ComfyUI keeps the same lists reversed and pops them
    (``openaimodel.py: apply_control`` at a125cd8); indexing gives the same pairing.
    """

    input: Sequence[Tensor | None] = ()
    middle: Tensor | None = None
    output: Sequence[Tensor | None] = ()


def _add(h: Tensor, residuals: Sequence[Tensor | None], i: int, where: str) -> Tensor:
    """``h + residuals[i]`` when there is one (shapes checked statically: no host sync)."""
    r = residuals[i] if i < len(residuals) else None
    if r is None:
        return h
    if r.shape[1:] != h.shape[1:]:
        raise ValueError(
            f"control residual for {where} has shape {tuple(r.shape)}, the UNet block gives "
            f"{tuple(h.shape)}. Fix: use a ControlNet / T2I-Adapter made for this model's family")
    return h + r.to(h.dtype)


class UNetEncoder(nn.Module):
    """Time/label embeddings, input blocks and middle block of the LDM UNet.

    Shared by :class:`UNetModel` and the ControlNet (a trainable copy of this half), so both
    carry the checkpoint's parameter names.
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        mc = config.model_channels
        emb_ch = mc * 4
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))
        if config.adm_in_channels is not None:
            self.label_emb = nn.Sequential(nn.Sequential(
                nn.Linear(config.adm_in_channels, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch)
            ))

        self.input_blocks = nn.ModuleList([TimestepBlock(nn.Conv2d(config.in_channels, mc, 3, padding=1))])
        self.skip_channels = [mc]  # channels of each input block's output
        ch = mc
        last = len(config.channel_mult) - 1
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, emb_ch, mc * mult)]
                ch = mc * mult
                if config.transformer_depth[level] > 0:
                    layers.append(self.transformer(ch, config.transformer_depth[level]))
                self.input_blocks.append(TimestepBlock(*layers))
                self.skip_channels.append(ch)
            if level != last:
                self.input_blocks.append(TimestepBlock(Downsample(ch)))
                self.skip_channels.append(ch)

        middle: list[nn.Module] = [ResBlock(ch, emb_ch, ch)]
        if config.depth_middle > 0:
            middle.append(self.transformer(ch, config.depth_middle))
        middle.append(ResBlock(ch, emb_ch, ch))
        self.middle_block = TimestepBlock(*middle)

    def transformer(self, ch: int, depth: int) -> SpatialTransformer:
        """The attention layer of a block with ``ch`` channels."""
        heads, dim_head = self.config.heads_for(ch)
        return SpatialTransformer(ch, heads, dim_head, depth, self.config.context_dim,
                                  self.config.use_linear_in_transformer)

    def embed(self, timesteps: Tensor, y: Tensor | None) -> Tensor:
        """Timestep (plus label) embedding: [B] (, [B, adm]) -> [B, 4mc] in the weights' dtype."""
        if (y is None) != (self.config.adm_in_channels is None):
            raise ValueError(
                "y must be given exactly when the UNet has a label embedding "
                f"(adm_in_channels={self.config.adm_in_channels}), received y={'None' if y is None else tuple(y.shape)}"
            )
        dtype = self.time_embed[0].weight.dtype
        t_emb = timestep_embedding(timesteps, self.config.model_channels).to(dtype)  # [B, mc]
        emb = self.time_embed(t_emb)  # [B, 4mc]
        if y is not None:
            emb = emb + self.label_emb(y.to(dtype))
        return emb


class UNetModel(UNetEncoder):
    """The LDM UNet; ``forward(x, timesteps, context, y=None, control=None)`` predicts noise (or v)."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__(config)
        mc = config.model_channels
        emb_ch = mc * 4
        skip_channels = list(self.skip_channels)
        ch = skip_channels[-1]
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for i in range(config.num_res_blocks + 1):
                layers: list[nn.Module] = [ResBlock(ch + skip_channels.pop(), emb_ch, mc * mult)]
                ch = mc * mult
                if config.depth_output[level] > 0:
                    layers.append(self.transformer(ch, config.depth_output[level]))
                if level != 0 and i == config.num_res_blocks:
                    layers.append(Upsample(ch))
                self.output_blocks.append(TimestepBlock(*layers))

        self.out = nn.Sequential(group_norm(ch), nn.SiLU(), nn.Conv2d(ch, config.out_channels, 3, padding=1))

    def forward(
        self, x: Tensor, timesteps: Tensor, context: Tensor, y: Tensor | None = None,
        control: ControlResiduals | None = None,
    ) -> Tensor:
        """Predict the model output.

        Parameters
        ----------
        x:
            Noisy latents, [B, C, H, W].
        timesteps:
            DDPM timesteps (float allowed), [B].
        context:
            Text conditioning, [B, T, context_dim].
        y:
            Extra vector conditioning, [B, adm_in_channels]; required iff the model has one.
        control:
            ControlNet / T2I-Adapter residuals (batch B), added where ComfyUI adds them.

        Returns
        -------
        Tensor
            [B, out_channels, H, W].
        """
        emb = self.embed(timesteps, y)
        dtype = emb.dtype
        context = context.to(dtype)
        h = x.to(dtype)
        skips: list[Tensor] = []
        for i, block in enumerate(self.input_blocks):
            h = block(h, emb, context)
            if control is not None:
                h = _add(h, control.input, i, f"input block {i}")
            skips.append(h)
        h = self.middle_block(h, emb, context)
        if control is not None and control.middle is not None:
            h = _add(h, (control.middle,), 0, "the middle block")
        for i, block in enumerate(self.output_blocks):
            skip = skips.pop()
            if control is not None:
                skip = _add(skip, control.output, len(skips), f"skip {len(skips)}")
            h = torch.cat([h, skip], dim=1)  # [B, C + Cskip, H, W]
            size = tuple(skips[-1].shape[-2:]) if skips and i + 1 < len(self.output_blocks) else None
            h = block(h, emb, context, size)
        return self.out(h).to(x.dtype)
