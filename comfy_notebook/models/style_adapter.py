"""The T2I-Adapter style model (``t2iadapter_style_sd14v1``): CLIP-vision hidden states ->
8 extra context tokens for the SD1 UNet's cross-attention.

Structure and parameter names as the released file and ComfyUI's
``comfy/t2i_adapter/adapter.py`` ``StyleAdapter`` (comfyanonymous/ComfyUI@00728eb; from
TencentARC/T2I-Adapter): learned ``style_embedding`` tokens appended to the image tokens,
``ln_pre``, three OpenAI-CLIP residual attention blocks (``transformer_layes.N.{attn.in_proj_*,
attn.out_proj, ln_1, mlp.c_fc, mlp.c_proj, ln_2}``, quick-GELU, 8 heads), ``ln_post`` on the
style tokens and the ``proj`` matrix ``[width, context_dim]``.  Checked against a reference
built on ``nn.MultiheadAttention`` in ``tests/models/test_style_adapter.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["StyleAdapter", "StyleAdapterConfig"]


@dataclass(frozen=True)
class StyleAdapterConfig:
    """Sizes (the released file: width 1024, context 768, 8 heads, 3 layers, 8 tokens)."""

    width: int = 1024
    context_dim: int = 768
    heads: int = 8
    layers: int = 3
    tokens: int = 8

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, Any]) -> StyleAdapterConfig:
        tokens, width = (int(s) for s in sd["style_embedding"].shape[1:])
        layers = 0
        while f"transformer_layes.{layers}.ln_1.weight" in sd:
            layers += 1
        heads = 8 if width % 8 == 0 else 1  # ComfyUI builds the released 8 heads
        return cls(width, int(sd["proj"].shape[1]), heads, layers, tokens)


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).view(b, t, 3, self.heads, -1).unbind(2)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.out_proj(out.transpose(1, 2).reshape(b, t, d))  # type: ignore[no-any-return]


class _Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = _Attention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, 4 * width))
        self.mlp.add_module("c_proj", nn.Linear(4 * width, width))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        h = self.mlp.c_fc(self.ln_2(x))
        return x + self.mlp.c_proj(h * torch.sigmoid(1.702 * h))  # quick-GELU


class StyleAdapter(nn.Module):
    """``forward(last_hidden_state [B, N, width]) -> style tokens [B, tokens, context_dim]``."""

    def __init__(self, config: StyleAdapterConfig) -> None:
        super().__init__()
        self.config = config
        self.style_embedding = nn.Parameter(torch.zeros(1, config.tokens, config.width))
        self.ln_pre = nn.LayerNorm(config.width)
        self.transformer_layes = nn.Sequential(*(_Block(config.width, config.heads) for _ in range(config.layers)))
        self.ln_post = nn.LayerNorm(config.width)
        self.proj = nn.Parameter(torch.zeros(config.width, config.context_dim))

    def forward(self, hidden: Tensor) -> Tensor:
        style = self.style_embedding.to(hidden.dtype).expand(hidden.shape[0], -1, -1)
        x = self.transformer_layes(self.ln_pre(torch.cat([hidden, style], dim=1)))
        return self.ln_post(x[:, -self.config.tokens:]) @ self.proj.to(x.dtype)  # type: ignore[no-any-return]
