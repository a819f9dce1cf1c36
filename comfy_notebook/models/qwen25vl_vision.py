"""The vision tower of Qwen2.5-VL (what Qwen-Image-Edit reads its input images with).

Parameter names are those under ``visual.`` in ComfyUI's ``text_encoders/qwen_2.5_vl_7b*``
files (the Hugging Face names): ``patch_embed.proj`` (a Conv3d weight ``[C, 3, 2, 14, 14]``),
``blocks.N.{norm1,norm2}``, ``blocks.N.attn.{qkv,proj}``, ``blocks.N.mlp.{gate,up,down}_proj``,
``merger.ln_q``, ``merger.mlp.{0,2}``.  Reference: transformers ``models/qwen2_5_vl`` (5.23.0),
which the tests compare against, and ComfyUI ``comfy/text_encoders/qwen_vl.py`` (commit
a125cd84), whose image preprocessing :func:`preprocess_image` follows.

The tower cuts the image into 14-pixel patches (two identical frames: the patch is 2 x 14 x 14),
embeds them, runs 32 pre-norm blocks with a 2-D rotary embedding (height and width halves of each
head) — window attention (112-pixel windows) except in the full-attention blocks 7, 15, 23, 31 —
and merges 2 x 2 patches into one token of the language model's width.

Token order: the blocks work in *window order* (the patches of one window next to each other).
transformers puts the merged tokens back in raster order, and so does ComfyUI since
comfyanonymous/ComfyUI@0ac74268 ("present in the HF implementation"); ComfyUI releases before it
(e.g. a125cd84) conditioned Qwen-Image-Edit on the window-ordered tokens.  ``raster_order=False``
reproduces those older releases.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from comfy_notebook.models.qwen3 import RMSNorm

__all__ = ["VisionConfig", "VisionTower", "preprocess_image", "window_index"]

LinearFactory = Callable[..., nn.Module]

#: The normalisation of the Qwen2-VL image processor (CLIP's mean and std).
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class VisionConfig:
    """Sizes of the vision tower (hidden size, depth, patch sizes are read from a file's shapes)."""

    hidden_size: int = 1280
    depth: int = 32
    head_dim: int = 80
    intermediate_size: int = 3420
    out_hidden_size: int = 3584
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    window_size: int = 112
    fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
    in_channels: int = 3

    @property
    def num_heads(self) -> int:
        return self.hidden_size // self.head_dim

    @classmethod
    def tiny(cls) -> VisionConfig:
        """A test size: 4 blocks of width 64 (4 heads of 16), full attention in blocks 1 and 3."""
        return cls(hidden_size=64, depth=4, head_dim=16, intermediate_size=96, out_hidden_size=64,
                   fullatt_block_indexes=(1, 3))


def preprocess_image(image: Tensor, config: VisionConfig | None = None, *, min_pixels: int = 3136,
                     max_pixels: int = 12845056) -> tuple[Tensor, tuple[int, int, int]]:
    """An IMAGE (``[B, H, W, C]`` in 0..1) -> (patches ``[N, 3*2*14*14]``, grid ``(t, h, w)``).

    As ComfyUI's ``process_qwen2vl_images``: the first image of the batch, its first three
    channels, resized (bilinear, no antialias) to the nearest multiple of 28 pixels per side
    (rescaled to fit ``min_pixels``..``max_pixels``), normalised with CLIP's mean and std,
    duplicated as two frames and cut into patches in the merge-window order the tower expects.
    """
    c = config or VisionConfig()
    p, m, tp = c.patch_size, c.spatial_merge_size, c.temporal_patch_size
    img = image[0, :, :, :3].movedim(-1, 0).float()  # [3, H, W]
    height, width = int(img.shape[1]), int(img.shape[2])
    factor = p * m
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    img = F.interpolate(img[None], size=(h_bar, w_bar), mode="bilinear", align_corners=False)[0]
    mean = torch.tensor(IMAGE_MEAN, dtype=img.dtype, device=img.device)[:, None, None]
    std = torch.tensor(IMAGE_STD, dtype=img.dtype, device=img.device)[:, None, None]
    img = (img - mean) / std
    gh, gw = h_bar // p, w_bar // p
    frames = img[None].expand(tp, -1, -1, -1)  # [T, 3, H, W]
    patches = frames.reshape(tp, 3, gh // m, m, p, gw // m, m, p)
    patches = patches.permute(2, 5, 3, 6, 1, 0, 4, 7)  # [gh/m, gw/m, m, m, 3, T, p, p]
    return patches.reshape(gh * gw, 3 * tp * p * p), (1, gh, gw)


def window_index(grid: tuple[int, int, int], config: VisionConfig) -> tuple[Tensor, list[int]]:
    """(order of the merged tokens in window order, window lengths in patches) for one image."""
    t, h, w = grid
    m = config.spatial_merge_size
    size = config.window_size // m // config.patch_size  # merged tokens per window side
    gh, gw = h // m, w // m
    index = torch.arange(t * gh * gw).reshape(t, gh, gw)
    nh, nw = -(-gh // size), -(-gw // size)
    padded = F.pad(index, (0, nw * size - gw, 0, nh * size - gh), value=-1)
    padded = padded.reshape(t, nh, size, nw, size).permute(0, 1, 3, 2, 4).reshape(t, nh * nw, -1)
    lengths = (padded >= 0).sum(-1).reshape(-1)
    order = padded.reshape(-1)
    return order[order >= 0], [int(n) * m * m for n in lengths if n > 0]


def _segments(lengths: Sequence[int], device: torch.device) -> tuple[Tensor, Tensor]:
    """Index ``[S, L]`` into the sequence for segments of ``lengths`` (padded) and its validity."""
    starts = torch.tensor([0, *lengths[:-1]], device=device).cumsum(0)
    longest = max(lengths)
    pos = torch.arange(longest, device=device)
    valid = pos[None] < torch.tensor(list(lengths), device=device)[:, None]
    index = (starts[:, None] + pos[None]).clamp(max=sum(lengths) - 1)
    return index, valid


class _Attention(nn.Module):
    def __init__(self, c: VisionConfig, linear: LinearFactory) -> None:
        super().__init__()
        self.c = c
        self.qkv = linear(c.hidden_size, 3 * c.hidden_size, bias=True)
        self.proj = linear(c.hidden_size, c.hidden_size, bias=True)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, segments: tuple[Tensor, Tensor]) -> Tensor:
        n = x.shape[0]
        q, k, v = self.qkv(x).view(n, 3, self.c.num_heads, self.c.head_dim).unbind(1)  # [N, H, D]
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        index, valid = segments
        if index.shape[0] == 1:  # one segment: the whole sequence
            y = F.scaled_dot_product_attention(*(t.transpose(0, 1)[None] for t in (q, k, v)))
            y = y[0].transpose(0, 1)
        else:  # windows (or images) padded to one length, keys beyond a segment masked
            q, k, v = (t[index].transpose(1, 2) for t in (q, k, v))  # [S, H, L, D]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=valid[:, None, None, :])
            y = y.transpose(1, 2)[valid]  # segments are contiguous and in order
        return self.proj(y.reshape(n, -1))


def _rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    a, b = x.float().chunk(2, dim=-1)
    rot = torch.cat((-b, a), dim=-1)
    return (x.float() * cos + rot * sin).to(x.dtype)


class _MLP(nn.Module):
    def __init__(self, c: VisionConfig, linear: LinearFactory) -> None:
        super().__init__()
        self.gate_proj = linear(c.hidden_size, c.intermediate_size, bias=True)
        self.up_proj = linear(c.hidden_size, c.intermediate_size, bias=True)
        self.down_proj = linear(c.intermediate_size, c.hidden_size, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class _Block(nn.Module):
    def __init__(self, c: VisionConfig, linear: LinearFactory) -> None:
        super().__init__()
        self.norm1 = RMSNorm(c.hidden_size, 1e-6)
        self.norm2 = RMSNorm(c.hidden_size, 1e-6)
        self.attn = _Attention(c, linear)
        self.mlp = _MLP(c, linear)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, segments: tuple[Tensor, Tensor]) -> Tensor:
        x = x + self.attn(self.norm1(x), cos, sin, segments)
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    """The Conv3d with stride = kernel, computed as the matrix product it is (any weight dtype)."""

    def __init__(self, c: VisionConfig) -> None:
        super().__init__()
        self.proj = nn.Module()
        self.proj.weight = nn.Parameter(torch.empty(
            c.hidden_size, c.in_channels, c.temporal_patch_size, c.patch_size, c.patch_size))

    def forward(self, patches: Tensor) -> Tensor:
        w = self.proj.weight
        return F.linear(patches, w.reshape(w.shape[0], -1).to(patches.dtype))


class _Merger(nn.Module):
    def __init__(self, c: VisionConfig, linear: LinearFactory) -> None:
        super().__init__()
        width = self.width = c.hidden_size * c.spatial_merge_size ** 2
        self.ln_q = RMSNorm(c.hidden_size, 1e-6)
        self.mlp = nn.Sequential(linear(width, width, bias=True), nn.GELU(), linear(width, c.out_hidden_size, bias=True))

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(self.ln_q(x).reshape(-1, self.width))


class VisionTower(nn.Module):
    """``forward(patches [N, 1176], grids [(t, h, w), ...], raster_order=True, dtype=None) -> [N/4, out]``.

    ``patches`` holds the images' patches one image after the other (:func:`preprocess_image`),
    ``grids`` their patch grids.  The result has one token per 2 x 2 patches, per image in the
    same order, in raster order (transformers, ComfyUI) or window order (ComfyUI before 0ac74268).
    ``dtype`` is the activations' (default: the weights'; fp8 weights need it given).
    """

    def __init__(self, config: VisionConfig, linear: LinearFactory = nn.Linear) -> None:
        super().__init__()
        self.config = config
        self.patch_embed = _PatchEmbed(config)
        self.blocks = nn.ModuleList(_Block(config, linear) for _ in range(config.depth))
        self.merger = _Merger(config, linear)

    def _positions(self, grid: tuple[int, int, int], device: torch.device) -> Tensor:
        """(row, column) of every patch in merge-window order, ``[t*h*w, 2]``."""
        t, h, w = grid
        m = self.config.spatial_merge_size
        rows = torch.arange(h, device=device)[:, None].expand(h, w)
        cols = torch.arange(w, device=device)[None, :].expand(h, w)
        pos = [a.reshape(h // m, m, w // m, m).permute(0, 2, 1, 3).reshape(-1) for a in (rows, cols)]
        return torch.stack(pos, dim=-1).repeat(t, 1)

    def forward(self, patches: Tensor, grids: Sequence[tuple[int, int, int]], raster_order: bool = True,
                dtype: torch.dtype | None = None) -> Tensor:
        c = self.config
        unit = c.spatial_merge_size ** 2
        x = self.patch_embed(patches.to(dtype or self.merger.ln_q.weight.dtype))
        device = x.device
        orders, windows, base = [], [], 0
        for grid in grids:
            order, lengths = window_index(grid, c)
            orders.append(order.to(device) + base)
            windows += lengths
            base += grid[0] * grid[1] * grid[2] // unit
        order = torch.cat(orders)
        pos = torch.cat([self._positions(g, device) for g in grids])
        half = c.head_dim // 2
        inv = 1.0 / (10000.0 ** (torch.arange(0, half, 2, device=device, dtype=torch.float) / half))
        angles = (pos[..., None].float() * inv).flatten(1)  # [N, head_dim/2]: rows then columns
        angles = angles.view(-1, unit, half)[order].reshape(-1, half)
        angles = torch.cat((angles, angles), dim=-1)[:, None, :]  # [N, 1, head_dim]
        cos, sin = angles.cos(), angles.sin()
        x = x.view(-1, unit, x.shape[-1])[order].reshape(-1, x.shape[-1])
        full = _segments([g[0] * g[1] * g[2] for g in grids], device)
        window = _segments(windows, device)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, full if i in c.fullatt_block_indexes else window)
        y = self.merger(x)
        return y[torch.argsort(order)] if raster_order else y
