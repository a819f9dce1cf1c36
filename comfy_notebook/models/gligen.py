"""GLIGEN (grounded text-to-image): a position network that embeds (phrase, box) pairs and a
gated self-attention "fuser" inserted after the self-attention of every transformer block.

Parameter names are those of the released GLIGEN files ComfyUI loads (``models/gligen``, e.g.
``gligen_sd14_textbox_pruned.safetensors``): ``position_net.{null_positive_feature,
null_position_feature, linears.{0,2,4}.*}`` and, per transformer block,
``<block path>.fuser.{linear, attn.to_{q,k,v,out.0}, ff.net.{0.proj,2}, norm1, norm2,
alpha_attn, alpha_dense}``.  Behaviour follows ComfyUI's ``comfy/gligen.py``
(comfyanonymous/ComfyUI@00728eb): 8 heads when the phrase embedding is 768 wide (SD1), else
64-wide heads; 8 Fourier frequencies with temperature 100; boxes as (x1, y1, x2, y2) fractions
of the latent; 30 object slots, unused slots replaced by the learned null features.  Proven
against diffusers' ``GLIGENTextBoundingboxProjection`` and ``GatedSelfAttentionDense`` on
identical weights in ``tests/models/test_gligen.py``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from comfy_notebook.models.layers import CrossAttention, FeedForward

__all__ = ["GLIGEN", "MAX_OBJECTS", "GatedSelfAttention", "PositionNet", "fourier_boxes"]

MAX_OBJECTS = 30
FOURIER_FREQS = 8
_BLOCK = re.compile(r"((?:(?:input|output)_blocks\.\d+|middle_block)\.\d+\.transformer_blocks\.\d+)\.fuser\.(.+)$")
_SECTIONS = {"input_blocks": 0, "middle_block": 1, "output_blocks": 2}


def fourier_boxes(boxes: Tensor, freqs: int = FOURIER_FREQS, temperature: float = 100.0) -> Tensor:
    """``[B, N, 4]`` -> ``[B, N, freqs * 2 * 4]``: per frequency, sin of the 4 coordinates then cos."""
    bands = temperature ** (torch.arange(freqs, device=boxes.device, dtype=boxes.dtype) / freqs)  # [F]
    args = boxes[..., None, :] * bands[:, None]  # [B, N, F, 4]
    return torch.stack([args.sin(), args.cos()], dim=-2).flatten(-3)  # [B, N, F, 2, 4] -> flat


class PositionNet(nn.Module):
    """Phrase embeddings and Fourier box features -> object tokens ``[B, N, out_dim]``."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        pos_dim = FOURIER_FREQS * 2 * 4
        self.linears = nn.Sequential(nn.Linear(in_dim + pos_dim, 512), nn.SiLU(), nn.Linear(512, 512), nn.SiLU(),
                                     nn.Linear(512, out_dim))
        self.null_positive_feature = nn.Parameter(torch.zeros(in_dim))
        self.null_position_feature = nn.Parameter(torch.zeros(pos_dim))

    def forward(self, boxes: Tensor, masks: Tensor, phrases: Tensor) -> Tensor:
        """boxes [B, N, 4], masks [B, N] (1 = used slot), phrases [B, N, in_dim]."""
        m = masks.unsqueeze(-1).to(phrases.dtype)
        phrases = phrases * m + (1 - m) * self.null_positive_feature.to(phrases.dtype).view(1, 1, -1)
        xyxy = fourier_boxes(boxes)
        xyxy = xyxy * m + (1 - m) * self.null_position_feature.to(xyxy.dtype).view(1, 1, -1)
        return self.linears(torch.cat([phrases, xyxy], dim=-1))


class GatedSelfAttention(nn.Module):
    """``x + tanh(a_attn) * attn(norm1([x, objs]))[:, :N]``, then ``+ tanh(a_dense) * ff(norm2(x))``."""

    def __init__(self, query_dim: int, context_dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.linear = nn.Linear(context_dim, query_dim)
        self.attn = CrossAttention(query_dim, None, heads, dim_head)
        self.ff = FeedForward(query_dim)
        self.norm1 = nn.LayerNorm(query_dim)
        self.norm2 = nn.LayerNorm(query_dim)
        self.alpha_attn = nn.Parameter(torch.tensor(0.0))
        self.alpha_dense = nn.Parameter(torch.tensor(0.0))

    def forward(self, x: Tensor, objs: Tensor) -> Tensor:
        """x [B, T, C] visual tokens, objs [B, N, context_dim] -> [B, T, C]."""
        n = x.shape[1]
        tokens = torch.cat([x, self.linear(objs)], dim=1)  # [B, T + N, C]
        x = x + torch.tanh(self.alpha_attn) * self.attn(self.norm1(tokens))[:, :n]
        return x + torch.tanh(self.alpha_dense) * self.ff(self.norm2(x))


class GLIGEN(nn.Module):
    """The position net and one fuser per transformer block, keyed by the block's path."""

    def __init__(self, in_dim: int, out_dim: int, fusers: Mapping[str, tuple[int, int]]) -> None:
        super().__init__()
        self.key_dim = in_dim
        self.position_net = PositionNet(in_dim, out_dim)
        self.blocks = list(fusers)  # block paths in ComfyUI's order (its transformer_index)
        mods = []
        for q, k in fusers.values():
            heads = 8 if k == 768 else max(1, q // 64)  # ComfyUI: SD1 8 heads, else 64-wide (tiny: 1)
            mods.append(GatedSelfAttention(q, k, heads, q // heads))
        self.fusers = nn.ModuleList(mods)

    @staticmethod
    def layout(sd: Mapping[str, Any]) -> tuple[int, int, dict[str, tuple[int, int]], dict[str, str]]:
        """``(in_dim, out_dim, block -> (query_dim, context_dim), our name -> file key)`` of a file."""
        found: dict[str, dict[str, str]] = {}
        for key in sd:
            m = _BLOCK.search(key)
            if m is not None:
                found.setdefault(m.group(1), {})[m.group(2)] = key
        if "position_net.null_positive_feature" not in sd or not found:
            raise KeyError("no position_net.* / *.fuser.* keys")

        def order(path: str) -> tuple[int, ...]:
            section = path.split(".", 1)[0]
            return (_SECTIONS[section], *(int(n) for n in re.findall(r"\d+", path)))

        blocks = sorted(found, key=order)
        fusers = {b: tuple(int(s) for s in sd[found[b]["linear.weight"]].shape) for b in blocks}
        names = {f"position_net.{k[len('position_net.'):]}": k for k in sd if k.startswith("position_net.")}
        for i, b in enumerate(blocks):
            names.update({f"fusers.{i}.{leaf}": key for leaf, key in found[b].items()})
        in_dim = int(sd["position_net.null_positive_feature"].shape[0])
        out_dim = int(sd["position_net.linears.4.weight"].shape[0])
        return in_dim, out_dim, {b: (q, k) for b, (q, k) in fusers.items()}, names

    def objects(self, phrases: Sequence[Tensor], boxes: Sequence[tuple[float, float, float, float]],
                batch: int) -> Tensor:
        """Object tokens ``[batch, 30, out_dim]`` for phrase embeddings ``[1, in_dim]`` and boxes."""
        p = self.position_net.null_positive_feature
        if len(phrases) > MAX_OBJECTS:
            raise ValueError(f"GLIGEN takes at most {MAX_OBJECTS} boxes, received {len(phrases)}")
        box = torch.zeros(MAX_OBJECTS, 4, device=p.device, dtype=p.dtype)
        emb = torch.zeros(MAX_OBJECTS, self.key_dim, device=p.device, dtype=p.dtype)
        mask = torch.zeros(MAX_OBJECTS, device=p.device, dtype=p.dtype)
        for i, (phrase, b) in enumerate(zip(phrases, boxes, strict=True)):
            box[i] = torch.tensor(b, dtype=p.dtype)
            emb[i] = phrase.reshape(-1).to(p.device, p.dtype)
            mask[i] = 1.0
        rep = (batch, 1, 1)
        return self.position_net(box[None].repeat(*rep), mask[None].repeat(batch, 1), emb[None].repeat(*rep))
