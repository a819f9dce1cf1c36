"""Qwen3 as a text encoder (the decoder-only LLM whose hidden states condition Z-Image).

Parameter names are those of ComfyUI's ``text_encoders/qwen_3_4b*.safetensors`` (the Hugging
Face Qwen3 keys: ``model.embed_tokens``, ``model.layers.N.self_attn.{q,k,v,o}_proj``,
``self_attn.{q,k}_norm``, ``mlp.{gate,up,down}_proj``, ``input_layernorm``,
``post_attention_layernorm``, ``model.norm``; an ``lm_head`` in a file is ignored).  Reference:
transformers ``models/qwen3/modeling_qwen3.py`` (5.23.0), which the tests compare against layer by
layer.

Why our own module rather than ``transformers.Qwen3Model``: the encoder only needs the forward
pass to one hidden layer (no cache, no generation), built on ``meta`` and loaded with
``assign=True`` (no second copy), with linear layers chosen by the loader (fp8 files stay fp8
and are cast per layer), a causal SDPA that a CUDA graph can capture, and layers after the one
asked for skipped — ComfyUI's Z-Image reads the second-to-last layer, so the last layer and the
final norm never run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Qwen3Config", "Qwen3Encoder"]

LinearFactory = Callable[..., nn.Module]


@dataclass(frozen=True)
class Qwen3Config:
    """Sizes of a Qwen3 model (read from a file's shapes, except the RoPE base and eps)."""

    vocab_size: int = 151936
    hidden_size: int = 2560
    num_layers: int = 36
    num_heads: int = 32
    num_kv_heads: int = 8
    head_dim: int = 128
    intermediate_size: int = 9728
    rms_eps: float = 1e-6
    rope_theta: float = 1_000_000.0

    @classmethod
    def qwen3_4b(cls) -> Qwen3Config:
        """Qwen3-4B, Z-Image's text encoder."""
        return cls()

    @classmethod
    def tiny(cls) -> Qwen3Config:
        """A test size: 3 layers, 64 wide, 4 query heads sharing 2 key/value heads of 16."""
        return cls(vocab_size=512, hidden_size=64, num_layers=3, num_heads=4, num_kv_heads=2,
                   head_dim=16, intermediate_size=96)

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, Tensor], prefix: str = "model.") -> Qwen3Config:
        """Sizes from the shapes of a checkpoint whose keys start with ``prefix``."""
        vocab, hidden = (int(s) for s in sd[prefix + "embed_tokens.weight"].shape)
        head = int(sd[prefix + "layers.0.self_attn.q_norm.weight"].shape[0])
        q = int(sd[prefix + "layers.0.self_attn.q_proj.weight"].shape[0])
        kv = int(sd[prefix + "layers.0.self_attn.k_proj.weight"].shape[0])
        inter = int(sd[prefix + "layers.0.mlp.gate_proj.weight"].shape[0])
        layers = len({k[len(prefix):].split(".")[1] for k in sd if k.startswith(prefix + "layers.")})
        return cls(vocab_size=vocab, hidden_size=hidden, num_layers=layers, num_heads=q // head,
                   num_kv_heads=kv // head, head_dim=head, intermediate_size=inter)


class RMSNorm(nn.Module):
    """RMS norm computed in float32, then scaled by ``weight`` in the input's dtype."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim))

    def forward(self, x: Tensor) -> Tensor:
        y = x.float()
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight.to(x.dtype) * y.to(x.dtype)


def _rotate_half(x: Tensor) -> Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class Attention(nn.Module):
    """Grouped-query causal self-attention with per-head RMS norms on queries and keys."""

    def __init__(self, c: Qwen3Config, linear: LinearFactory) -> None:
        super().__init__()
        self.c = c
        self.q_proj = linear(c.hidden_size, c.num_heads * c.head_dim, bias=False)
        self.k_proj = linear(c.hidden_size, c.num_kv_heads * c.head_dim, bias=False)
        self.v_proj = linear(c.hidden_size, c.num_kv_heads * c.head_dim, bias=False)
        self.o_proj = linear(c.num_heads * c.head_dim, c.hidden_size, bias=False)
        self.q_norm = RMSNorm(c.head_dim, c.rms_eps)
        self.k_norm = RMSNorm(c.head_dim, c.rms_eps)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None) -> Tensor:
        b, n, _ = x.shape
        d = self.c.head_dim
        q = self.q_norm(self.q_proj(x).view(b, n, -1, d)).transpose(1, 2)  # [B, H, N, D]
        k = self.k_norm(self.k_proj(x).view(b, n, -1, d)).transpose(1, 2)  # [B, KV, N, D]
        v = self.v_proj(x).view(b, n, -1, d).transpose(1, 2)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        rep = self.c.num_heads // self.c.num_kv_heads
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(y.transpose(1, 2).reshape(b, n, -1))


class MLP(nn.Module):
    """SwiGLU feed-forward."""

    def __init__(self, c: Qwen3Config, linear: LinearFactory) -> None:
        super().__init__()
        self.gate_proj = linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    """Pre-norm decoder layer."""

    def __init__(self, c: Qwen3Config, linear: LinearFactory) -> None:
        super().__init__()
        self.self_attn = Attention(c, linear)
        self.mlp = MLP(c, linear)
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_eps)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_eps)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class TokenEmbedding(nn.Embedding):
    """The token table; ``forward`` gathers rows by indexing, which also works on an fp8 table.

    Called as a module (not read as ``.weight``) so the partial loader's hooks stream it."""

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.weight[input_ids]


class _Body(nn.Module):
    def __init__(self, c: Qwen3Config, linear: LinearFactory) -> None:
        super().__init__()
        self.embed_tokens = TokenEmbedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(Layer(c, linear) for _ in range(c.num_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_eps)


class Qwen3Encoder(nn.Module):
    """``forward(input_ids [B, N], attention_mask=None, layer=-2) -> [B, N, hidden]``.

    ``layer`` is the index of the decoder layer whose output is returned (``-2``: the
    second-to-last, what ComfyUI's Z-Image reads); ``None`` returns the final normed state.
    ``attention_mask`` ([B, N], 1 = token, 0 = padding) is combined with the causal mask.
    """

    takes_linear = True  # the loader may pass a cast-on-forward linear layer (fp8 weights)

    @staticmethod
    def ignored_keys(key: str) -> bool:
        """File keys that are not parameters of the encoder: a language-model head."""
        return key.startswith("lm_head.")

    def __init__(self, config: Qwen3Config, linear: LinearFactory = nn.Linear) -> None:
        super().__init__()
        self.config = config
        self.model = _Body(config, linear)

    def _embed(self, input_ids: Tensor) -> Tensor:
        """Token embeddings in the compute dtype (an fp8 table is gathered, then cast)."""
        dtype = getattr(self, "compute_dtype", None)
        if dtype is None:
            w = self.model.embed_tokens.weight.dtype
            dtype = w if w in (torch.float32, torch.float16, torch.bfloat16) else torch.bfloat16
        return self.model.embed_tokens(input_ids).to(dtype)

    def _rope(self, n: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        d = self.config.head_dim
        inv = 1.0 / (self.config.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64, device=device).float() / d))
        angles = torch.arange(n, device=device).float()[:, None] * inv[None]  # [N, D/2]
        emb = torch.cat((angles, angles), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                layer: int | None = -2) -> Tensor:
        body = self.model
        x = self._embed(input_ids)
        n = input_ids.shape[1]
        cos, sin = self._rope(n, x.device, x.dtype)
        mask = None
        if attention_mask is not None:
            causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
            mask = causal[None, None] & attention_mask.bool()[:, None, None, :]  # [B, 1, N, N]
        count = len(body.layers)
        stop = count - 1 if layer is None else layer % count
        for i, block in enumerate(body.layers):
            x = block(x, cos, sin, mask)
            if i == stop:
                break
        return body.norm(x) if layer is None else x
