"""The union part of a ControlNet++ ("union" / "ProMax", xinsir): one net for several control types.

A union net is a ControlNet plus a learned embedding per control type: the type is added to the
timestep embedding (``control_add_embedding``, over the one-hot type vector's sinusoidal
embedding) and, with a type chosen, the hint's features get a per-channel shift computed from
their mean plus the type's ``task_embedding`` through one small transformer block.  Keys as
ComfyUI loads them (``comfy/cldm/cldm.py`` at a125cd8: ``task_embedding``, ``transformer_layes``,
``spatial_ch_projs``, ``control_add_embedding``), behaviour as ComfyUI's ``union_controlnet_merge``
(one control type per application, chosen with ``SetUnionControlNetType``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from comfy_notebook.models.layers import attention

__all__ = ["TypeEmbedding", "UnionBlock", "add_union_parts", "check_control_type", "union_merge"]

_TYPE_EMBED = 256  # width of each control type's sinusoidal embedding (ComfyUI control_add_embed_dim)
_HEADS = 8


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)`` (CLIP's GELU approximation)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class _Attention(nn.Module):
    """Self-attention with packed ``in_proj`` (q, k, v) and ``out_proj``."""

    def __init__(self, c: int, heads: int) -> None:
        super().__init__()
        self.c, self.heads = c, heads
        self.in_proj = nn.Linear(c, 3 * c)
        self.out_proj = nn.Linear(c, c)

    def forward(self, x: Tensor) -> Tensor:
        """[B, L, C] -> [B, L, C]."""
        q, k, v = self.in_proj(x).split(self.c, dim=2)
        return self.out_proj(attention(q, k, v, self.heads))


class UnionBlock(nn.Module):
    """Pre-norm attention and 4x MLP with QuickGELU, each with a residual."""

    def __init__(self, c: int, heads: int) -> None:
        super().__init__()
        self.attn = _Attention(c, heads)
        self.ln_1 = nn.LayerNorm(c)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(c, 4 * c)), ("gelu", QuickGELU()),
                                              ("c_proj", nn.Linear(4 * c, c))]))
        self.ln_2 = nn.LayerNorm(c)

    def forward(self, x: Tensor) -> Tensor:
        """[B, L, C] -> [B, L, C]."""
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TypeEmbedding(nn.Module):
    """One-hot control types -> sinusoidal embedding per type -> MLP to the timestep width."""

    def __init__(self, num_types: int, emb_channels: int) -> None:
        super().__init__()
        self.num_types = num_types
        self.linear_1 = nn.Linear(_TYPE_EMBED * num_types, emb_channels)
        self.linear_2 = nn.Linear(emb_channels, emb_channels)

    def forward(self, control_type: Sequence[int], dtype: torch.dtype, device: torch.device) -> Tensor:
        """-> [1, emb_channels]."""
        from comfy_notebook.models.unet import timestep_embedding

        onehot = torch.zeros(self.num_types, device=device)
        onehot[list(control_type)] = 1.0
        e = timestep_embedding(onehot, _TYPE_EMBED).to(dtype).reshape(1, -1)  # [1, N * 256]
        return self.linear_2(nn.functional.silu(self.linear_1(e)))


def add_union_parts(net: nn.Module, num_types: int, channels: int, emb_channels: int) -> None:
    """Give ``net`` (a ControlNet) ``task_embedding``, ``transformer_layes``, ``spatial_ch_projs``
    and ``control_add_embedding``, at its top level so the keys stay ComfyUI's."""
    net.task_embedding = nn.Parameter(torch.empty(num_types, channels))
    net.transformer_layes = nn.Sequential(UnionBlock(channels, _HEADS))
    net.spatial_ch_projs = nn.Linear(channels, channels)
    net.control_add_embedding = TypeEmbedding(num_types, emb_channels)


def check_control_type(num_types: int, control_type: Sequence[int]) -> None:
    """Refuse a type the net was not trained with, or several at once."""
    bad = [t for t in control_type if not 0 <= t < num_types]
    if bad:
        raise ValueError(
            f"control type {bad} is out of range for this union ControlNet, which knows {num_types} "
            "types. Fix: pick another type in SetUnionControlNetType, or use the ProMax model")
    if len(control_type) > 1:
        raise ValueError("a union ControlNet takes one control type per application; received "
                         f"{list(control_type)}. Fix: apply it once per type")


def union_merge(net: nn.Module, features: Tensor, control_type: Sequence[int]) -> Tensor:
    """Hint features [B, C, h, w] shifted per channel for ``control_type`` (ComfyUI ``union_controlnet_merge``)."""
    seq = features.mean(dim=(2, 3)) + net.task_embedding[control_type[0]].to(features.dtype)  # [B, C]
    x = net.transformer_layes(seq[:, None])  # [B, 1, C]
    alpha = net.spatial_ch_projs(x[:, 0])  # [B, C]
    return features + alpha[:, :, None, None]
