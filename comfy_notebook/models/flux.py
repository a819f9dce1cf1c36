"""The Flux.1 transformer (dev and schnell) with the released checkpoint's parameter names.

Reference: black-forest-labs/flux ``src/flux/model.py``, ``modules/layers.py``, ``math.py``
(mirrored in ComfyUI ``comfy/ldm/flux/`` at a125cd8).  A rectified-flow DiT: the 16-channel
latent is cut into 2x2 patches (64 features per token), text tokens (T5) and image tokens run
through ``depth`` double-stream blocks (separate weights per stream, joint attention), then
``depth_single_blocks`` single-stream blocks over the concatenation; modulation comes from the
timestep, the pooled CLIP-L vector and (dev only) the distilled guidance.  Positions are 3-axis
RoPE over (16, 56, 56) dims of each 128-dim head: axis 0 is an index (0), axes 1/2 the patch row
and column; text tokens sit at position (0, 0, 0).

``forward`` takes ``timestep``/``guidance`` as tensors and makes no host synchronisation, so a
step can be captured in a CUDA graph.  Linear layers are built through ``linear`` (chosen by the
loader: ``nn.Linear``, or a cast-on-forward layer for fp8 weights, see ``models/fp8.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Flux", "FluxConfig", "flux_rope", "timestep_embedding"]

LinearFactory = Callable[..., nn.Module]


@dataclass(frozen=True)
class FluxConfig:
    """Sizes of a Flux transformer (defaults: Flux.1-dev, 11.9 B parameters).

    ``in_channels`` is the latent's channel count (the patchified input has 4x as many);
    ``guidance_embed`` is True for dev (distilled guidance input) and False for schnell.
    """

    in_channels: int = 16
    out_channels: int = 16
    vec_in_dim: int = 768
    context_in_dim: int = 4096
    hidden_size: int = 3072
    mlp_ratio: float = 4.0
    num_heads: int = 24
    depth: int = 19
    depth_single_blocks: int = 38
    axes_dim: tuple[int, ...] = (16, 56, 56)
    theta: int = 10000
    patch_size: int = 2
    qkv_bias: bool = True
    guidance_embed: bool = True

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads or sum(self.axes_dim) != self.hidden_size // self.num_heads:
            raise ValueError(
                f"axes_dim {self.axes_dim} must sum to the head size {self.hidden_size}/{self.num_heads}"
            )

    @classmethod
    def dev(cls) -> FluxConfig:
        """Flux.1-dev (guidance-distilled, 11,901,408,320 parameters)."""
        return cls()

    @classmethod
    def schnell(cls) -> FluxConfig:
        """Flux.1-schnell (timestep-distilled, no ``guidance_in``)."""
        return cls(guidance_embed=False)

    @classmethod
    def tiny(cls, guidance_embed: bool = True) -> FluxConfig:
        """A tiny Flux for tests: hidden 64, two 32-dim heads, one block of each kind; takes the
        tiny T5 (32 wide) and tiny CLIP-L (64 wide) of ``comfy_notebook.testing``."""
        return cls(vec_in_dim=64, context_in_dim=32, hidden_size=64, num_heads=2, depth=1,
                   depth_single_blocks=1, axes_dim=rope_axes(32), guidance_embed=guidance_embed)

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, Tensor], prefix: str = "") -> FluxConfig:
        """Read the sizes from a state dict's shapes (keys under ``prefix``)."""

        def count(kind: str) -> int:
            start = prefix + kind + "."
            return len({k[len(start):].split(".", 1)[0] for k in sd if k.startswith(start)})

        img_in = sd[prefix + "img_in.weight"]  # [hidden, C * p * p]
        head_dim = sd[prefix + "double_blocks.0.img_attn.norm.query_norm.scale"].shape[0]
        hidden = img_in.shape[0]
        final = sd.get(prefix + "final_layer.linear.weight")  # [p * p * C_out, hidden]; none in a ControlNet
        mlp = sd[prefix + "double_blocks.0.img_mlp.0.weight"].shape[0]
        return cls(
            in_channels=img_in.shape[1] // 4,
            out_channels=(final.shape[0] if final is not None else img_in.shape[1]) // 4,
            vec_in_dim=sd[prefix + "vector_in.in_layer.weight"].shape[1],
            context_in_dim=sd[prefix + "txt_in.weight"].shape[1], hidden_size=hidden,
            mlp_ratio=mlp / hidden, num_heads=hidden // head_dim, depth=count("double_blocks"),
            depth_single_blocks=count("single_blocks"), axes_dim=rope_axes(head_dim),
            qkv_bias=prefix + "double_blocks.0.img_attn.qkv.bias" in sd,
            guidance_embed=prefix + "guidance_in.in_layer.weight" in sd,
        )


def rope_axes(head_dim: int) -> tuple[int, int, int]:
    """RoPE dims per axis: (16, 56, 56) for Flux's 128-dim heads, scaled alike for others."""
    a0 = 2 * max(1, round(head_dim / 16))
    a1 = 2 * ((head_dim - a0) // 4)
    return (a0, a1, head_dim - a0 - a1)


def timestep_embedding(t: Tensor, dim: int = 256, max_period: float = 10000.0,
                       time_factor: float = 1000.0) -> Tensor:
    """Sinusoidal embedding of ``t * time_factor`` (cos half first), float32. t: [B] -> [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = (time_factor * t).float()[:, None] * freqs[None]  # [B, half]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def flux_rope(ids: Tensor, axes_dim: tuple[int, ...], theta: int) -> Tensor:
    """Rotation matrices for position ids [B, L, n_axes] -> [B, 1, L, D/2, 2, 2] (float32)."""
    parts = []
    for i, dim in enumerate(axes_dim):
        scale = torch.arange(0, dim, 2, dtype=torch.float64, device=ids.device) / dim
        ang = ids[..., i].double()[..., None] / theta**scale  # [B, L, dim/2] float64 as the reference
        cos, sin = torch.cos(ang), torch.sin(ang)
        parts.append(torch.stack([cos, -sin, sin, cos], dim=-1).view(*ang.shape, 2, 2))
    return torch.cat(parts, dim=-3).unsqueeze(1).float()


def _apply_rope(x: Tensor, pe: Tensor) -> Tensor:
    """Rotate pairs of features: x [B, H, L, D] with pe [B, 1, L, D/2, 2, 2]."""
    xf = x.float().reshape(*x.shape[:-1], -1, 1, 2)  # [B, H, L, D/2, 1, 2]
    out = pe[..., 0] * xf[..., 0] + pe[..., 1] * xf[..., 1]  # [B, H, L, D/2, 2]
    return out.reshape(x.shape).type_as(x)


def _attention(q: Tensor, k: Tensor, v: Tensor, pe: Tensor) -> Tensor:
    """RoPE attention: q/k/v [B, H, L, D] -> [B, L, H*D]."""
    out = F.scaled_dot_product_attention(_apply_rope(q, pe), _apply_rope(k, pe), v)
    b, h, n, d = out.shape
    return out.transpose(1, 2).reshape(b, n, h * d)


class MLPEmbedder(nn.Module):
    """Linear-SiLU-linear (keys ``in_layer``, ``out_layer``)."""

    def __init__(self, in_dim: int, hidden: int, linear: LinearFactory) -> None:
        super().__init__()
        self.in_layer = linear(in_dim, hidden, bias=True)
        self.out_layer = linear(hidden, hidden, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_layer(F.silu(self.in_layer(x)))


class RMSNorm(nn.Module):
    """RMS norm with a learned ``scale`` (eps 1e-6), computed in the input's dtype."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.empty(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, self.scale.shape, self.scale.to(x.dtype), eps=1e-6)


class QKNorm(nn.Module):
    """Separate RMS norms on queries and keys (keys ``query_norm``, ``key_norm``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.query_norm = RMSNorm(dim)
        self.key_norm = RMSNorm(dim)


class SelfAttention(nn.Module):
    """Fused qkv projection, QK-norm and output projection of one stream (keys ``qkv``, ``norm``, ``proj``)."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool, linear: LinearFactory) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = linear(dim, dim * 3, bias=qkv_bias)
        self.norm = QKNorm(dim // heads)
        self.proj = linear(dim, dim, bias=True)

    def qkv_heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, L, C] -> normed q, k and v, each [B, H, L, D]."""
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        return self.norm.query_norm(q).to(v.dtype), self.norm.key_norm(k).to(v.dtype), v


class Modulation(nn.Module):
    """SiLU-linear of the conditioning vector into 2 or 1 (shift, scale, gate) triples."""

    def __init__(self, dim: int, double: bool, linear: LinearFactory) -> None:
        super().__init__()
        self.n = 6 if double else 3
        self.lin = linear(dim, self.n * dim, bias=True)

    def forward(self, vec: Tensor) -> tuple[Tensor, ...]:
        """vec [B, C] -> n tensors [B, 1, C]."""
        return self.lin(F.silu(vec))[:, None, :].chunk(self.n, dim=-1)


def _norm(x: Tensor) -> Tensor:
    return F.layer_norm(x, (x.shape[-1],), eps=1e-6)


def _mlp(hidden: int, mlp_hidden: int, linear: LinearFactory) -> nn.Sequential:
    return nn.Sequential(linear(hidden, mlp_hidden, bias=True), nn.GELU(approximate="tanh"),
                         linear(mlp_hidden, hidden, bias=True))


class DoubleStreamBlock(nn.Module):
    """Image and text streams with their own weights and one joint attention."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float, qkv_bias: bool, linear: LinearFactory) -> None:
        super().__init__()
        mlp_hidden = int(hidden * mlp_ratio)
        self.img_mod = Modulation(hidden, True, linear)
        self.img_attn = SelfAttention(hidden, heads, qkv_bias, linear)
        self.img_mlp = _mlp(hidden, mlp_hidden, linear)
        self.txt_mod = Modulation(hidden, True, linear)
        self.txt_attn = SelfAttention(hidden, heads, qkv_bias, linear)
        self.txt_mlp = _mlp(hidden, mlp_hidden, linear)

    def forward(self, img: Tensor, txt: Tensor, vec: Tensor, pe: Tensor) -> tuple[Tensor, Tensor]:
        """img [B, Li, C], txt [B, Lt, C], vec [B, C], pe [B, 1, Lt+Li, D/2, 2, 2]."""
        i_sh1, i_sc1, i_g1, i_sh2, i_sc2, i_g2 = self.img_mod(vec)
        t_sh1, t_sc1, t_g1, t_sh2, t_sc2, t_g2 = self.txt_mod(vec)
        iq, ik, iv = self.img_attn.qkv_heads(torch.addcmul(i_sh1, _norm(img), 1 + i_sc1))
        tq, tk, tv = self.txt_attn.qkv_heads(torch.addcmul(t_sh1, _norm(txt), 1 + t_sc1))
        attn = _attention(torch.cat((tq, iq), 2), torch.cat((tk, ik), 2), torch.cat((tv, iv), 2), pe)
        lt = txt.shape[1]
        txt_attn, img_attn = attn[:, :lt], attn[:, lt:]
        img = img + i_g1 * self.img_attn.proj(img_attn)
        img = img + i_g2 * self.img_mlp(torch.addcmul(i_sh2, _norm(img), 1 + i_sc2))
        txt = txt + t_g1 * self.txt_attn.proj(txt_attn)
        txt = txt + t_g2 * self.txt_mlp(torch.addcmul(t_sh2, _norm(txt), 1 + t_sc2))
        if txt.dtype == torch.float16:
            txt = torch.nan_to_num(txt, nan=0.0, posinf=65504, neginf=-65504)
        return img, txt


class SingleStreamBlock(nn.Module):
    """Parallel attention + MLP over the joint sequence (ViT-22B style, arXiv:2302.05442)."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float, linear: LinearFactory) -> None:
        super().__init__()
        self.hidden, self.heads = hidden, heads
        self.mlp_hidden = int(hidden * mlp_ratio)
        self.linear1 = linear(hidden, hidden * 3 + self.mlp_hidden, bias=True)
        self.linear2 = linear(hidden + self.mlp_hidden, hidden, bias=True)
        self.norm = QKNorm(hidden // heads)
        self.modulation = Modulation(hidden, False, linear)

    def forward(self, x: Tensor, vec: Tensor, pe: Tensor) -> Tensor:
        """x [B, L, C] -> [B, L, C]."""
        shift, scale, gate = self.modulation(vec)
        qkv, mlp = self.linear1(torch.addcmul(shift, _norm(x), 1 + scale)).split(
            [3 * self.hidden, self.mlp_hidden], dim=-1)
        b, n, _ = x.shape
        q, k, v = qkv.view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)  # [B, H, L, D] each
        q, k = self.norm.query_norm(q).to(v.dtype), self.norm.key_norm(k).to(v.dtype)
        attn = _attention(q, k, v, pe)
        x = x + gate * self.linear2(torch.cat((attn, F.gelu(mlp, approximate="tanh")), 2))
        if x.dtype == torch.float16:
            x = torch.nan_to_num(x, nan=0.0, posinf=65504, neginf=-65504)
        return x


class LastLayer(nn.Module):
    """adaLN (shift, scale) then a linear to patch pixels (keys ``linear``, ``adaLN_modulation.1``)."""

    def __init__(self, hidden: int, out: int, linear: LinearFactory) -> None:
        super().__init__()
        self.linear = linear(hidden, out, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), linear(hidden, 2 * hidden, bias=True))

    def forward(self, x: Tensor, vec: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(vec)[:, None, :].chunk(2, dim=-1)
        return self.linear(torch.addcmul(shift, _norm(x), 1 + scale))


def _add_control(x: Tensor, residuals: Any, i: int, start: int) -> Tensor:
    """``x`` with ``residuals[i]`` added to tokens ``start ..`` (none, or past the end: unchanged)."""
    r = residuals[i] if i < len(residuals) else None
    if r is None:
        return x
    if r.shape[0] != x.shape[0] or r.shape[2] != x.shape[2] or start + r.shape[1] > x.shape[1]:
        raise ValueError(
            f"control residual {i} has shape {tuple(r.shape)}, the transformer's tokens are "
            f"{tuple(x.shape)}. Fix: use a ControlNet made for this model (same width and patch size)")
    end = start + r.shape[1]
    if end == x.shape[1] and start == 0:
        return x + r.to(x.dtype)
    return torch.cat([x[:, :start], x[:, start:end] + r.to(x.dtype), x[:, end:]], dim=1)


class Flux(nn.Module):
    """The Flux.1 transformer: ``forward(x, timestep, context, y, guidance) -> velocity``.

    Parameters
    ----------
    config:
        Sizes (``FluxConfig.from_state_dict`` reads them from a file).
    linear:
        Factory for the linear layers (``nn.Linear`` signature); the loader picks it.
    """

    takes_linear = True  # the loader may pass a cast-on-forward linear layer (fp8 weights)

    def __init__(self, config: FluxConfig, linear: LinearFactory = nn.Linear) -> None:
        super().__init__()
        c = config
        self.config = c
        p2 = c.patch_size * c.patch_size
        self.img_in = linear(c.in_channels * p2, c.hidden_size, bias=True)
        self.time_in = MLPEmbedder(256, c.hidden_size, linear)
        self.vector_in = MLPEmbedder(c.vec_in_dim, c.hidden_size, linear)
        if c.guidance_embed:
            self.guidance_in = MLPEmbedder(256, c.hidden_size, linear)
        self.txt_in = linear(c.context_in_dim, c.hidden_size, bias=True)
        self.double_blocks = nn.ModuleList(
            DoubleStreamBlock(c.hidden_size, c.num_heads, c.mlp_ratio, c.qkv_bias, linear) for _ in range(c.depth))
        self.single_blocks = nn.ModuleList(
            SingleStreamBlock(c.hidden_size, c.num_heads, c.mlp_ratio, linear) for _ in range(c.depth_single_blocks))
        self.final_layer = LastLayer(c.hidden_size, p2 * c.out_channels, linear)

    @property
    def control_slots(self) -> tuple[int, int]:
        """How many residuals a ControlNet gives this model: one per (double, single) block."""
        return self.config.depth, self.config.depth_single_blocks

    def forward_tokens(self, img: Tensor, img_ids: Tensor, txt: Tensor, txt_ids: Tensor, timestep: Tensor,
                       y: Tensor, guidance: Tensor | None = None, control: Any = None) -> Tensor:
        """Token-level forward (the reference's ``forward``).

        img [B, Li, C*p*p], img_ids [B, Li, 3], txt [B, Lt, Dctx], txt_ids [B, Lt, 3], timestep [B]
        (sigma in 0..1), y [B, Dvec], guidance [B] -> [B, Li, Cout*p*p].  ``control``
        (:class:`~comfy_notebook.models.unet.ControlResiduals`): ``input[i]`` [B, Lc, C] is added to
        the first ``Lc`` image tokens after double block ``i``, ``output[i]`` to those after single
        block ``i`` (ComfyUI ``comfy/ldm/flux/model.py`` at a125cd8).
        """
        dtype = img.dtype
        img = self.img_in(img)
        vec = self.time_in(timestep_embedding(timestep).to(dtype))
        if self.config.guidance_embed and guidance is not None:  # no guidance: no term (as ComfyUI)
            vec = vec + self.guidance_in(timestep_embedding(guidance).to(dtype))
        vec = vec + self.vector_in(y[:, : self.config.vec_in_dim].to(dtype))
        txt = self.txt_in(txt.to(dtype))
        pe = flux_rope(torch.cat((txt_ids, img_ids), dim=1), self.config.axes_dim, self.config.theta)
        for i, block in enumerate(self.double_blocks):
            img, txt = block(img, txt, vec, pe)
            if control is not None:
                img = _add_control(img, control.input, i, 0)
        x = torch.cat((txt, img), 1)
        for i, single in enumerate(self.single_blocks):
            x = single(x, vec, pe)
            if control is not None:
                x = _add_control(x, control.output, i, txt.shape[1])
        return self.final_layer(x[:, txt.shape[1]:], vec)

    def forward(self, x: Tensor, timestep: Tensor, context: Tensor, y: Tensor | None = None,
                guidance: Tensor | None = None, control: Any = None) -> Tensor:
        """Velocity of a latent.

        x [B, C, H, W] (odd sizes are padded circularly to the patch size, as ComfyUI does),
        timestep [B] (= sigma), context [B, Lt, Dctx] (T5), y [B, Dvec] (pooled CLIP-L; zeros
        when None), guidance [B] (dev), control (a ControlNet's residuals, see ``forward_tokens``)
        -> [B, Cout, H, W] in x's dtype.
        """
        b, _, h, w = x.shape
        p = self.config.patch_size
        ph, pw = (p - h % p) % p, (p - w % p) % p
        xp = F.pad(x, (0, pw, 0, ph), mode="circular") if ph or pw else x
        hl, wl = (h + ph) // p, (w + pw) // p
        img = xp.view(b, -1, hl, p, wl, p).permute(0, 2, 4, 1, 3, 5).reshape(b, hl * wl, -1)  # [B, L, C*p*p]
        img_ids = torch.zeros(hl, wl, 3, device=x.device, dtype=torch.float32)
        img_ids[..., 1] = torch.arange(hl, device=x.device, dtype=torch.float32)[:, None]
        img_ids[..., 2] = torch.arange(wl, device=x.device, dtype=torch.float32)[None, :]
        img_ids = img_ids.view(1, hl * wl, 3).expand(b, -1, -1)
        txt_ids = torch.zeros(b, context.shape[1], 3, device=x.device, dtype=torch.float32)
        if y is None:
            y = torch.zeros(b, self.config.vec_in_dim, device=x.device, dtype=x.dtype)
        out = self.forward_tokens(img, img_ids, context, txt_ids, timestep, y, guidance, control)
        out = out.view(b, hl, wl, -1, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, -1, hl * p, wl * p)
        return out[:, :, :h, :w]
