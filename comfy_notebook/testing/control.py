"""Random-weight conditioning models: ControlNet, T2I-Adapter, control-LoRA, GLIGEN, the T2I style
model and CLIP vision towers, in their released layouts.
"""

from __future__ import annotations

import os
import zlib
from typing import Any

import torch
from torch import Tensor

from comfy_notebook.models.detect import UNET_PREFIX
from comfy_notebook.models.unet import UNetConfig, UNetModel
from comfy_notebook.testing._core import _meta, _save, random_state_dict
from comfy_notebook.testing.presets import get_preset

__all__ = ["make_clip_vision", "make_control_lora", "make_controlnet", "make_gligen", "make_style_model",
           "make_t2i_adapter"]


def make_clip_vision(path: str | os.PathLike[str], seed: int = 0, *, config: Any = None,
                     layout: str = "hf", dtype: torch.dtype = torch.float32) -> str:
    """Write a random CLIP image tower (``models/clip_vision``): transformers names (``"hf"``, as
    ComfyUI's clip_vision files) or OpenCLIP's under ``visual.`` (``"openclip"``); tiny by default."""
    from comfy_notebook.models.clip_vision import CLIPVisionConfig, CLIPVisionModel
    from comfy_notebook.models.convert import hf_vision_to_openclip

    config = config or CLIPVisionConfig(width=64, layers=2, heads=16, intermediate=128, patch_size=7,
                                        image_size=28, projection_dim=32)
    sd = random_state_dict(_meta(CLIPVisionModel, config), seed, dtype, "clip_vision")
    if layout == "openclip":
        sd = {"visual." + k: v for k, v in hf_vision_to_openclip(sd).items()}
    _save(sd, path)
    return str(path)


def make_style_model(path: str | os.PathLike[str], width: int = 64, context_dim: int = 64, seed: int = 0) -> str:
    """Write a random T2I-Adapter style model (``models/style_models``) in the released layout
    (3 layers, 8 heads, 8 tokens) for image tokens ``width`` wide and a ``context_dim`` UNet."""
    from comfy_notebook.models.style_adapter import StyleAdapter, StyleAdapterConfig

    model = _meta(StyleAdapter, StyleAdapterConfig(width, context_dim, 8, 3, 8))
    sd = random_state_dict(model, seed, torch.float32, "style")
    sd["proj"] = sd["proj"] * 4  # text-sized tokens
    _save(sd, path)
    return str(path)


def make_gligen(path: str | os.PathLike[str], preset: str = "sd1-tiny", seed: int = 0, *,
                dtype: torch.dtype = torch.float32) -> str:
    """Write a random GLIGEN (text-box) file for the UNet of ``preset``, in the released layout:
    ``position_net.*`` (phrases as wide as the text encoder's pooled output) and a
    ``<block>.fuser.*`` per transformer block; the gates are opened (tanh(1)) so the boxes show."""
    from comfy_notebook.models.gligen import GLIGEN
    from comfy_notebook.models.layers import BasicTransformerBlock

    p = get_preset(preset)
    width = next(iter(p.encoders.values()))[2].width
    unet = _meta(UNetModel, p.unet)
    fusers = {name: (int(m.attn1.to_q.weight.shape[1]), width) for name, m in unet.named_modules()
              if isinstance(m, BasicTransformerBlock)}
    with torch.device("meta"):
        model = GLIGEN(width, width, fusers)
    sd = random_state_dict(model, seed, dtype, "gligen")
    out: dict[str, Tensor] = {}
    for key, t in sd.items():
        if key.startswith("fusers."):
            i, leaf = key[len("fusers."):].split(".", 1)
            key = f"{model.blocks[int(i)]}.fuser.{leaf}"
            if leaf.startswith("alpha_"):
                t = torch.ones((), dtype=dtype)
        out[key] = t
    _save(out, path)
    return str(path)


def _unet_config_of(checkpoint_path: str | os.PathLike[str]) -> UNetConfig:
    from comfy_notebook.families import detect
    from comfy_notebook.runtime.loading import open_state_dict

    info = detect(open_state_dict(checkpoint_path), source=os.fspath(checkpoint_path))
    if info.unet is None:
        raise ValueError(f"{checkpoint_path} has no UNet to build a control model for")
    return info.unet


def make_controlnet(
    path: str | os.PathLike[str], checkpoint_path: str | os.PathLike[str], *, layout: str = "original",
    seed: int = 0, hint_channels: int = 3, dtype: torch.dtype = torch.float32, difference: bool = False,
    union_types: int | None = None,
) -> str:
    """Write a random ControlNet for the UNet of the checkpoint at ``checkpoint_path``.

    Parameters
    ----------
    layout:
        ``"original"``: keys ``control_model.*`` (lllyasviel's files); ``"bare"``: the same keys
        without the prefix; ``"diffusers"``: diffusers ``ControlNetModel`` keys
        (``controlnet_cond_embedding.*``, ``controlnet_down_blocks.*``, ``down_blocks.*``).
    difference:
        Write a "diff" ControlNet (original layout): weights minus the checkpoint's UNet weights
        where both have the key, plus a ``difference`` marker, as the old diff files hold.
    union_types:
        Write a union (ControlNet++) net knowing this many control types (xinsir's files are in
        the diffusers layout, whose attention is ``attn.in_proj_weight`` / ``in_proj_bias``).

    Returns
    -------
    str
        The path written.  Same seed, checkpoint and options give the same file.
    """
    from comfy_notebook.models.controlnet import ControlNetConfig, ControlNetModel

    if layout not in ("original", "bare", "diffusers"):
        raise ValueError(f"unknown ControlNet layout {layout!r}; expected 'original', 'bare' or 'diffusers'")
    config = ControlNetConfig(_unet_config_of(checkpoint_path), hint_channels=hint_channels,
                              union_types=union_types)
    sd = random_state_dict(_meta(ControlNetModel, config), seed, dtype, "controlnet")
    if difference:
        from comfy_notebook.runtime.loading import open_state_dict

        base = open_state_dict(checkpoint_path)
        sd = {k: (v - base[UNET_PREFIX + k].to(v.dtype)) if UNET_PREFIX + k in base else v for k, v in sd.items()}
    if layout == "diffusers":
        from comfy_notebook.runtime.control_files import diffusers_controlnet_modules
        from comfy_notebook.runtime.lora import UNetLayout

        to_diffusers = {ldm: diff for diff, ldm in diffusers_controlnet_modules(UNetLayout.from_config(config.unet)).items()}
        out = {}
        for k, v in sd.items():
            module, _, leaf = k.rpartition(".")
            if module in to_diffusers:
                out[f"{to_diffusers[module]}.{leaf}"] = v
            else:  # union parts keep their names; the attention is packed as nn.MultiheadAttention
                out[k.replace(".attn.in_proj.", ".attn.in_proj_")] = v
        sd = out
    elif layout == "original":
        sd = {"control_model." + k: v for k, v in sd.items()}
    if difference:
        sd["difference"] = torch.tensor(1.0)
    _save(sd, path)
    return str(path)


def make_t2i_adapter(
    path: str | os.PathLike[str], checkpoint_path: str | os.PathLike[str], *, kind: str = "full",
    layout: str = "original", input_channels: int = 3, seed: int = 0, dtype: torch.dtype = torch.float32,
) -> str:
    """Write a random T2I-Adapter whose levels match the checkpoint's UNet widths.

    ``kind`` is ``"full"`` (TencentARC's t2iadapter_*_sd14v1 layout: 1x1 ``in_conv``/``block2``,
    average-pool downsampling) or ``"light"``; ``layout`` ``"original"`` (``conv_in``, ``body.N.*``)
    or ``"diffusers"`` (``adapter.body.N.resnets.M.*``).  The features land after the last
    ResBlock of each level only when the UNet has 2 ResBlocks per level, as SD1/SD2 do.
    Returns the path.
    """
    from comfy_notebook.models.t2i_adapter import AdapterConfig, T2IAdapter

    if kind not in ("full", "light") or layout not in ("original", "diffusers"):
        raise ValueError(f"unknown adapter kind/layout {kind!r}/{layout!r}; expected full|light and original|diffusers")
    c = _unet_config_of(checkpoint_path).model_channels
    config = AdapterConfig(kind=kind, cin=input_channels * 64, channels=(c, 2 * c, 4 * c, 4 * c),
                           nums_rb=2 if kind == "full" else 4)
    sd = random_state_dict(_meta(T2IAdapter, config), seed, dtype, "t2i")
    if layout == "diffusers":
        out = {}
        for k, v in sd.items():
            parts = k.split(".")
            if parts[0] == "body" and kind == "full":
                i = int(parts[1])
                level, block = divmod(i, config.nums_rb)
                if parts[2] == "in_conv":
                    parts = ["body", str(level), *parts[2:]]
                else:
                    parts = ["body", str(level), "resnets", str(block), *parts[2:]]
            elif parts[0] == "body" and parts[2] == "body":
                parts = ["body", parts[1], "resnets", *parts[3:]]
            out["adapter." + ".".join(parts)] = v
        sd = out
    _save(sd, path)
    return str(path)


def make_control_lora(
    path: str | os.PathLike[str], checkpoint_path: str | os.PathLike[str], *, rank: int = 4, seed: int = 0,
    hint_channels: int = 3, dtype: torch.dtype = torch.float32,
) -> str:
    """Write a random control-LoRA for the checkpoint's UNet, in Stability's control-lora layout.

    Keys: ``lora_controlnet`` (the marker), the hint block, zero convs and every 1-d weight
    (norms, biases) of the ControlNet in full, and ``<module>.up`` [out, rank(, 1, 1)] /
    ``<module>.down`` [rank, in(, kh, kw)] for each matrix / conv kernel of the UNet encoder the
    ControlNet copies.  Returns the path.
    """
    from comfy_notebook.models.controlnet import ControlNetConfig, ControlNetModel

    config = ControlNetConfig(_unet_config_of(checkpoint_path), hint_channels=hint_channels)
    full = random_state_dict(_meta(ControlNetModel, config), seed, dtype, "controlnet")
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(b"control-lora"))
    out: dict[str, Tensor] = {"lora_controlnet": torch.tensor([])}
    for key, value in full.items():
        own = key.startswith(("input_hint_block.", "zero_convs.", "middle_block_out."))
        if own or value.dim() < 2:
            out[key] = value
            continue
        module = key.removesuffix(".weight")
        o, i = value.shape[0], value.shape[1]
        kernel = tuple(value.shape[2:])
        out[module + ".up"] = (torch.randn((o, rank, *(1 for _ in kernel)), generator=gen) * rank**-0.5).to(dtype)
        down = torch.randn((rank, i, *kernel), generator=gen) * 0.1 * value[0].numel() ** -0.5
        out[module + ".down"] = down.to(dtype)
    _save(out, path)
    return str(path)
