"""Qwen2.5-VL as a text encoder (Qwen-Image's; Qwen-Image-Edit's with its vision tower).

Parameter names are those of ComfyUI's ``text_encoders/qwen_2.5_vl_7b*.safetensors``: the
language model under ``model.`` (Qwen2 keys: ``embed_tokens``, ``layers.N.self_attn.{q,k,v}_proj``
with biases, ``o_proj``, ``mlp.{gate,up,down}_proj``, ``input_layernorm``,
``post_attention_layernorm``, ``norm``) and the vision tower under ``visual.``
(:mod:`comfy_notebook.models.qwen25vl_vision`); an ``lm_head`` in a file is ignored.  Reference:
transformers ``models/qwen2_5_vl`` (5.23.0), which the tests compare against, and ComfyUI
``comfy/text_encoders/llama.py`` (``Qwen25_7BVLI``, commit a125cd84) and ``qwen_vl.py``
(``qwen2vl_mrope_position_ids``, commit 0ac74268) for how the image tokens are spliced in and
positioned.

Positions are multimodal RoPE: three position ids per token (time, row, column) whose rotary
frequencies are split 16/24/24 over the head's 64 frequency pairs.  Text tokens have the same id
three times (plain RoPE); an image's tokens share the time id and take their row and column in
the merged 2 x 2 patch grid; the text after an image continues after the larger grid side.

"Scaled fp8" files (ComfyUI's ``*_fp8_scaled``) store fp8 linear weights with a float32 scalar
``scale_weight`` beside each: those linears multiply their cast weight by it (as ComfyUI does
without fp8 matmul).  Why our own module rather than transformers' as for
:mod:`comfy_notebook.models.qwen3`: meta build with ``assign=True`` (no second copy), linears from
the loader's factory (fp8 stays fp8), layers after the one read never run, and no generation code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from comfy_notebook.models.qwen3 import RMSNorm
from comfy_notebook.models.qwen25vl_vision import VisionConfig, VisionTower, preprocess_image

__all__ = ["IMAGE_PAD_ID", "Qwen25VLConfig", "Qwen25VLEncoder", "VisionConfig"]

LinearFactory = Callable[..., nn.Module]

#: ``<|image_pad|>``: the token an image's merged patch tokens replace (one per image as ComfyUI
#: tokenizes; transformers' processor repeats it once per image token).
IMAGE_PAD_ID = 151655


@dataclass(frozen=True)
class Qwen25VLConfig:
    """Sizes of the language model (read from a file's shapes, except head size, RoPE and eps)."""

    vocab_size: int = 152064
    hidden_size: int = 3584
    num_layers: int = 28
    num_heads: int = 28
    num_kv_heads: int = 4
    head_dim: int = 128
    intermediate_size: int = 18944
    rms_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    mrope_section: tuple[int, int, int] = (16, 24, 24)
    #: the token an image's tokens replace (``<|image_pad|>``)
    image_token_id: int = IMAGE_PAD_ID
    #: the vision tower, or None for a file without ``visual.`` keys
    vision: VisionConfig | None = field(default_factory=VisionConfig)
    #: names of the linear layers that carry a ``scale_weight`` (scaled fp8 files)
    scaled: frozenset[str] = frozenset()

    @classmethod
    def qwen25vl_7b(cls) -> Qwen25VLConfig:
        """Qwen2.5-VL-7B-Instruct, Qwen-Image's text encoder."""
        return cls()

    @classmethod
    def tiny(cls) -> Qwen25VLConfig:
        """A test size: 3 layers, 64 wide, 4 query heads of 16 sharing 2 key/value heads, 512 tokens."""
        return cls(vocab_size=512, image_token_id=511, hidden_size=64, num_layers=3, num_heads=4,
                   num_kv_heads=2, head_dim=16, intermediate_size=96, mrope_section=(2, 3, 3),
                   vision=VisionConfig.tiny())

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, Tensor], prefix: str = "", *, head_dim: int | None = None,
                        vision_head_dim: int | None = None) -> Qwen25VLConfig:
        """Sizes from the shapes of a checkpoint whose keys start with ``prefix``.

        The head sizes are not in the shapes: 128 (language model) and 80 (vision) for every
        released Qwen2.5-VL; a width they do not divide is a test size, read with heads of 16.
        """
        m = prefix + "model."
        vocab, hidden = (int(s) for s in sd[m + "embed_tokens.weight"].shape)
        q = int(sd[m + "layers.0.self_attn.q_proj.weight"].shape[0])
        kv = int(sd[m + "layers.0.self_attn.k_proj.weight"].shape[0])
        if head_dim is None:
            head_dim = 128 if q % 128 == 0 and kv % 128 == 0 else 16
        inter = int(sd[m + "layers.0.mlp.gate_proj.weight"].shape[0])
        layers = len({k[len(m):].split(".")[1] for k in sd if k.startswith(m + "layers.")})
        half = head_dim // 2
        section = (half // 4, 3 * half // 8, half - half // 4 - 3 * half // 8)  # 16/24/24 of 64
        vision = None
        v = prefix + "visual."
        if v + "patch_embed.proj.weight" in sd:
            width, chans, frames, patch, _ = (int(s) for s in sd[v + "patch_embed.proj.weight"].shape)
            if vision_head_dim is None:
                vision_head_dim = 80 if width % 80 == 0 else 16
            depth = len({k[len(v):].split(".")[1] for k in sd if k.startswith(v + "blocks.")})
            # every 8th block attends to the whole image (7, 15, 23, 31 at the released depth 32, as
            # ComfyUI fixes them); test sizes under 8 blocks alternate (1, 3, ...)
            full = tuple(range(7, depth, 8)) if depth >= 8 else tuple(range(1, depth, 2))
            vision = VisionConfig(
                hidden_size=width, depth=depth, head_dim=vision_head_dim, patch_size=patch,
                intermediate_size=int(sd[v + "blocks.0.mlp.gate_proj.weight"].shape[0]),
                out_hidden_size=int(sd[v + "merger.mlp.2.weight"].shape[0]), temporal_patch_size=frames,
                fullatt_block_indexes=full, in_channels=chans)
        scaled = frozenset(k[len(prefix):-len(".scale_weight")] for k in sd
                           if k.startswith(prefix) and k.endswith(".scale_weight"))
        return cls(vocab_size=vocab, hidden_size=hidden, num_layers=layers, num_heads=q // head_dim,
                   num_kv_heads=kv // head_dim, head_dim=head_dim, intermediate_size=inter,
                   mrope_section=section, vision=vision, scaled=scaled)

    def without_vision(self) -> Qwen25VLConfig:
        return replace(self, vision=None)


class _Attention(nn.Module):
    """Grouped-query causal self-attention with biased q/k/v projections."""

    def __init__(self, c: Qwen25VLConfig, linear: LinearFactory) -> None:
        super().__init__()
        self.c = c
        self.q_proj = linear(c.hidden_size, c.num_heads * c.head_dim, bias=True)
        self.k_proj = linear(c.hidden_size, c.num_kv_heads * c.head_dim, bias=True)
        self.v_proj = linear(c.hidden_size, c.num_kv_heads * c.head_dim, bias=True)
        self.o_proj = linear(c.num_heads * c.head_dim, c.hidden_size, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None) -> Tensor:
        b, n, _ = x.shape
        d = self.c.head_dim
        q = self.q_proj(x).view(b, n, -1, d).transpose(1, 2)
        k = self.k_proj(x).view(b, n, -1, d).transpose(1, 2)
        v = self.v_proj(x).view(b, n, -1, d).transpose(1, 2)
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        rep = self.c.num_heads // self.c.num_kv_heads
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(y.transpose(1, 2).reshape(b, n, -1))


def _rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    a, b = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-b, a), dim=-1) * sin


class _MLP(nn.Module):
    def __init__(self, c: Qwen25VLConfig, linear: LinearFactory) -> None:
        super().__init__()
        self.gate_proj = linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class _Layer(nn.Module):
    def __init__(self, c: Qwen25VLConfig, linear: LinearFactory) -> None:
        super().__init__()
        self.self_attn = _Attention(c, linear)
        self.mlp = _MLP(c, linear)
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_eps)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_eps)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class _Body(nn.Module):
    def __init__(self, c: Qwen25VLConfig, linear: LinearFactory) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(_Layer(c, linear) for _ in range(c.num_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_eps)


class _ScaledWeight:
    """Mixin for a linear layer of a scaled fp8 file: ``weight * scale_weight`` in the input's dtype."""

    weight: Tensor
    bias: Tensor | None
    scale_weight: Tensor

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight.to(x.dtype) * self.scale_weight.to(x.dtype)
        return F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))


_SCALED_CLASSES: dict[type, type] = {}


def _add_scale(module: nn.Module) -> None:
    cls = type(module)
    if cls not in _SCALED_CLASSES:
        _SCALED_CLASSES[cls] = type("Scaled" + cls.__name__, (_ScaledWeight, cls), {})
    module.__class__ = _SCALED_CLASSES[cls]
    module.scale_weight = nn.Parameter(torch.empty((), dtype=torch.float32), requires_grad=False)


def _ignored(key: str) -> bool:
    """Keys of a ComfyUI file that the encoder does not use."""
    return key == "scaled_fp8" or key.startswith("lm_head.") or key.endswith(".scale_input")


class Qwen25VLEncoder(nn.Module):
    """``forward(input_ids [B, N], attention_mask=None, layer=None, images=()) -> [B, N', hidden]``.

    ``layer`` is the index of the decoder layer whose output is returned; ``None`` returns the
    final normed state (what Qwen-Image reads).  ``attention_mask`` ([B, N], 1 = token) is combined
    with the causal mask.  ``images`` (IMAGE tensors, for a batch of one prompt) replace the
    ``<|image_pad|>`` tokens of ``input_ids`` in order, each by its vision tokens, so ``N'`` grows
    by the image tokens minus one per image.
    """

    takes_linear = True  # the loader passes a cast-on-forward linear for fp8 weights
    ignored_keys = staticmethod(_ignored)

    def __init__(self, config: Qwen25VLConfig, linear: LinearFactory = nn.Linear) -> None:
        super().__init__()
        self.config = config
        self.model = _Body(config, linear)
        self.visual = None if config.vision is None else VisionTower(config.vision, linear)
        for name in sorted(config.scaled):
            _add_scale(self.get_submodule(name))

    # -- pieces ------------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        """The activations' dtype (the loader's compute dtype, else the norms' weight dtype)."""
        return getattr(self, "compute_dtype", None) or self.model.norm.weight.dtype

    def embed(self, input_ids: Tensor) -> Tensor:
        """Token embeddings ``[B, N, hidden]`` in the activations' dtype."""
        return self.model.embed_tokens.weight[input_ids].to(self.dtype)  # a gather: any table dtype

    def encode_image(self, image: Tensor, raster_order: bool = True, device: torch.device | None = None
                     ) -> tuple[Tensor, tuple[int, int, int]]:
        """One IMAGE ([B, H, W, C], its first picture) -> (tokens ``[n, hidden]``, patch grid),
        preprocessed on ``device`` (default: where the final norm's weight is)."""
        if self.visual is None:
            raise ValueError("this Qwen2.5-VL file has no vision tower (no 'visual.' keys); "
                             "Fix: use the full qwen_2.5_vl_7b text encoder file for image inputs")
        patches, grid = preprocess_image(image.to(device or self.model.norm.weight.device), self.visual.config)
        return self.visual(patches, [grid], raster_order=raster_order, dtype=self.dtype), grid

    def splice(self, input_ids: Tensor, images: Sequence[tuple[Tensor, tuple[int, int, int]]]
               ) -> tuple[Tensor, Tensor]:
        """Embeddings with each ``<|image_pad|>`` replaced by an image's tokens, and their positions.

        ``input_ids`` is one prompt (``[1, N]``); ``images`` holds (tokens, grid) per image in order
        (more pads than images: the extra pads stay text tokens, as in ComfyUI).  Returns embeds
        ``[1, N', hidden]`` and multimodal position ids ``[3, 1, N']``.
        """
        ids = input_ids[0]
        text = self.embed(ids[None])[0]
        parts, pos, at, nxt = [], [], 0, 0
        pads = (ids == self.config.image_token_id).nonzero().flatten().tolist()
        m = 2 if self.visual is None else self.visual.config.spatial_merge_size
        for where, (tokens, (_, gh, gw)) in zip(pads, images, strict=False):
            parts.append(text[at:where])
            pos.append(torch.arange(nxt, nxt + where - at, device=ids.device).expand(3, -1))
            nxt += where - at
            h, w = gh // m, gw // m
            rows = torch.arange(h, device=ids.device)[:, None].expand(h, w).reshape(-1)
            cols = torch.arange(w, device=ids.device)[None, :].expand(h, w).reshape(-1)
            pos.append(torch.stack((torch.zeros_like(rows), rows, cols)) + nxt)
            parts.append(tokens.to(text.dtype))
            nxt += max(h, w)
            at = where + 1
        parts.append(text[at:])
        pos.append(torch.arange(nxt, nxt + len(ids) - at, device=ids.device).expand(3, -1))
        return torch.cat(parts)[None], torch.cat(pos, dim=1)[:, None]

    def _rope(self, position_ids: Tensor) -> tuple[Tensor, Tensor]:
        """cos, sin ``[B, N, head_dim]`` of multimodal positions ``[3, B, N]``."""
        c = self.config
        d = c.head_dim
        inv = 1.0 / (c.rope_theta ** (torch.arange(0, d, 2, device=position_ids.device).float() / d))
        freqs = position_ids[..., None].float() * inv  # [3, B, N, D/2]
        chunks = freqs.split(list(c.mrope_section), dim=-1)
        freqs = torch.cat([chunk[i % 3] for i, chunk in enumerate(chunks)], dim=-1)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()

    # -- the forward pass --------------------------------------------------------------------
    def forward_embeds(self, embeds: Tensor, position_ids: Tensor | None = None,
                       attention_mask: Tensor | None = None, layer: int | None = None) -> Tensor:
        """The decoder on embeddings ``[B, N, hidden]`` at ``position_ids`` ([3, B, N] or None)."""
        body = self.model
        x = embeds.to(self.dtype)
        b, n = x.shape[:2]
        if position_ids is None:
            position_ids = torch.arange(n, device=x.device).expand(3, b, n)
        cos, sin = self._rope(position_ids)
        cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)  # [B, 1, N, D]
        mask = None
        if attention_mask is not None:
            causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
            mask = causal[None, None] & attention_mask.bool()[:, None, None, :]
        count = len(body.layers)
        stop = count - 1 if layer is None else layer % count
        for i, block in enumerate(body.layers):
            x = block(x, cos, sin, mask)
            if i == stop:
                break
        return body.norm(x) if layer is None else x

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, layer: int | None = None,
                images: Sequence[Tensor] = ()) -> Tensor:
        if not images:
            return self.forward_embeds(self.embed(input_ids), None, attention_mask, layer)
        if input_ids.shape[0] != 1:
            raise ValueError(f"images go with one prompt at a time; received a batch of {input_ids.shape[0]}")
        encoded = [self.encode_image(img, device=input_ids.device) for img in images]
        embeds, positions = self.splice(input_ids, encoded)
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("a padding mask with images is not supported (one prompt needs no padding)")
        return self.forward_embeds(embeds, positions, None, layer)
