"""The T2I style adapter against a reference written as the original (OpenAI CLIP
``ResidualAttentionBlock`` on ``nn.MultiheadAttention``, sequence-first) on identical weights."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from comfy_notebook.models.style_adapter import StyleAdapter, StyleAdapterConfig


class _RefBlock(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads)
        self.ln_1 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(d, 4 * d)), ("gelu", _QuickGELU()),
                                              ("c_proj", nn.Linear(4 * d, d))]))
        self.ln_2 = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class _QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class _Reference(nn.Module):
    def __init__(self, width: int, ctx: int, heads: int, layers: int, tokens: int) -> None:
        super().__init__()
        self.transformer_layes = nn.Sequential(*[_RefBlock(width, heads) for _ in range(layers)])
        self.num_token = tokens
        self.style_embedding = nn.Parameter(torch.randn(1, tokens, width) * width ** -0.5)
        self.ln_post, self.ln_pre = nn.LayerNorm(width), nn.LayerNorm(width)
        self.proj = nn.Parameter(width ** -0.5 * torch.randn(width, ctx))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        style = self.style_embedding + torch.zeros((x.shape[0], self.num_token, self.style_embedding.shape[-1]))
        x = self.ln_pre(torch.cat([x, style], dim=1)).permute(1, 0, 2)
        x = self.transformer_layes(x).permute(1, 0, 2)
        return self.ln_post(x[:, -self.num_token:, :]) @ self.proj


def test_style_adapter_matches_the_reference() -> None:
    torch.manual_seed(0)
    ref = _Reference(64, 48, 8, 3, 8).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "ln" in name:
                p.add_(0.1 * torch.randn_like(p))
    sd = ref.state_dict()
    config = StyleAdapterConfig.from_state_dict(sd)
    assert config == StyleAdapterConfig(64, 48, 8, 3, 8)
    ours = StyleAdapter(config).eval()
    ours.load_state_dict(sd, strict=True)
    hidden = torch.randn(2, 17, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(hidden), ref(hidden), rtol=0, atol=1e-5)
