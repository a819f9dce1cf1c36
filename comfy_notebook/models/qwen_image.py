"""The Qwen-Image diffusion transformer (MMDiT: dual-stream blocks, 3-axis RoPE), Edit included.

Parameter names are the released ``diffusion_models/qwen_image*.safetensors`` keys (Comfy-Org's
repackaging of Qwen/Qwen-Image; diffusers' single-file loader maps them onto
``QwenImageTransformer2DModel`` unchanged): ``img_in``, ``txt_norm``, ``txt_in``,
``time_text_embed.timestep_embedder.linear_{1,2}``, ``transformer_blocks.N.{img,txt}_mod.1``,
``transformer_blocks.N.attn.{to_q,to_k,to_v,add_q_proj,add_k_proj,add_v_proj,to_out.0,to_add_out,
norm_q,norm_k,norm_added_q,norm_added_k}``, ``transformer_blocks.N.{img,txt}_mlp.net.{0.proj,2}``,
``norm_out.linear``, ``proj_out``.

How a forward runs (ComfyUI ``comfy/ldm/qwen_image/model.py`` at a125cd8, the same computation
as diffusers ``QwenImageTransformer2DModel`` 0.42.1):

- the 16-channel latent [B, C, H, W] (or ComfyUI's [B, C, 1, H, W]) is padded circularly to even
  sizes and cut into 2x2 patches (features in (channel, row, col) order);
- every block modulates each stream (shift, scale, gate twice) from the timestep embedding,
  runs one joint attention over ``[text, image]`` (RMS-normed queries/keys per stream, RoPE on
  both) and a GELU(tanh) MLP per stream;
- RoPE axes (frame, row, col) of widths (16, 56, 56), theta 10000; image patch (r, c) of an
  ``h x w`` patch grid sits at (0, r - h // 2, c - w // 2) (centred); text token i at
  ``s + i`` on all three axes with ``s = max(h // 2, w // 2)`` of the sampled latent;
- reference latents (Qwen-Image-Edit): each is patched like the latent and appended to the image
  tokens; with the ``"index"`` method (ComfyUI's default) the k-th reference sits at frame k
  (centred rows/cols), with ``"offset"`` every reference sits at frame 1 beside the previous
  ones (to the right or below, whichever keeps the canvas squarer).  Only the sampled latent's
  tokens are returned.  Qwen-Image-Edit-2511 (``zero_cond_t``, marked in its file by an empty
  ``__index_timestep_zero__`` tensor) modulates the reference tokens with the embedding of
  timestep 0 and the latent's tokens with the sampled timestep's.

``timestep`` is sigma (0..1; the embedding scales it by 1000); the output is the flow velocity
``noise - x0`` (ComfyUI's ``CONST`` prediction), in ``x``'s dtype.  No attention mask is used
(ComfyUI passes none to this model).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from comfy_notebook.models.flux import flux_rope

__all__ = ["ZERO_COND_MARK", "QwenImage", "QwenImageConfig", "qwen_rope_axes", "reference_ids", "reference_kwargs"]

LinearFactory = Callable[..., nn.Module]
TIME_DIM = 256  # sinusoidal features of the timestep
REF_METHODS = ("index", "offset")
ZERO_COND_MARK = "__index_timestep_zero__"  # Edit-2511 files: refs modulated at timestep 0
_REF_KEY = "ref_latent_"  # keyword inputs ref_latent_<method>_<i>: one reference latent each


def reference_kwargs(latents: Sequence[Tensor], method: str = "index") -> dict[str, Tensor]:
    """Reference latents as keyword inputs of :meth:`QwenImage.forward` (``ref_latent_index_0``,
    ...): plain tensors with a batch dimension, as the sampler batches model inputs.  ComfyUI
    places every method but ``"index"`` (``"offset"``, ``"uxo"``) as ``"offset"``."""
    kind = "index" if method == "index" else "offset"
    return {f"{_REF_KEY}{kind}_{i}": lat for i, lat in enumerate(latents)}


def _named_references(extra: Mapping[str, object]) -> tuple[list[Tensor], str]:
    """The reference latents and method of keyword inputs made by :func:`reference_kwargs`."""
    found = []
    for key, value in extra.items():
        if key.startswith(_REF_KEY) and isinstance(value, Tensor):
            kind, index = key[len(_REF_KEY):].rsplit("_", 1)
            found.append((int(index), kind, value))
    found.sort(key=lambda f: f[0])
    return [f[2] for f in found], (found[0][1] if found else "index")


def qwen_rope_axes(head_dim: int) -> tuple[int, int, int]:
    """RoPE widths (frame, row, col): an eighth for the frame, the rest split evenly
    (Qwen-Image's 128-wide heads: 16 + 56 + 56)."""
    a = 2 * max(1, head_dim // 16)
    b = 2 * ((head_dim - a) // 4)
    return (a, b, head_dim - a - b)


@dataclass(frozen=True)
class QwenImageConfig:
    """Sizes of a Qwen-Image transformer (all read from a checkpoint's shapes)."""

    num_layers: int = 60
    num_heads: int = 24
    head_dim: int = 128
    in_channels: int = 16  # latent channels (the transformer's input is 2x2 patches of them)
    out_channels: int = 16
    context_dim: int = 3584  # Qwen2.5-VL-7B's hidden size
    patch_size: int = 2
    axes_dim: tuple[int, int, int] = (16, 56, 56)
    theta: int = 10000
    mlp_ratio: float = 4.0
    #: Qwen-Image-Edit-2511 (its file carries the empty marker ``__index_timestep_zero__``):
    #: reference-latent tokens are modulated with the embedding of timestep 0
    zero_cond_t: bool = False

    def __post_init__(self) -> None:
        if sum(self.axes_dim) != self.head_dim or any(a % 2 for a in self.axes_dim):
            raise ValueError(f"Qwen-Image RoPE axes {self.axes_dim} must be even and sum to the "
                             f"head width {self.head_dim}")

    @property
    def hidden_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def patch_features(self) -> int:
        """Width of one patch token (``img_in``'s input: ComfyUI's ``in_channels``, 64)."""
        return self.in_channels * self.patch_size * self.patch_size

    @classmethod
    def qwen_image(cls) -> QwenImageConfig:
        """Qwen-Image / Qwen-Image-Edit (20.4 B parameters)."""
        return cls()

    @classmethod
    def tiny(cls) -> QwenImageConfig:
        """A test size: 64 wide (2 heads of 32), two blocks, a 64-wide context (the tiny
        Qwen2.5-VL's hidden size)."""
        return cls(num_layers=2, num_heads=2, head_dim=32, context_dim=64, axes_dim=qwen_rope_axes(32))

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, Tensor], prefix: str = "") -> QwenImageConfig:
        """Sizes from the tensor shapes of a checkpoint (keys under ``prefix``)."""
        hidden, features = (int(s) for s in sd[prefix + "img_in.weight"].shape)
        head = int(sd[prefix + "transformer_blocks.0.attn.norm_q.weight"].shape[0])
        ctx = int(sd[prefix + "txt_in.weight"].shape[1])
        patch = 2  # every released Qwen-Image model cuts 2x2 patches
        out = int(sd[prefix + "proj_out.weight"].shape[0]) // (patch * patch)
        mlp = int(sd[prefix + "transformer_blocks.0.img_mlp.net.0.proj.weight"].shape[0])
        start = prefix + "transformer_blocks."
        layers = {k[len(start):].split(".", 1)[0] for k in sd if k.startswith(start)}
        return cls(num_layers=sum(1 for s in layers if s.isdigit()), num_heads=hidden // head, head_dim=head,
                   in_channels=features // (patch * patch), out_channels=out, context_dim=ctx, patch_size=patch,
                   axes_dim=qwen_rope_axes(head), mlp_ratio=mlp / hidden,
                   zero_cond_t=prefix + ZERO_COND_MARK in sd)


class RMSNorm(nn.Module):
    """RMS norm with a learned ``weight`` (eps 1e-6), in the input's dtype."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight.to(x.dtype), eps=self.eps)


def timestep_features(t: Tensor, dim: int = TIME_DIM) -> Tensor:
    """Sinusoidal features of ``t`` [B] scaled by 1000, cos half first -> [B, dim] float32
    (diffusers' ``Timesteps(flip_sin_to_cos=True, downscale_freq_shift=0, scale=1000)``, in its
    order of operations)."""
    half = dim // 2
    exponent = -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    args = 1000.0 * (t[:, None].float() * torch.exp(exponent)[None])
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    """Linear-SiLU-linear over the timestep features (keys ``linear_1``, ``linear_2``)."""

    def __init__(self, out: int, linear: LinearFactory) -> None:
        super().__init__()
        self.linear_1 = linear(TIME_DIM, out, bias=True)
        self.linear_2 = linear(out, out, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class TimeTextEmbed(nn.Module):
    """``time_text_embed``: holds the timestep embedder (the name of the released keys)."""

    def __init__(self, out: int, linear: LinearFactory) -> None:
        super().__init__()
        self.timestep_embedder = TimestepEmbedder(out, linear)

    def forward(self, t: Tensor, dtype: torch.dtype) -> Tensor:
        return self.timestep_embedder(timestep_features(t).to(dtype))


def _rope(x: Tensor, pe: Tensor) -> Tensor:
    """Rotate adjacent feature pairs: x [B, H, L, D] with pe [B, 1, L, D/2, 2, 2]."""
    xf = x.float().reshape(*x.shape[:-1], -1, 1, 2)
    out = pe[..., 0] * xf[..., 0] + pe[..., 1] * xf[..., 1]
    return out.reshape(x.shape).type_as(x)


class JointAttention(nn.Module):
    """One attention over ``[text, image]`` with separate projections and QK norms per stream."""

    def __init__(self, dim: int, heads: int, head_dim: int, linear: LinearFactory) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = linear(dim, dim, bias=True)
        self.to_k = linear(dim, dim, bias=True)
        self.to_v = linear(dim, dim, bias=True)
        self.add_q_proj = linear(dim, dim, bias=True)
        self.add_k_proj = linear(dim, dim, bias=True)
        self.add_v_proj = linear(dim, dim, bias=True)
        self.to_out = nn.ModuleList([linear(dim, dim, bias=True)])
        self.to_add_out = linear(dim, dim, bias=True)
        self.norm_q = RMSNorm(head_dim)
        self.norm_k = RMSNorm(head_dim)
        self.norm_added_q = RMSNorm(head_dim)
        self.norm_added_k = RMSNorm(head_dim)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, -1).transpose(1, 2)  # [B, H, N, D]

    def forward(self, img: Tensor, txt: Tensor, pe: Tensor) -> tuple[Tensor, Tensor]:
        q = torch.cat((self.norm_added_q(self._heads(self.add_q_proj(txt))),
                       self.norm_q(self._heads(self.to_q(img)))), dim=2)
        k = torch.cat((self.norm_added_k(self._heads(self.add_k_proj(txt))),
                       self.norm_k(self._heads(self.to_k(img)))), dim=2)
        v = torch.cat((self._heads(self.add_v_proj(txt)), self._heads(self.to_v(img))), dim=2)
        out = F.scaled_dot_product_attention(_rope(q, pe), _rope(k, pe), v)
        b, h, n, d = out.shape
        out = out.transpose(1, 2).reshape(b, n, h * d)
        nt = txt.shape[1]
        return self.to_out[0](out[:, nt:]), self.to_add_out(out[:, :nt])


class GeluProj(nn.Module):
    """``net.0``: a linear layer followed by GELU (tanh approximation), key ``proj``."""

    def __init__(self, dim: int, hidden: int, linear: LinearFactory) -> None:
        super().__init__()
        self.proj = linear(dim, hidden, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.proj(x), approximate="tanh")


class FeedForward(nn.Module):
    """``net.0`` (linear + GELU), ``net.1`` (dropout, no weights), ``net.2`` (linear)."""

    def __init__(self, dim: int, hidden: int, linear: LinearFactory) -> None:
        super().__init__()
        self.net = nn.ModuleList([GeluProj(dim, hidden, linear), nn.Identity(), linear(hidden, dim, bias=True)])

    def forward(self, x: Tensor) -> Tensor:
        return self.net[2](self.net[0](x))


def _norm(x: Tensor) -> Tensor:
    return F.layer_norm(x, (x.shape[-1],), eps=1e-6)


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return torch.addcmul(shift[:, None], _norm(x), 1 + scale[:, None])


class DualStreamBlock(nn.Module):
    """Image and text streams with their own weights, modulation and MLP; one joint attention."""

    def __init__(self, c: QwenImageConfig, linear: LinearFactory) -> None:
        super().__init__()
        dim = c.hidden_size
        self.img_mod = nn.Sequential(nn.SiLU(), linear(dim, 6 * dim, bias=True))
        self.txt_mod = nn.Sequential(nn.SiLU(), linear(dim, 6 * dim, bias=True))
        self.attn = JointAttention(dim, c.num_heads, c.head_dim, linear)
        hidden = int(dim * c.mlp_ratio)
        self.img_mlp = FeedForward(dim, hidden, linear)
        self.txt_mlp = FeedForward(dim, hidden, linear)

    def forward(self, img: Tensor, txt: Tensor, temb: Tensor, pe: Tensor, ref_temb: Tensor | None = None,
                n_main: int = 0) -> tuple[Tensor, Tensor]:
        """``ref_temb`` (Edit-2511's "index_timestep_zero"): the image tokens after the first
        ``n_main`` (the reference latents') are modulated by this embedding (of timestep 0)."""
        im = self.img_mod(temb).chunk(6, dim=-1)
        ir = None if ref_temb is None else self.img_mod(ref_temb).chunk(6, dim=-1)
        t_shift1, t_scale1, t_gate1, t_shift2, t_scale2, t_gate2 = self.txt_mod(temb).chunk(6, dim=-1)

        def mod(x: Tensor, k: int) -> Tensor:  # shift k, scale k + 1
            if ir is None:
                return _modulate(x, im[k], im[k + 1])
            return torch.cat([_modulate(x[:, :n_main], im[k], im[k + 1]),
                              _modulate(x[:, n_main:], ir[k], ir[k + 1])], dim=1)

        def gate(k: int, n: int) -> Tensor:  # gate k, per token
            if ir is None:
                return im[k][:, None]
            return torch.cat([im[k][:, None].expand(-1, n_main, -1), ir[k][:, None].expand(-1, n - n_main, -1)], 1)

        img_attn, txt_attn = self.attn(mod(img, 0), _modulate(txt, t_shift1, t_scale1), pe)
        img = torch.addcmul(img, gate(2, img.shape[1]), img_attn)
        txt = torch.addcmul(txt, t_gate1[:, None], txt_attn)
        img = torch.addcmul(img, gate(5, img.shape[1]), self.img_mlp(mod(img, 3)))
        txt = torch.addcmul(txt, t_gate2[:, None], self.txt_mlp(_modulate(txt, t_shift2, t_scale2)))
        return img, txt


class OutputNorm(nn.Module):
    """``norm_out``: LayerNorm (no affine) scaled and shifted by the timestep embedding."""

    def __init__(self, dim: int, linear: LinearFactory) -> None:
        super().__init__()
        self.linear = linear(dim, 2 * dim, bias=True)

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        scale, shift = self.linear(F.silu(temb)).chunk(2, dim=-1)
        return _modulate(x, shift, scale)


def _patch_ids(h: int, w: int, frame: int, h_off: int = 0, w_off: int = 0,
               device: torch.device | str | None = None) -> Tensor:
    """Position ids [h*w, 3] of an ``h x w`` patch grid: (frame, row, col), rows and columns
    centred on the grid (offsets shift the grid, as ComfyUI's ``process_img``); made on
    ``device`` (no host copy, so a step can be captured in a CUDA graph)."""
    rows = torch.arange(h, dtype=torch.float32, device=device) + (h_off - h // 2)
    cols = torch.arange(w, dtype=torch.float32, device=device) + (w_off - w // 2)
    ids = torch.empty(h, w, 3, device=device)
    ids[..., 0] = frame
    ids[..., 1] = rows[:, None]
    ids[..., 2] = cols[None, :]
    return ids.reshape(h * w, 3)


def reference_ids(shapes: Sequence[tuple[int, int]], method: str = "index",
                  patch: int = 2, device: torch.device | str | None = None) -> list[Tensor]:
    """Position ids of reference latents of latent sizes ``shapes`` [(H, W), ...] -> one
    [h*w, 3] tensor each (see the module docstring for the two methods)."""
    if method not in REF_METHODS:
        raise ValueError(f"reference latents method {method!r}: expected one of {REF_METHODS}")
    out, h_used, w_used = [], 0, 0
    for k, (lh, lw) in enumerate(shapes, start=1):
        gh, gw = (lh + patch // 2) // patch, (lw + patch // 2) // patch
        if method == "index":
            out.append(_patch_ids(gh, gw, k, device=device))
            continue
        h_off = w_off = 0
        if lh + h_used > lw + w_used:  # ComfyUI compares latent sizes, offsets in latent pixels
            w_off = w_used
        else:
            h_off = h_used
        h_used, w_used = max(h_used, lh + h_off), max(w_used, lw + w_off)
        out.append(_patch_ids(gh, gw, 1, (h_off + patch // 2) // patch, (w_off + patch // 2) // patch, device))
    return out


class QwenImage(nn.Module):
    """The Qwen-Image transformer: ``forward(x, timestep, context, ref_latents=...) -> velocity``."""

    takes_linear = True  # the loader may pass a cast-on-forward linear layer (fp8 weights)

    @staticmethod
    def ignored_keys(key: str) -> bool:
        """File keys without a parameter: Edit-2511's empty ``__index_timestep_zero__`` marker."""
        return key == ZERO_COND_MARK

    def __init__(self, config: QwenImageConfig, linear: LinearFactory = nn.Linear) -> None:
        super().__init__()
        c = self.config = config
        dim = c.hidden_size
        self.time_text_embed = TimeTextEmbed(dim, linear)
        self.txt_norm = RMSNorm(c.context_dim)
        self.img_in = linear(c.patch_features, dim, bias=True)
        self.txt_in = linear(c.context_dim, dim, bias=True)
        self.transformer_blocks = nn.ModuleList(DualStreamBlock(c, linear) for _ in range(c.num_layers))
        self.norm_out = OutputNorm(dim, linear)
        self.proj_out = linear(dim, c.patch_size * c.patch_size * c.out_channels, bias=True)

    def _patches(self, x: Tensor) -> tuple[Tensor, int, int]:
        """[B, C, H, W] -> tokens [B, h*w, C*p*p] and the patch grid (h, w); odd sizes are padded
        circularly (ComfyUI's ``pad_to_patch_size``)."""
        p = self.config.patch_size
        b, ch, hh, ww = x.shape
        ph, pw = (p - hh % p) % p, (p - ww % p) % p
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="circular")
        gh, gw = (hh + ph) // p, (ww + pw) // p
        tokens = x.reshape(b, ch, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, ch * p * p)
        return tokens, gh, gw

    def forward_tokens(self, img: Tensor, txt: Tensor, timestep: Tensor, ids: Tensor,
                       n_main: int | None = None) -> Tensor:
        """Token-level forward: img [B, Li, C*p*p], txt [B, Lt, Dctx], timestep [B] (sigma),
        ids [Lt + Li, 3] (text first) -> [B, Li, Cout*p*p].  With ``zero_cond_t`` (Edit-2511)
        the image tokens after the first ``n_main`` are modulated as at timestep 0."""
        dtype = img.dtype
        temb = self.time_text_embed(timestep, dtype)
        ref_temb = None
        if self.config.zero_cond_t and n_main is not None and n_main < img.shape[1]:
            ref_temb = self.time_text_embed(torch.zeros_like(timestep), dtype)
        img = self.img_in(img)
        txt = self.txt_in(self.txt_norm(txt.to(dtype)))
        pe = flux_rope(ids[None], self.config.axes_dim, self.config.theta)  # [1, 1, L, D/2, 2, 2]
        for block in self.transformer_blocks:
            img, txt = block(img, txt, temb, pe, ref_temb, n_main or 0)
        return self.proj_out(self.norm_out(img, temb))

    def forward(self, x: Tensor, timestep: Tensor, context: Tensor,
                ref_latents: Sequence[Tensor] | None = None, ref_latents_method: str = "index",
                **extra: object) -> Tensor:
        """Velocity of a latent.

        x [B, C, H, W] or [B, C, 1, H, W]; timestep [B] (sigma); context [B, Lt, Dctx] (the
        text encoder's hidden states); ref_latents: Edit's reference latents (already through
        the latent format), each [B or 1, C, H', W'] (or 5-D with one frame), also accepted as
        the keyword inputs of :func:`reference_kwargs` -> like ``x``.
        """
        if not ref_latents:
            ref_latents, ref_latents_method = _named_references(extra)
        five = x.ndim == 5
        if five:
            x = x.squeeze(2)
        b, _, hh, ww = x.shape
        p = self.config.patch_size
        img, gh, gw = self._patches(x)
        n_img = img.shape[1]
        dev = x.device
        parts, id_parts = [img], [_patch_ids(gh, gw, 0, device=dev)]
        if ref_latents:
            refs = [r.squeeze(2) if r.ndim == 5 else r for r in ref_latents]
            ref_ids = reference_ids([(int(r.shape[-2]), int(r.shape[-1])) for r in refs],
                                    ref_latents_method, p, dev)
            for r, r_ids in zip(refs, ref_ids, strict=True):
                tokens, _, _ = self._patches(r.to(x.dtype))
                parts.append(tokens.expand(b, -1, -1) if tokens.shape[0] == 1 else tokens)
                id_parts.append(r_ids)
        start = max(gh // 2, gw // 2)
        n_txt = context.shape[1]
        txt_ids = torch.arange(start, start + n_txt, dtype=torch.float32, device=dev)[:, None].expand(n_txt, 3)
        ids = torch.cat([txt_ids, *id_parts])
        out = self.forward_tokens(torch.cat(parts, dim=1), context, timestep, ids, n_img)[:, :n_img]
        out = out.reshape(b, gh, gw, -1, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, -1, gh * p, gw * p)
        out = out[:, :, :hh, :ww]
        return out.unsqueeze(2) if five else out
