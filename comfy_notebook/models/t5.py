"""The T5 v1.1 encoder (T5-XXL for Flux and SD3) with the released checkpoint's parameter names.

Reference: google-research/text-to-text-transfer-transformer (T5 v1.1: gated-GELU feed-forward,
no bias anywhere, RMS layer norms, relative position buckets shared from block 0, no scaling of
the attention logits), as in transformers ``modeling_t5.py`` and ComfyUI
``comfy/text_encoders/t5.py`` at a125cd8.  Keys are those of ComfyUI's
``text_encoders/t5xxl_*.safetensors`` files: ``shared.weight``,
``encoder.block.N.layer.0.SelfAttention.{q,k,v,o}``, ``...relative_attention_bias`` (block 0),
``encoder.block.N.layer.1.DenseReluDense.{wi_0,wi_1,wo}``, ``encoder.final_layer_norm``.

Why our own module rather than ``transformers.T5EncoderModel``: the same numbers (a differential
test holds it to 1e-5 in fp32), but (1) it is built on ``meta`` and takes the file's tensors with
``assign=True``, so the 4.9 B-parameter encoder is never allocated twice (transformers'
``from_pretrained`` path wants a config directory and its own loading machinery; the
constructor allocates and initialises all weights first); (2) fp8 files stay fp8 in memory: the
linear layers come from the loader's factory (a cast-on-forward layer, ``models/fp8.py``) and the
embedding table is gathered then cast, so only one layer's weight is upcast at a time; (3) no
host synchronisation in ``forward`` (the position bias is built from shapes), and no
dependence on transformers' internal layout, which changes between major versions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["T5Config", "T5Encoder", "relative_position_bucket"]

LinearFactory = Callable[..., nn.Module]


@dataclass(frozen=True)
class T5Config:
    """Sizes of a T5 v1.1 encoder (defaults: T5-XXL, as used by Flux and SD3)."""

    vocab_size: int = 32128
    d_model: int = 4096
    d_kv: int = 64
    num_heads: int = 64
    d_ff: int = 10240
    num_layers: int = 24
    num_buckets: int = 32
    max_distance: int = 128
    eps: float = 1e-6

    @classmethod
    def xxl(cls) -> T5Config:
        """T5 v1.1 XXL encoder (4,762,310,656 parameters with the shared embedding)."""
        return cls()

    @classmethod
    def tiny(cls) -> T5Config:
        """A tiny encoder for tests (the real vocabulary size, 2 layers, width 32)."""
        return cls(d_model=32, d_kv=8, num_heads=4, d_ff=48, num_layers=2)

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, Tensor], prefix: str = "") -> T5Config:
        """Read the sizes from a state dict's shapes (keys under ``prefix``)."""
        start = prefix + "encoder.block."
        layers = len({k[len(start):].split(".", 1)[0] for k in sd if k.startswith(start)})
        attn = prefix + "encoder.block.0.layer.0.SelfAttention."
        vocab, d_model = sd[prefix + "shared.weight"].shape
        buckets, heads = sd[attn + "relative_attention_bias.weight"].shape
        inner = sd[attn + "q.weight"].shape[0]
        d_ff = sd[prefix + "encoder.block.0.layer.1.DenseReluDense.wi_0.weight"].shape[0]
        return cls(vocab_size=vocab, d_model=d_model, d_kv=inner // heads, num_heads=heads, d_ff=d_ff,
                   num_layers=layers, num_buckets=buckets)


def relative_position_bucket(relative_position: Tensor, num_buckets: int = 32, max_distance: int = 128) -> Tensor:
    """Bidirectional T5 bucket of each (key - query) offset: exact below 8, log-spaced up to 128."""
    num_buckets //= 2
    buckets = (relative_position > 0).long() * num_buckets
    n = relative_position.abs()
    max_exact = num_buckets // 2
    large = max_exact + (
        torch.log(n.float().clamp(min=1) / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    ).long()
    large = large.clamp(max=num_buckets - 1)
    return buckets + torch.where(n < max_exact, n, large)


class T5LayerNorm(nn.Module):
    """RMS norm without mean subtraction or bias; statistics in float32 (key ``weight``)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        var = x.float().pow(2).mean(-1, keepdim=True)
        return self.weight.to(x.dtype) * (x.float() * torch.rsqrt(var + self.eps)).to(x.dtype)


class T5Attention(nn.Module):
    """Bias-free multi-head attention with unscaled logits (keys ``q``, ``k``, ``v``, ``o``)."""

    def __init__(self, c: T5Config, has_bias: bool, linear: LinearFactory) -> None:
        super().__init__()
        inner = c.num_heads * c.d_kv
        self.heads, self.c = c.num_heads, c
        self.q = linear(c.d_model, inner, bias=False)
        self.k = linear(c.d_model, inner, bias=False)
        self.v = linear(c.d_model, inner, bias=False)
        self.o = linear(inner, c.d_model, bias=False)
        if has_bias:
            self.relative_attention_bias = nn.Embedding(c.num_buckets, c.num_heads)

    def position_bias(self, n: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """[1, H, n, n] additive bias from the bucketed offsets (block 0 only)."""
        pos = torch.arange(n, device=device)
        buckets = relative_position_bucket(pos[None, :] - pos[:, None], self.c.num_buckets, self.c.max_distance)
        w = self.relative_attention_bias.weight  # [buckets, H]
        return w[buckets].to(dtype).permute(2, 0, 1).unsqueeze(0)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        """x [B, T, C], bias [B or 1, H, T, T] -> [B, T, C]."""
        b, t, _ = x.shape

        def heads(p: nn.Module) -> Tensor:
            return p(x).view(b, t, self.heads, -1).transpose(1, 2)  # [B, H, T, D]

        out = F.scaled_dot_product_attention(heads(self.q), heads(self.k), heads(self.v), attn_mask=bias, scale=1.0)
        return self.o(out.transpose(1, 2).reshape(b, t, -1))


class T5LayerSelfAttention(nn.Module):
    """Pre-norm attention with a residual (keys ``SelfAttention``, ``layer_norm``)."""

    def __init__(self, c: T5Config, has_bias: bool, linear: LinearFactory) -> None:
        super().__init__()
        self.SelfAttention = T5Attention(c, has_bias, linear)
        self.layer_norm = T5LayerNorm(c.d_model, c.eps)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        return x + self.SelfAttention(self.layer_norm(x), bias)


class T5DenseGatedActDense(nn.Module):
    """gelu_tanh(wi_0 x) * (wi_1 x), then wo."""

    def __init__(self, c: T5Config, linear: LinearFactory) -> None:
        super().__init__()
        self.wi_0 = linear(c.d_model, c.d_ff, bias=False)
        self.wi_1 = linear(c.d_model, c.d_ff, bias=False)
        self.wo = linear(c.d_ff, c.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.wo(F.gelu(self.wi_0(x), approximate="tanh") * self.wi_1(x))


class T5LayerFF(nn.Module):
    """Pre-norm gated feed-forward with a residual (keys ``DenseReluDense``, ``layer_norm``)."""

    def __init__(self, c: T5Config, linear: LinearFactory) -> None:
        super().__init__()
        self.DenseReluDense = T5DenseGatedActDense(c, linear)
        self.layer_norm = T5LayerNorm(c.d_model, c.eps)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.DenseReluDense(self.layer_norm(x))


class T5Block(nn.Module):
    """``layer.0`` self-attention, ``layer.1`` feed-forward."""

    def __init__(self, c: T5Config, has_bias: bool, linear: LinearFactory) -> None:
        super().__init__()
        self.layer = nn.ModuleList([T5LayerSelfAttention(c, has_bias, linear), T5LayerFF(c, linear)])

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        x = self.layer[1](self.layer[0](x, bias))
        if x.dtype == torch.float16:  # as transformers: keep fp16 activations finite
            big = torch.finfo(torch.float16).max - 1000
            x = x.clamp(-big, big)
        return x


class T5Stack(nn.Module):
    """The encoder blocks and the final norm (key prefix ``encoder.``)."""

    def __init__(self, c: T5Config, linear: LinearFactory) -> None:
        super().__init__()
        self.block = nn.ModuleList(T5Block(c, i == 0, linear) for i in range(c.num_layers))
        self.final_layer_norm = T5LayerNorm(c.d_model, c.eps)


class T5Encoder(nn.Module):
    """T5 encoder: token ids [B, T] -> last hidden states [B, T, d_model] (after the final norm).

    Parameters
    ----------
    config:
        Sizes (``T5Config.from_state_dict`` reads them from a file).
    linear:
        Factory for the linear layers (``nn.Linear`` signature); the loader picks it.
    """

    takes_linear = True  # the loader may pass a cast-on-forward linear layer (fp8 weights)

    @staticmethod
    def ignored_keys(key: str) -> bool:
        """File keys that are not parameters: transformers' tied copy of the embedding."""
        return key == "encoder.embed_tokens.weight"

    def __init__(self, config: T5Config, linear: LinearFactory = nn.Linear) -> None:
        super().__init__()
        self.config = config
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = T5Stack(config, linear)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                dtype: torch.dtype | None = None, intermediate: int | None = None) -> Tensor:
        """Encode ``input_ids`` [B, T].

        ``attention_mask`` [B, T] (1 = attend) masks keys; ComfyUI's Flux and SD3 encoders pass
        none, so padding tokens are attended to.  ``dtype`` is the compute dtype (default: the
        embedding's, or bfloat16 for fp8 weights).  ``intermediate`` returns the (final-normed)
        output of that block instead of the last one.
        """
        w = self.shared.weight
        if dtype is None:
            dtype = w.dtype if w.dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.bfloat16
        x = w[input_ids].to(dtype)  # [B, T, C]; fp8 tables are gathered, then cast
        if w.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            x = torch.nan_to_num(x)
        blocks = self.encoder.block
        bias = blocks[0].layer[0].SelfAttention.position_bias(x.shape[1], x.device, dtype)  # [1, H, T, T]
        if attention_mask is not None:
            masked = (attention_mask[:, None, None, :] == 0)  # [B, 1, 1, T]
            bias = bias.masked_fill(masked, torch.finfo(dtype).min)
        last = len(blocks) - 1 if intermediate is None else intermediate % len(blocks)
        for i, block in enumerate(blocks):
            x = block(x, bias)
            if i == last:
                break
        return self.encoder.final_layer_norm(x)
