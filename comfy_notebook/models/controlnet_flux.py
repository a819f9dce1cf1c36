"""Flux ControlNets: a shortened copy of the Flux transformer whose blocks' image tokens steer it.

Three kinds of files, as ComfyUI's ``comfy/ldm/flux/controlnet.py`` builds them (Comfy-Org/ComfyUI
a125cd8; the net itself is XLabs-AI/x-flux's ``controlnet.py`` generalised):

- ``xlabs``: the hint image (0..1, mapped to -1..1) goes through ``input_hint_block`` (eight 3x3
  convs, three of stride 2: pixels -> latent size, 16 channels) and is patchified like the
  latent; residuals repeat *cyclically* over the main model's blocks (block i gets sample
  ``i mod n``);
- ``mistoline``: the same with a deeper ``input_cond_block`` and a SiLU after each residual
  linear (``controlnet_blocks.N.linear``);
- ``instantx`` (diffusers ``FluxControlNetModel`` files: InstantX, Shakker Union Pro, AliMama
  inpainting): the hint is a *latent* (the control image through the VAE, optionally with a mask
  channel) patchified straight into ``pos_embed_input``; residuals repeat *blockwise* (block i
  gets sample ``i // ceil(N / n)``); union nets prepend a learned control-mode token to the text.

The backbone's parameter names are the Flux transformer's (``img_in``, ``double_blocks.N`` ...),
so a converted diffusers file and an XLabs file load into the same module.  ``forward`` returns
:class:`~comfy_notebook.models.unet.ControlResiduals` with ``input`` = one residual per double
block of the main model and ``output`` = one per single block (shared tensors where a residual
repeats), as ComfyUI's ``{"input", "output"}`` dict; ``slots`` is the main model's
``(double, single)`` block count (Flux.1: 19, 38, ComfyUI's fixed numbers).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from comfy_notebook.models.flux import (
    DoubleStreamBlock,
    FluxConfig,
    MLPEmbedder,
    SingleStreamBlock,
    flux_rope,
    timestep_embedding,
)
from comfy_notebook.models.unet import ControlResiduals

__all__ = ["FluxControlNet", "FluxControlNetConfig", "expand_residuals"]

KINDS = ("xlabs", "mistoline", "instantx")
MAIN_SLOTS = (19, 38)  # Flux.1's double / single block counts (ComfyUI main_model_double/single)


@dataclass(frozen=True)
class FluxControlNetConfig:
    """Sizes of a Flux ControlNet.

    ``flux`` holds the backbone's sizes (its ``depth`` / ``depth_single_blocks`` are the net's own
    block counts); ``latent_channels`` the hint latent's channels for ``instantx`` (16, or 17
    with the inpainting mask); ``union_modes`` the control modes of a union net (0: none);
    ``latent_format`` (set by the family) how the VAE's hint latent becomes the model's.
    """

    flux: FluxConfig
    kind: str = "instantx"
    latent_channels: int = 16
    union_modes: int = 0
    dtypes: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float32)  # as the Flux transformer
    latent_format: Any = field(default=None, compare=False)  # the family's, for a latent hint

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown Flux ControlNet kind {self.kind!r}; expected one of {KINDS}")

    @property
    def context_dim(self) -> int:
        """Width of the text tokens it attends to (T5-XXL: 4096)."""
        return self.flux.context_in_dim

    @property
    def latent_input(self) -> bool:
        """True when the hint is a VAE latent (InstantX), False for a pixel image (XLabs, Mistoline)."""
        return self.kind == "instantx"

    @property
    def concat_mask(self) -> bool:
        """True for inpainting nets: the hint latent carries a mask channel (ComfyUI: 17 channels)."""
        return self.kind == "instantx" and self.latent_channels == 17

    def residual_elements(self, h: int, w: int) -> int:
        """Values of one image's residuals on an [h, w] latent: one [tokens, hidden] sample per
        own block (repeated slots share them)."""
        p = self.flux.patch_size
        tokens = -(-h // p) * -(-w // p)
        return (self.flux.depth + self.flux.depth_single_blocks) * tokens * self.flux.hidden_size

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, Tensor], kind: str) -> FluxControlNetConfig:
        """Sizes from a state dict in the backbone's (Flux) names."""
        flux = FluxConfig.from_state_dict(sd)
        p2 = flux.patch_size * flux.patch_size
        latent = int(sd["pos_embed_input.weight"].shape[1]) // p2 if kind == "instantx" else flux.in_channels
        modes = int(sd["controlnet_mode_embedder.weight"].shape[0]) if "controlnet_mode_embedder.weight" in sd else 0
        return cls(flux=flux, kind=kind, latent_channels=latent, union_modes=modes)


def _convs(spec: Sequence[tuple[int, int, int]], first_in: int = 3) -> nn.Sequential:
    """Convs (out, kernel, stride) with SiLU between them; 16 channels after the first."""
    layers: list[nn.Module] = []
    ch = first_in
    for n, (out, k, stride) in enumerate(spec):
        if n:
            layers.append(nn.SiLU())
        layers.append(nn.Conv2d(ch, out, k, stride=stride, padding=k // 2))
        ch = out
    return nn.Sequential(*layers)


# XLabs: conv, conv, conv/2, conv, conv/2, conv, conv/2, conv (all 3x3, 16 channels)
_XLABS_HINT = ((16, 3, 1), (16, 3, 1), (16, 3, 2), (16, 3, 1), (16, 3, 2), (16, 3, 1), (16, 3, 2), (16, 3, 1))
# Mistoline: 1x1 convs after the first conv and before the last
_MISTOLINE_HINT = ((16, 3, 1), (16, 1, 1), (16, 3, 1), (16, 3, 2), (16, 3, 1), (16, 3, 2), (16, 3, 1), (16, 3, 2),
                   (16, 1, 1), (16, 3, 1))


class _MistolineCond(nn.Module):
    """Mistoline's hint encoder (key ``input_cond_block.encoder.*``)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = _convs(_MISTOLINE_HINT)

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder(x)


class _LinearSiLU(nn.Module):
    """Mistoline's residual head: ``silu(linear(x))`` (key ``linear``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.silu(self.linear(x))


def expand_residuals(samples: Sequence[Tensor], slots: int, cyclic: bool) -> tuple[Tensor, ...]:
    """``slots`` residuals from ``n`` samples: cyclic (``i mod n``, XLabs) or blockwise
    (``i // ceil(slots / n)``, InstantX); repeated entries are the same tensor."""
    n = len(samples)
    if n == 0:
        return ()
    if cyclic:
        return tuple(samples[i % n] for i in range(slots))
    per = math.ceil(slots / n)
    return tuple(samples[i // per] for i in range(slots))


def _patchify(x: Tensor, p: int) -> Tensor:
    """[B, C, H, W] -> [B, (H/p)(W/p), C p p] (channels outermost, as ``b c (h ph) (w pw) -> b (h w) (c ph pw)``)."""
    b, c, h, w = x.shape
    return x.view(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // p) * (w // p), c * p * p)


def _pad(x: Tensor, p: int) -> Tensor:
    h, w = x.shape[-2:]
    ph, pw = (p - h % p) % p, (p - w % p) % p
    return F.pad(x, (0, pw, 0, ph), mode="circular") if ph or pw else x


class FluxControlNet(nn.Module):
    """``forward(x, hint, timesteps, context, y, guidance, control_type, slots) -> ControlResiduals``."""

    def __init__(self, config: FluxControlNetConfig) -> None:
        super().__init__()
        self.control_config = config
        c = config.flux
        self.config = c
        hidden, p2 = c.hidden_size, c.patch_size * c.patch_size
        self.img_in = nn.Linear(c.in_channels * p2, hidden)
        self.time_in = MLPEmbedder(256, hidden, nn.Linear)
        self.vector_in = MLPEmbedder(c.vec_in_dim, hidden, nn.Linear)
        if c.guidance_embed:
            self.guidance_in = MLPEmbedder(256, hidden, nn.Linear)
        self.txt_in = nn.Linear(c.context_in_dim, hidden)
        self.double_blocks = nn.ModuleList(
            DoubleStreamBlock(hidden, c.num_heads, c.mlp_ratio, c.qkv_bias, nn.Linear) for _ in range(c.depth))
        self.single_blocks = nn.ModuleList(
            SingleStreamBlock(hidden, c.num_heads, c.mlp_ratio, nn.Linear) for _ in range(c.depth_single_blocks))

        def head() -> nn.Module:
            return _LinearSiLU(hidden) if config.kind == "mistoline" else nn.Linear(hidden, hidden)

        self.controlnet_blocks = nn.ModuleList(head() for _ in range(c.depth))
        self.controlnet_single_blocks = nn.ModuleList(head() for _ in range(c.depth_single_blocks))
        if config.union_modes:
            self.controlnet_mode_embedder = nn.Embedding(config.union_modes, hidden)
        self.pos_embed_input = nn.Linear(config.latent_channels * p2 if config.latent_input else c.in_channels * p2,
                                         hidden)
        if config.kind == "xlabs":
            self.input_hint_block = _convs(_XLABS_HINT)
        elif config.kind == "mistoline":
            self.input_cond_block = _MistolineCond()

    @property
    def context_dim(self) -> int:
        return self.control_config.context_dim

    def _hint_tokens(self, hint: Tensor, dtype: torch.dtype) -> Tensor:
        p = self.config.patch_size
        hint = hint.to(dtype)
        if self.control_config.latent_input:
            return _patchify(_pad(hint, p), p)
        hint = hint * 2.0 - 1.0
        block = self.input_cond_block if self.control_config.kind == "mistoline" else self.input_hint_block
        return _patchify(block(hint), p)

    def check_control_type(self, control_type: Sequence[int]) -> None:
        """Refuse a mode a union net does not know, or several at once."""
        n = self.control_config.union_modes
        if not control_type:
            return
        if not n:
            return  # ComfyUI ignores the type for nets without modes
        bad = [t for t in control_type if not 0 <= t < n]
        if bad or len(control_type) > 1:
            raise ValueError(
                f"control type {list(control_type)} does not fit this union Flux ControlNet, which knows "
                f"{n} modes (0..{n - 1}) and takes one per application. Fix: pick another type in "
                "SetUnionControlNetType (ComfyUI passes its index straight to the net)")

    def forward_tokens(self, img: Tensor, img_ids: Tensor, cond: Tensor, txt: Tensor, txt_ids: Tensor,
                       timesteps: Tensor, y: Tensor, guidance: Tensor | None = None,
                       control_type: Sequence[int] = ()) -> tuple[list[Tensor], list[Tensor]]:
        """Token-level forward: ``(double samples, single samples)``, one per own block, [B, Li, hidden].

        img [B, Li, C p p], cond [B, Li, Cc p p] (the patchified hint), txt [B, Lt, Dctx],
        ids [B, L, 3], timesteps / guidance [B] (sigma-scale, x1000 inside), y [B, Dvec].
        """
        dtype = img.dtype
        c = self.config
        img = self.img_in(img) + self.pos_embed_input(cond.to(dtype))
        vec = self.time_in(timestep_embedding(timesteps).to(dtype))
        if c.guidance_embed and guidance is not None:
            vec = vec + self.guidance_in(timestep_embedding(guidance).to(dtype))
        vec = vec + self.vector_in(y[:, : c.vec_in_dim].to(dtype))
        txt = self.txt_in(txt.to(dtype))
        if self.control_config.union_modes and control_type:
            self.check_control_type(control_type)
            idx = torch.tensor(list(control_type), device=img.device)
            mode = self.controlnet_mode_embedder(idx).to(dtype)[None].expand(txt.shape[0], -1, -1)
            txt = torch.cat([mode, txt], dim=1)
            txt_ids = torch.cat([txt_ids[:, :1], txt_ids], dim=1)
        pe = flux_rope(torch.cat((txt_ids, img_ids), dim=1), c.axes_dim, c.theta)
        double: list[Tensor] = []
        for block, head in zip(self.double_blocks, self.controlnet_blocks, strict=True):
            img, txt = block(img, txt, vec, pe)
            double.append(head(img))
        x = torch.cat((txt, img), 1)
        single: list[Tensor] = []
        for sblock, shead in zip(self.single_blocks, self.controlnet_single_blocks, strict=True):
            x = sblock(x, vec, pe)
            single.append(shead(x[:, txt.shape[1]:]))
        return double, single

    def forward(self, x: Tensor, hint: Tensor, timesteps: Tensor, context: Tensor, y: Tensor | None = None,
                guidance: Tensor | None = None, control_type: Sequence[int] = (),
                slots: tuple[int, int] = MAIN_SLOTS) -> ControlResiduals:
        """Residuals for the main Flux transformer.

        Parameters
        ----------
        x:
            The main model's input latent [B, C, H, W] (padded circularly to the patch size).
        hint:
            ``xlabs`` / ``mistoline``: the control image [B, 3, 8H, 8W] in 0..1; ``instantx``: the
            control latent [B, latent_channels, H, W] (model scale, mask channel last).
        timesteps, context, y, guidance:
            As the main model's (timestep = sigma for Flux).
        control_type:
            Union nets: the mode (``SetUnionControlNetType``), or none.
        slots:
            The main model's (double, single) block counts.
        """
        b, _, h, w = x.shape
        p = self.config.patch_size
        dtype = next(self.img_in.parameters()).dtype
        img = _patchify(_pad(x.to(dtype), p), p)
        cond = self._hint_tokens(hint, dtype)
        hl, wl = (h + p - 1) // p, (w + p - 1) // p
        img_ids = torch.zeros(hl, wl, 3, device=x.device, dtype=torch.float32)
        img_ids[..., 1] = torch.arange(hl, device=x.device, dtype=torch.float32)[:, None]
        img_ids[..., 2] = torch.arange(wl, device=x.device, dtype=torch.float32)[None, :]
        img_ids = img_ids.view(1, hl * wl, 3).expand(b, -1, -1)
        txt_ids = torch.zeros(b, context.shape[1], 3, device=x.device, dtype=torch.float32)
        if y is None:
            y = torch.zeros(b, self.config.vec_in_dim, device=x.device, dtype=dtype)
        double, single = self.forward_tokens(img, img_ids, cond, context, txt_ids, timesteps.float(), y,
                                             None if guidance is None else guidance.float(), control_type)
        cyclic = not self.control_config.latent_input
        return ControlResiduals(input=expand_residuals(double, slots[0], cyclic),
                                output=expand_residuals(single, slots[1], cyclic))
