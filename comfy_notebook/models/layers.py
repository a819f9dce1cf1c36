"""Building blocks shared by the UNet and the VAE (LDM parameter names).

Reference layout: CompVis/stable-diffusion ``ldm/modules/attention.py`` at 21f890f (the
checkpoint keys ``transformer_blocks.N.attn1.to_q`` etc. come from there).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ATTN_KV_PATCHES",
    "MIDDLE_PATCHES",
    "BasicTransformerBlock",
    "Conv1x1",
    "CrossAttention",
    "FeedForward",
    "SpatialTransformer",
    "attention",
    "group_norm",
]


class Conv1x1(nn.Conv2d):
    """A 1x1 convolution computed as a matrix product over channels.

    Same parameters as ``nn.Conv2d(in_channels, out_channels, 1)`` (so the checkpoint keys and
    shapes are unchanged), but CPU results do not depend on the number of threads: oneDNN's 1x1
    convolution splits its reduction by thread count, a matmul does not.  That makes a prompt's
    image bit-identical whatever ``torch.set_num_threads`` says.  Channels-last inputs stay
    channels-last.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight.view(self.out_channels, self.in_channels)  # [O, C]
        if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            return F.linear(x.movedim(1, -1), w, self.bias).movedim(-1, 1)  # stays channels-last
        b, _, h, wd = x.shape
        y = torch.matmul(w, x.reshape(b, self.in_channels, h * wd))  # [B, O, H*W]
        if self.bias is not None:
            y = y + self.bias[:, None]
        return y.view(b, self.out_channels, h, wd)


def group_norm(channels: int, eps: float = 1e-5) -> nn.GroupNorm:
    """The 32-group GroupNorm every LDM block uses."""
    return nn.GroupNorm(32, channels, eps=eps, affine=True)


def attention(q: Tensor, k: Tensor, v: Tensor, heads: int) -> Tensor:
    """Multi-head attention through ``scaled_dot_product_attention``.

    q: [B, Tq, H*D], k/v: [B, Tk, H*D] -> [B, Tq, H*D]
    """
    b, tq, inner = q.shape
    d = inner // heads
    q = q.view(b, tq, heads, d).transpose(1, 2)  # [B, H, Tq, D]
    k = k.view(b, -1, heads, d).transpose(1, 2)  # [B, H, Tk, D]
    v = v.view(b, -1, heads, d).transpose(1, 2)  # [B, H, Tk, D]
    out = F.scaled_dot_product_attention(q, k, v)  # [B, H, Tq, D]
    return out.transpose(1, 2).reshape(b, tq, inner)


KVPatch = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
#: Patches of the attention key/value inputs for the forward in progress, as
#: ``(self-attention patches, cross-attention patches)`` (ComfyUI's ``attn1_patch`` /
#: ``attn2_patch``; hypernetworks set both): each maps ``(k, v) -> (k, v)``, in order, where
#: k = v = the normed hidden states (attn1) or the text context (attn2).  Set by the sampler
#: around a UNet call (``runtime.values.ModelValue.attn_patches``); empty otherwise.
ATTN_KV_PATCHES: ContextVar[tuple[Sequence[KVPatch], Sequence[KVPatch]]] = ContextVar(
    "attn_kv_patches", default=((), ()))


#: Patches applied between self- and cross-attention (ComfyUI's ``middle_patch``: GLIGEN's
#: gated self-attention): ``patch(x, block) -> x`` with the running block, in order.
MIDDLE_PATCHES: ContextVar[Sequence[Callable[[Tensor, nn.Module], Tensor]]] = ContextVar("middle_patches", default=())


def _patched(patches: Sequence[KVPatch], context: Tensor) -> tuple[Tensor, Tensor]:
    k = v = context
    for patch in patches:
        k, v = patch(k, v)
    return k, v


class CrossAttention(nn.Module):
    """Attention with bias-free q/k/v projections; self-attention when ``context`` is None."""

    def __init__(self, query_dim: int, context_dim: int | None, heads: int, dim_head: int) -> None:
        super().__init__()
        inner = heads * dim_head
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(0.0))

    def forward(self, x: Tensor, context: Tensor | None = None, value: Tensor | None = None) -> Tensor:
        """x: [B, T, C], context: [B, S, Dc] -> [B, T, C]; ``value``: a separate value context."""
        ctx = x if context is None else context
        out = attention(self.to_q(x), self.to_k(ctx), self.to_v(ctx if value is None else value), self.heads)
        return self.to_out(out)


class GEGLU(nn.Module):
    """Gated GELU: one projection to twice the width, half gates the other half."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, T, Din] -> [B, T, Dout]."""
        h, gate = self.proj(x).chunk(2, dim=-1)
        return h * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU MLP with 4x expansion (keys ``net.0.proj``, ``net.2``)."""

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        inner = dim * mult
        self.net = nn.Sequential(GEGLU(dim, inner), nn.Dropout(0.0), nn.Linear(inner, dim))

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, T, C] -> [B, T, C]."""
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention and feed-forward, each with a residual."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int) -> None:
        super().__init__()
        self.attn1 = CrossAttention(dim, None, heads, dim_head)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        """x: [B, T, C], context: [B, S, Dc] -> [B, T, C]."""
        self_patches, cross_patches = ATTN_KV_PATCHES.get()
        middle = MIDDLE_PATCHES.get()
        if not (self_patches or cross_patches or middle):
            x = x + self.attn1(self.norm1(x))
            x = x + self.attn2(self.norm2(x), context)
        else:
            n = self.norm1(x)
            x = x + self.attn1(n, *_patched(self_patches, n))
            for patch in middle:
                x = patch(x, self)
            x = x + self.attn2(self.norm2(x), *_patched(cross_patches, context))
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Transformer over the pixels of a feature map, with 1x1-conv or linear projections."""

    def __init__(
        self,
        channels: int,
        heads: int,
        dim_head: int,
        depth: int,
        context_dim: int,
        use_linear: bool,
    ) -> None:
        super().__init__()
        inner = heads * dim_head
        self.use_linear = use_linear
        self.norm = group_norm(channels, eps=1e-6)
        if use_linear:
            self.proj_in: nn.Module = nn.Linear(channels, inner)
            self.proj_out: nn.Module = nn.Linear(inner, channels)
        else:
            self.proj_in = Conv1x1(channels, inner)
            self.proj_out = Conv1x1(inner, channels)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, dim_head, context_dim) for _ in range(depth)
        )

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        """x: [B, C, H, W], context: [B, S, Dc] -> [B, C, H, W]."""
        b, _, h, w = x.shape
        residual = x
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)  # [B, I, H, W]
        x = x.permute(0, 2, 3, 1).reshape(b, h * w, -1)  # [B, HW, C or I]
        if self.use_linear:
            x = self.proj_in(x)  # [B, HW, I]
        for block in self.transformer_blocks:
            x = block(x, context)
        if self.use_linear:
            x = self.proj_out(x)  # [B, HW, C]
        x = x.reshape(b, h, w, -1).permute(0, 3, 1, 2)  # [B, C or I, H, W]
        if not self.use_linear:
            x = self.proj_out(x)
        return x + residual

