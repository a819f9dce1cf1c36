"""ControlNet (Zhang et al. 2023): a trainable copy of the UNet's encoder steering the UNet.

The copy (time embedding, input blocks, middle block) is :class:`~comfy_notebook.models.unet.UNetEncoder`
itself, so parameter names equal the original file keys (``control_model.`` stripped):
``input_hint_block.*`` embeds the hint image to the first block's width, ``zero_convs.N.0``
and ``middle_block_out.0`` are the 1x1 "zero convolutions" whose outputs the UNet adds to its
skip connections and after its middle block.

Reference layout: lllyasviel/ControlNet ``cldm/cldm.py`` as ComfyUI keeps it
(``comfy/cldm/cldm.py`` at a125cd8); the forward returns what ComfyUI's ``{"output", "middle"}``
dict holds, as :class:`~comfy_notebook.models.unet.ControlResiduals`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from comfy_notebook.models.controlnet_union import add_union_parts, check_control_type, union_merge
from comfy_notebook.models.layers import Conv1x1
from comfy_notebook.models.unet import ControlResiduals, UNetConfig, UNetEncoder

__all__ = ["ControlNetConfig", "ControlNetModel"]

# Channels of the hint embedding's convolutions; the stride-2 ones bring the hint from pixel
# size to latent size (8x).  Fixed by the architecture (ComfyUI cldm.py, diffusers
# ControlNetConditioningEmbedding's default (16, 32, 96, 256)).
_HINT_CHANNELS = (16, 16, 32, 32, 96, 96, 256)
_HINT_STRIDES = (1, 1, 2, 1, 2, 1, 2)


@dataclass(frozen=True)
class ControlNetConfig:
    """Sizes of a ControlNet: the UNet encoder it copies plus the hint image's channels."""

    unet: UNetConfig
    hint_channels: int = 3
    union_types: int | None = None  # a union (ControlNet++) net: how many control types it knows

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, Any], prefix: str = "", *, num_heads: int = 8,
                        num_head_channels: int = -1) -> ControlNetConfig:
        """Read the sizes from a ControlNet state dict's shapes (original layout, ``prefix`` before
        keys); the attention head rule is the UNet family's (SD1: 8 heads, later: 64-wide heads)."""
        from comfy_notebook.models.detect import read_unet_config

        keys = [k for k in sd if k.startswith(prefix)]
        unet = read_unet_config(sd, keys, prefix, num_heads=num_heads, num_head_channels=num_head_channels)
        union = int(sd[prefix + "task_embedding"].shape[0]) if prefix + "task_embedding" in sd else None
        return cls(unet=unet, hint_channels=int(sd[prefix + "input_hint_block.0.weight"].shape[1]),
                   union_types=union)


    def residual_elements(self, h: int, w: int) -> int:
        """Values of one image's residuals on an [h, w] latent (every skip plus the middle)."""
        u = self.unet
        mc, levels = u.model_channels, len(u.channel_mult)
        total = mc * h * w  # the first block
        for level, mult in enumerate(u.channel_mult):
            area = -(-h // 2**level) * -(-w // 2**level)
            total += u.num_res_blocks * mc * mult * area
            if level != levels - 1:
                total += mc * mult * -(-h // 2 ** (level + 1)) * -(-w // 2 ** (level + 1))
        return total + mc * u.channel_mult[-1] * -(-h // 2 ** (levels - 1)) * -(-w // 2 ** (levels - 1))


def _hint_block(hint_channels: int, model_channels: int) -> nn.Sequential:
    """Convs with SiLU between them (keys ``input_hint_block.0, .2, ..., .14``): [B, Ch, 8h, 8w] -> [B, mc, h, w]."""
    layers: list[nn.Module] = []
    ch = hint_channels
    for out, stride in zip(_HINT_CHANNELS, _HINT_STRIDES, strict=True):
        layers += [nn.Conv2d(ch, out, 3, stride=stride, padding=1), nn.SiLU()]
        ch = out
    layers.append(nn.Conv2d(ch, model_channels, 3, padding=1))
    return nn.Sequential(*layers)


class ControlNetModel(UNetEncoder):
    """``forward(x, hint, timesteps, context, y=None) -> ControlResiduals`` (output + middle)."""

    def __init__(self, config: ControlNetConfig) -> None:
        super().__init__(config.unet)
        self.control_config = config
        self.zero_convs = nn.ModuleList(nn.Sequential(Conv1x1(ch, ch)) for ch in self.skip_channels)
        self.input_hint_block = _hint_block(config.hint_channels, config.unet.model_channels)
        ch = self.skip_channels[-1]
        self.middle_block_out = nn.Sequential(Conv1x1(ch, ch))
        if config.union_types is not None:
            mc = config.unet.model_channels
            add_union_parts(self, config.union_types, mc, 4 * mc)

    def forward(self, x: Tensor, hint: Tensor, timesteps: Tensor, context: Tensor,
                y: Tensor | None = None, control_type: Sequence[int] = ()) -> ControlResiduals:
        """Residuals for the UNet.

        Parameters
        ----------
        x:
            The UNet's (scaled) input latent, [B, C, h, w].
        hint:
            The control image, [B, hint_channels, 8h, 8w] (values as the model was trained: 0..1).
        timesteps, context, y:
            As the UNet's.
        control_type:
            Union nets: the control type (``SetUnionControlNetType``), or none ("auto").

        Returns
        -------
        ControlResiduals
            ``output[i]`` [B, C_i, h_i, w_i] per input block, ``middle`` [B, C, h/2^L, w/2^L].
        """
        emb = self.embed(timesteps, y)
        dtype = emb.dtype
        context = context.to(dtype)
        guided = self.input_hint_block(hint.to(dtype))  # [B, mc, h, w]
        if self.control_config.union_types is not None:
            check_control_type(self.control_config.union_types, control_type)
            emb = emb + self.control_add_embedding(control_type, dtype, emb.device)
            if control_type:
                guided = union_merge(self, guided, control_type)
        h = x.to(dtype)
        outs = []
        for i, (block, zero_conv) in enumerate(zip(self.input_blocks, self.zero_convs, strict=True)):
            h = block(h, emb, context)
            if i == 0:
                h = h + guided
            outs.append(zero_conv(h))
        h = self.middle_block(h, emb, context)
        return ControlResiduals(output=tuple(outs), middle=self.middle_block_out(h))
