"""The Z-Image diffusion transformer (a Lumina-2-style single-stream "next-DiT").

Parameter names are the released ``diffusion_models/z_image*.safetensors`` keys (ComfyUI's
repackaging of Tongyi-MAI's checkpoint): ``x_embedder``, ``t_embedder.mlp.{0,2}``,
``cap_embedder.{0,1}``, ``noise_refiner.N`` / ``context_refiner.N`` / ``layers.N`` blocks with a
fused ``attention.qkv``, ``attention.out``, ``attention.{q,k}_norm``, ``attention_norm{1,2}``,
``ffn_norm{1,2}``, ``feed_forward.w{1,2,3}``, ``adaLN_modulation.0``, ``final_layer``,
``x_pad_token``, ``cap_pad_token``.

How a forward runs (reference: diffusers ``ZImageTransformer2DModel`` 0.42.1, whose single-file
converter maps these keys onto its own; the same computation as ComfyUI ``comfy/ldm/lumina``):
the 16-channel latent is cut into 2x2 patches; the caption features (an LLM's hidden states)
are padded with ``cap_pad_token`` to a multiple of 32 tokens and refined by ``context_refiner``
(no modulation), the image tokens (padded with ``x_pad_token``) by ``noise_refiner``
(modulated by the timestep); then ``layers`` run over ``[image, caption]`` and ``final_layer``
maps back to patches.  Positions are 3-axis RoPE (theta 256) over the head: caption token i sits
at (1 + i, 0, 0), image patch (r, c) at (1 + caption length, r, c).  Every item of a batch has
the same sizes here (conditioning is batched that way), so no attention mask is needed and a step
can be captured in a CUDA graph: ``t`` is a tensor and nothing syncs with the host.

``t`` is the transformer's own convention (diffusers' pipeline passes ``(1000 - t) / 1000``,
ComfyUI's ``NextDiT`` ``1 - timestep``): 0 at pure noise ... 1 at the clean image, i.e.
``1 - sigma``, times ``t_scale`` inside; the output is the negated flow velocity.
``families/zimage.py`` adapts both to ComfyUI's flow sampling.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ZImage", "ZImageConfig"]

LinearFactory = Callable[..., nn.Module]
ADALN_DIM = 256  # width of the timestep embedding that modulates every block (capped)
SEQ_MULTIPLE = 32  # caption and image token runs are padded to a multiple of this
_COMPUTE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class ZImageConfig:
    """Sizes of a Z-Image transformer (all read from a checkpoint's shapes)."""

    dim: int = 3840
    n_layers: int = 30
    n_refiner_layers: int = 2
    n_heads: int = 30
    in_channels: int = 16
    patch_size: int = 2
    cap_feat_dim: int = 2560
    t_mid: int = 1024  # hidden width of the timestep MLP (1024 in every released model)
    norm_eps: float = 1e-5
    rope_theta: float = 256.0
    t_scale: float = 1000.0
    axes_dims: tuple[int, int, int] = (32, 48, 48)

    def __post_init__(self) -> None:
        if self.dim % self.n_heads or sum(self.axes_dims) != self.dim // self.n_heads:
            raise ValueError(f"Z-Image heads: dim {self.dim} / {self.n_heads} heads must equal "
                             f"the RoPE axes {self.axes_dims} summed")

    @property
    def adaln_dim(self) -> int:
        return min(self.dim, ADALN_DIM)

    @property
    def ffn_dim(self) -> int:
        return int(self.dim / 3 * 8)

    @classmethod
    def turbo(cls) -> ZImageConfig:
        """Z-Image-Turbo (6.15 B parameters)."""
        return cls()

    @classmethod
    def tiny(cls) -> ZImageConfig:
        """A test size: 64 wide, 2 heads of 32, one block per stage."""
        return cls(dim=64, n_layers=2, n_refiner_layers=1, n_heads=2, cap_feat_dim=48,
                   axes_dims=(8, 12, 12))

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, Tensor], prefix: str = "") -> ZImageConfig:
        """Sizes from the tensor shapes of a checkpoint (keys under ``prefix``)."""

        def count(stage: str) -> int:
            return len({k[len(prefix):].split(".")[1] for k in sd
                        if k.startswith(f"{prefix}{stage}.") and k[len(prefix):].split(".")[1].isdigit()})

        dim, patch_in = (int(s) for s in sd[prefix + "x_embedder.weight"].shape)
        head = int(sd[prefix + "layers.0.attention.q_norm.weight"].shape[0])
        t_mid = int(sd[prefix + "t_embedder.mlp.0.weight"].shape[0])
        cap = int(sd[prefix + "cap_embedder.1.weight"].shape[1])
        patch = 2  # every released Z-Image model cuts 2x2 patches
        in_ch = patch_in // (patch * patch)
        axes = _split_axes(head)
        return cls(dim=dim, n_layers=count("layers"), n_refiner_layers=count("noise_refiner"),
                   n_heads=dim // head, in_channels=in_ch, patch_size=patch, cap_feat_dim=cap,
                   t_mid=t_mid, axes_dims=axes)


def _split_axes(head_dim: int) -> tuple[int, int, int]:
    """RoPE axes of a head width: a quarter for the sequence index, the rest split between rows
    and columns (Z-Image's 128 = 32 + 48 + 48)."""
    a = head_dim // 4
    b = (head_dim - a) // 2
    return (a, b, head_dim - a - b)


class RMSNorm(nn.Module):
    """RMS norm with a learned ``weight``, computed in float32 (as the reference)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim))

    def forward(self, x: Tensor) -> Tensor:
        y = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        w = self.weight
        if w.dtype not in _COMPUTE_DTYPES:  # fp8 storage: scale in the activations' dtype
            w = w.to(x.dtype)
        return y.to(w.dtype) * w


def _rope_table(axes: tuple[int, ...], ids: Tensor, theta: float) -> Tensor:
    """Complex rotations for positions ``ids`` [N, 3] -> [N, head_dim / 2] (complex64)."""
    parts = []
    for i, d in enumerate(axes):
        freqs = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float64, device=ids.device) / d))
        angles = (ids[:, i].to(torch.float64)[:, None] * freqs[None]).float()
        parts.append(torch.polar(torch.ones_like(angles), angles))
    return torch.cat(parts, dim=-1)


def _apply_rope(x: Tensor, rot: Tensor) -> Tensor:
    """Rotate pairs of ``x`` [B, N, H, D] by ``rot`` [N, D/2] (complex)."""
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * rot[None, :, None, :]).flatten(3).type_as(x)


class Attention(nn.Module):
    """Self-attention with a fused ``qkv``, RMS-normed queries/keys and RoPE."""

    def __init__(self, dim: int, heads: int, eps: float, linear: LinearFactory) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = linear(dim, 3 * dim, bias=False)
        self.out = linear(dim, dim, bias=False)
        self.q_norm = RMSNorm(dim // heads, eps)
        self.k_norm = RMSNorm(dim // heads, eps)

    def forward(self, x: Tensor, rot: Tensor) -> Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, -1).unbind(2)  # [B, N, H, D] each
        q, k = _apply_rope(self.q_norm(q), rot), _apply_rope(self.k_norm(k), rot)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.out(y.transpose(1, 2).reshape(b, n, -1))


class FeedForward(nn.Module):
    """SwiGLU: ``w2(silu(w1 x) * w3 x)``."""

    def __init__(self, dim: int, hidden: int, linear: LinearFactory) -> None:
        super().__init__()
        self.w1 = linear(dim, hidden, bias=False)
        self.w2 = linear(hidden, dim, bias=False)
        self.w3 = linear(dim, hidden, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    """One transformer block; ``modulated`` blocks scale and gate by the timestep embedding."""

    def __init__(self, c: ZImageConfig, modulated: bool, linear: LinearFactory) -> None:
        super().__init__()
        self.attention = Attention(c.dim, c.n_heads, 1e-5, linear)
        self.feed_forward = FeedForward(c.dim, c.ffn_dim, linear)
        self.attention_norm1 = RMSNorm(c.dim, c.norm_eps)
        self.ffn_norm1 = RMSNorm(c.dim, c.norm_eps)
        self.attention_norm2 = RMSNorm(c.dim, c.norm_eps)
        self.ffn_norm2 = RMSNorm(c.dim, c.norm_eps)
        self.modulated = modulated
        if modulated:
            self.adaLN_modulation = nn.Sequential(linear(c.adaln_dim, 4 * c.dim, bias=True))

    def forward(self, x: Tensor, rot: Tensor, t_emb: Tensor | None = None) -> Tensor:
        if not self.modulated or t_emb is None:
            x = x + self.attention_norm2(self.attention(self.attention_norm1(x), rot))
            return x + self.ffn_norm2(self.feed_forward(self.ffn_norm1(x)))
        scale_msa, gate_msa, scale_mlp, gate_mlp = self.adaLN_modulation(t_emb)[:, None].chunk(4, dim=2)
        x = x + gate_msa.tanh() * self.attention_norm2(
            self.attention(self.attention_norm1(x) * (1.0 + scale_msa), rot))
        return x + gate_mlp.tanh() * self.ffn_norm2(
            self.feed_forward(self.ffn_norm1(x) * (1.0 + scale_mlp)))


class FinalLayer(nn.Module):
    """LayerNorm (no affine) scaled by the timestep embedding, then a linear map to patches."""

    def __init__(self, dim: int, adaln: int, out: int, linear: LinearFactory) -> None:
        super().__init__()
        self.linear = linear(dim, out, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), linear(adaln, dim, bias=True))

    def forward(self, x: Tensor, t_emb: Tensor) -> Tensor:
        scale = 1.0 + self.adaLN_modulation(t_emb)[:, None]
        return self.linear(F.layer_norm(x, x.shape[-1:], eps=1e-6) * scale)


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of ``t`` (cos first, 256 wide) through a two-layer MLP."""

    def __init__(self, out: int, mid: int, linear: LinearFactory) -> None:
        super().__init__()
        self.mlp = nn.Sequential(linear(256, mid, bias=True), nn.SiLU(), linear(mid, out, bias=True))

    def forward(self, t: Tensor, dtype: torch.dtype) -> Tensor:
        half = 128
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32,
                                                             device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(dtype))


def _pad_to(n: int) -> int:
    return n + (-n) % SEQ_MULTIPLE


class ZImage(nn.Module):
    """The Z-Image transformer: ``forward(x [B,C,H,W], t [B], cap_feats [B,L,D]) -> [B,C,H,W]``."""

    def __init__(self, config: ZImageConfig, linear: LinearFactory = nn.Linear) -> None:
        super().__init__()
        c = self.config = config
        p = c.patch_size
        self.x_embedder = linear(p * p * c.in_channels, c.dim, bias=True)
        self.final_layer = FinalLayer(c.dim, c.adaln_dim, p * p * c.in_channels, linear)
        self.noise_refiner = nn.ModuleList(Block(c, True, linear) for _ in range(c.n_refiner_layers))
        self.context_refiner = nn.ModuleList(Block(c, False, linear) for _ in range(c.n_refiner_layers))
        self.t_embedder = TimestepEmbedder(c.adaln_dim, c.t_mid, linear)
        self.cap_embedder = nn.Sequential(RMSNorm(c.cap_feat_dim, c.norm_eps),
                                          linear(c.cap_feat_dim, c.dim, bias=True))
        self.x_pad_token = nn.Parameter(torch.empty(1, c.dim))
        self.cap_pad_token = nn.Parameter(torch.empty(1, c.dim))
        self.layers = nn.ModuleList(Block(c, True, linear) for _ in range(c.n_layers))

    def _positions(self, cap_len: int, gh: int, gw: int, img_len: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """RoPE rotations of the caption run and the image run (padding rows sit at 0, 0, 0)."""
        cap_ids = torch.zeros(cap_len, 3, dtype=torch.int64, device=device)
        cap_ids[:, 0] = torch.arange(1, cap_len + 1, device=device)
        rows = torch.arange(gh, device=device).repeat_interleave(gw)
        cols = torch.arange(gw, device=device).repeat(gh)
        img_ids = torch.zeros(img_len, 3, dtype=torch.int64, device=device)
        img_ids[: gh * gw, 0] = cap_len + 1
        img_ids[: gh * gw, 1] = rows
        img_ids[: gh * gw, 2] = cols
        axes, theta = self.config.axes_dims, self.config.rope_theta
        return _rope_table(axes, cap_ids, theta), _rope_table(axes, img_ids, theta)

    def forward(self, x: Tensor, t: Tensor, cap_feats: Tensor) -> Tensor:
        c, p = self.config, self.config.patch_size
        b, ch, h, w = x.shape
        gh, gw = h // p, w // p
        dtype = getattr(self, "compute_dtype", None)  # set by the loader (fp8 weights compute in it)
        if dtype is None:
            stored = self.x_embedder.weight.dtype
            dtype = stored if stored in _COMPUTE_DTYPES else x.dtype
        t_emb = self.t_embedder(t * c.t_scale, dtype)  # [B, adaln]
        # patches: [B, gh*gw, p*p*C] in (row, col, py, px, channel) order
        tokens = x.reshape(b, ch, gh, p, gw, p).permute(0, 2, 4, 3, 5, 1).reshape(b, gh * gw, p * p * ch)
        n_img, n_cap = gh * gw, cap_feats.shape[1]
        img_len, cap_len = _pad_to(n_img), _pad_to(n_cap)
        img = self.x_embedder(tokens.to(dtype))
        img = torch.cat([img, self.x_pad_token.to(img.dtype).expand(b, img_len - n_img, -1)], dim=1)
        cap = self.cap_embedder(cap_feats.to(dtype))
        cap = torch.cat([cap, self.cap_pad_token.to(cap.dtype).expand(b, cap_len - n_cap, -1)], dim=1)
        cap_rot, img_rot = self._positions(cap_len, gh, gw, img_len, x.device)
        for block in self.noise_refiner:
            img = block(img, img_rot, t_emb)
        for block in self.context_refiner:
            cap = block(cap, cap_rot)
        seq = torch.cat([img, cap], dim=1)
        rot = torch.cat([img_rot, cap_rot], dim=0)
        for block in self.layers:
            seq = block(seq, rot, t_emb)
        out = self.final_layer(seq[:, :n_img], t_emb)  # [B, gh*gw, p*p*C]
        out = out.reshape(b, gh, gw, p, p, ch).permute(0, 5, 1, 3, 2, 4)
        return out.reshape(b, ch, h, w)
