"""Flux ControlNet files: which layout a file is in, and its tensors in the Flux transformer's names.

What ComfyUI's ``comfy/controlnet.py: load_controlnet_state_dict`` (Comfy-Org/ComfyUI a125cd8)
recognises as a Flux ControlNet, in our words:

- XLabs (``flux-*-controlnet*.safetensors``): ``controlnet_blocks.0.weight`` beside BFL-named
  blocks (``double_blocks.0.img_attn.norm.key_norm.scale``), an ``input_hint_block``;
- Mistoline: ``controlnet_blocks.0.linear.weight``, ``single_controlnet_blocks.*`` (renamed to
  ``controlnet_single_blocks.*``), an ``input_cond_block``;
- InstantX / diffusers ``FluxControlNetModel`` (Union Pro, AliMama inpainting):
  ``controlnet_blocks.0.weight`` with ``controlnet_x_embedder.weight`` and diffusers-named blocks,
  renamed to BFL names (fused q/k/v, ``controlnet_x_embedder`` -> ``pos_embed_input``);
  ``controlnet_mode_embedder`` marks a union net, a 17-channel latent input the inpainting net.

SD3 / SD3.5, HunyuanDiT and Qwen-Image ControlNets are recognised and refused: those families are
not supported yet.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from comfy_notebook.errors import UnsupportedModelError
from comfy_notebook.models.flux import FluxConfig, rope_axes

__all__ = ["describe_flux_control", "flux_control_to_diffusers", "is_flux_control", "read_flux_control"]

KIND = "dit_controlnet"


def _count(sd: Mapping[str, Any], prefix: str) -> int:
    rx = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for k in sd if (m := rx.match(k))})


def _refuse_other_dit(sd: Mapping[str, Any]) -> None:
    if "after_proj_list.18.bias" in sd:
        what = "a HunyuanDiT ControlNet"
    elif "pos_embed_input.proj.weight" in sd:
        what = "an SD3 / SD3.5 ControlNet"
    elif "transformer_blocks.0.img_mlp.net.0.proj.weight" in sd:
        what = "a Qwen-Image ControlNet"
    else:
        return
    raise UnsupportedModelError(
        f"this file is {what}; that model family is not supported yet (ControlNets run for SD1, SD2, "
        "SDXL and Flux). Fix: use a ControlNet made for one of those families")


def is_flux_control(sd: Mapping[str, Any]) -> bool:
    """True when ``sd`` holds a Flux ControlNet in any of the three layouts (other DiT nets raise)."""
    _refuse_other_dit(sd)
    if "controlnet_blocks.0.linear.weight" in sd:
        return True
    return "controlnet_blocks.0.weight" in sd and (
        "double_blocks.0.img_attn.norm.key_norm.scale" in sd or "controlnet_x_embedder.weight" in sd)


def _table(hidden: int, mlp: int, depth: int, single: int) -> dict[str, tuple[str, int | None]]:
    """diffusers key -> (BFL key, row offset or None) for a whole Flux (ControlNet) state dict."""
    from comfy_notebook.families.flux_lora import diffusers_to_flux

    head = 2  # any valid head split: the table only needs widths and block counts
    config = FluxConfig(hidden_size=hidden, num_heads=head, axes_dim=rope_axes(hidden // head),
                        mlp_ratio=mlp / hidden, depth=depth, depth_single_blocks=single)
    out: dict[str, tuple[str, int | None]] = {}
    for module, (target, offset, _rows) in diffusers_to_flux(config).items():
        for leaf in ("weight", "bias"):
            out[f"{module}.{leaf}"] = (f"{target}.{leaf}", offset)
    norms = {"norm_q": "img_attn.norm.query_norm", "norm_k": "img_attn.norm.key_norm",
             "norm_added_q": "txt_attn.norm.query_norm", "norm_added_k": "txt_attn.norm.key_norm"}
    for i in range(depth):
        for d, b in norms.items():
            out[f"transformer_blocks.{i}.attn.{d}.weight"] = (f"double_blocks.{i}.{b}.scale", None)
    for i in range(single):
        for d, b in (("norm_q", "norm.query_norm"), ("norm_k", "norm.key_norm")):
            out[f"single_transformer_blocks.{i}.attn.{d}.weight"] = (f"single_blocks.{i}.{b}.scale", None)
    for leaf in ("weight", "bias"):
        out[f"controlnet_x_embedder.{leaf}"] = (f"pos_embed_input.{leaf}", None)
    return out


def _sizes(sd: Mapping[str, Any]) -> tuple[int, int, int, int]:
    hidden = int(sd["x_embedder.weight"].shape[0])
    depth, single = _count(sd, "transformer_blocks."), _count(sd, "single_transformer_blocks.")
    if depth:
        mlp = int(sd["transformer_blocks.0.ff.net.0.proj.weight"].shape[0])
    elif single:
        mlp = int(sd["single_transformer_blocks.0.proj_mlp.weight"].shape[0])
    else:
        mlp = 4 * hidden
    return hidden, mlp, depth, single


_KEEP = ("controlnet_blocks.", "controlnet_single_blocks.", "controlnet_mode_embedder.")


def _from_diffusers(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    table = _table(*_sizes(sd))
    parts: dict[str, list[tuple[int, Tensor]]] = {}
    out: dict[str, Tensor] = {}
    unknown = []
    for key, value in sd.items():
        if key in table:
            target, offset = table[key]
            if offset is None:
                out[target] = value
            else:
                parts.setdefault(target, []).append((offset, value))
        elif key.startswith(_KEEP):
            out[key] = value
        else:
            unknown.append(key)
    if unknown:
        raise UnsupportedModelError(
            f"diffusers Flux ControlNet with {len(unknown)} keys outside FluxControlNetModel's layout "
            f"({', '.join(sorted(unknown)[:6])}). Fix: use an InstantX / diffusers FluxControlNetModel file")
    for target, pieces in parts.items():  # fused q, k, v (and the single blocks' MLP input)
        out[target] = torch.cat([t for _, t in sorted(pieces, key=lambda p: p[0])], dim=0)
    return out


def read_flux_control(sd: Mapping[str, Tensor]) -> tuple[str, dict[str, Tensor]] | None:
    """``("dit_controlnet", tensors in BFL names)`` for a Flux ControlNet file, else None."""
    if not is_flux_control(sd):
        return None
    if "controlnet_blocks.0.linear.weight" in sd:  # Mistoline
        return KIND, {("controlnet_single_blocks." + k[len("single_controlnet_blocks."):])
                      if k.startswith("single_controlnet_blocks.") else k: v for k, v in sd.items()}
    if "controlnet_x_embedder.weight" in sd and "double_blocks.0.img_attn.norm.key_norm.scale" not in sd:
        return KIND, _from_diffusers(sd)
    return KIND, dict(sd)  # XLabs: BFL names already


def describe_flux_control(tensors: Mapping[str, Tensor], latent_format: Any) -> Any:
    """The :class:`~comfy_notebook.models.controlnet_flux.FluxControlNetConfig` of converted tensors."""
    from comfy_notebook.models.controlnet_flux import FluxControlNetConfig

    if "input_cond_block.encoder.0.weight" in tensors:
        kind = "mistoline"
    elif "input_hint_block.0.weight" in tensors:
        kind = "xlabs"
    else:
        kind = "instantx"
    config = FluxControlNetConfig.from_state_dict(tensors, kind)
    return replace(config, latent_format=latent_format if config.latent_input else None)


def flux_control_to_diffusers(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """BFL-named ControlNet tensors -> diffusers ``FluxControlNetModel`` keys (the inverse of the
    reader; used to write InstantX-layout test files)."""
    hidden = int(tensors["img_in.weight"].shape[0])
    depth, single = _count(tensors, "double_blocks."), _count(tensors, "single_blocks.")
    if depth:
        mlp = int(tensors["double_blocks.0.img_mlp.0.weight"].shape[0])
    else:
        mlp = int(tensors["single_blocks.0.linear1.weight"].shape[0]) - 3 * hidden if single else 4 * hidden
    table = _table(hidden, mlp, depth, single)
    rows: dict[str, list[tuple[int, str]]] = {}
    for dkey, (target, offset) in table.items():
        rows.setdefault(target, []).append((offset if offset is not None else -1, dkey))
    out: dict[str, Tensor] = {}
    for key, value in tensors.items():
        if key.startswith(_KEEP):
            out[key] = value
            continue
        if key not in rows:
            raise KeyError(f"{key} has no diffusers name")
        pieces = sorted(rows[key])
        if pieces[0][0] < 0:
            out[pieces[0][1]] = value
            continue
        bounds = [o for o, _ in pieces] + [value.shape[0]]
        for (start, dkey), end in zip(pieces, bounds[1:], strict=True):
            out[dkey] = value[start:end].clone()
    return out
