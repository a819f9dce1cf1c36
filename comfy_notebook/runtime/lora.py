"""LoRA files: reading them and mapping their keys onto our (LDM-named) parameters.

Supported key styles, for the UNet and the CLIP text encoders (which kohya prefix names which
encoder is the family's: ``Family.lora_te_prefixes``):

- kohya: ``lora_unet_<diffusers module, dots as _>`` / ``lora_te_<transformers module>`` with
  ``.lora_down.weight``, ``.lora_up.weight``, ``.alpha`` (conv LoRA included); kohya names built
  from LDM module names (``lora_unet_input_blocks_1_1_proj_in``) too;
- ComfyUI / LDM: ``diffusion_model.<ldm module>.lora_down.weight`` ...;
- diffusers / PEFT: ``unet.<diffusers module>.lora_A.weight`` / ``.lora_B.weight`` (and the older
  ``.lora.down.weight`` / ``.lora.up.weight``), ``text_encoder.<module>...``;
- full differences: ``<module>.diff`` (weight) and ``<module>.diff_b`` (bias).

The diffusers -> LDM UNet table is derived from the block structure (facts from ComfyUI's
``comfy/utils.py: unet_to_diffusers``; verified in tests against diffusers'
``convert_ldm_unet_checkpoint``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from comfy_notebook.errors import ModelLoadError
from comfy_notebook.runtime.patches import DiffPatch, LoraPatch, Patch

__all__ = [
    "UNetLayout",
    "load_lora_file",
    "lora_patches",
    "unet_diffusers_to_ldm",
]

# diffusers ResnetBlock2D leaf -> LDM ResBlock leaf
_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
# leaves of one BasicTransformerBlock (same names in diffusers and LDM)
_TBLOCK = (
    *(f"{a}.{b}" for a in ("attn1", "attn2") for b in ("to_q", "to_k", "to_v", "to_out.0")),
    "ff.net.0.proj", "ff.net.2", "norm1", "norm2", "norm3",
)

# suffix -> role in a LoRA entry
_SUFFIXES = (
    (".lora_down.weight", "down"), (".lora_up.weight", "up"), (".alpha", "alpha"),
    (".lora_A.weight", "down"), (".lora_B.weight", "up"),
    (".lora.down.weight", "down"), (".lora.up.weight", "up"),
    (".diff", "diff"), (".diff_b", "diff_b"),
)


@dataclass(frozen=True)
class UNetLayout:
    """The block structure that decides the diffusers <-> LDM names of a UNet."""

    levels: int = 4
    num_res_blocks: int = 2
    depth: tuple[int, ...] = (1, 1, 1, 0)  # transformer blocks per level, input side
    depth_output: tuple[int, ...] = (1, 1, 1, 0)
    depth_middle: int = 1

    @classmethod
    def from_config(cls, config: Any) -> UNetLayout:
        """From a :class:`comfy_notebook.models.unet.UNetConfig` (duck-typed)."""
        return cls(len(config.channel_mult), config.num_res_blocks,
                   tuple(config.transformer_depth), tuple(config.depth_output),
                   config.depth_middle)


def _transformer(dprefix: str, lprefix: str, depth: int) -> dict[str, str]:
    out = {f"{dprefix}.{leaf}": f"{lprefix}.{leaf}" for leaf in ("norm", "proj_in", "proj_out")}
    for k in range(depth):
        for leaf in _TBLOCK:
            out[f"{dprefix}.transformer_blocks.{k}.{leaf}"] = f"{lprefix}.transformer_blocks.{k}.{leaf}"
    return out


def _resnet(dprefix: str, lprefix: str) -> dict[str, str]:
    return {f"{dprefix}.{d}": f"{lprefix}.{ld}" for d, ld in _RESNET.items()}


def unet_diffusers_to_ldm(layout: UNetLayout | None = None) -> dict[str, str]:
    """Diffusers UNet module name -> LDM module name, for every module that owns weights.

    ``conv_shortcut`` appears for every ResBlock; it exists only where channels change, so
    filter by the model's real keys.
    """
    lay = layout or UNetLayout()
    nrb = lay.num_res_blocks
    table = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    for level in range(lay.levels):
        for i in range(nrb):
            n = 1 + level * (nrb + 1) + i
            table |= _resnet(f"down_blocks.{level}.resnets.{i}", f"input_blocks.{n}.0")
            if lay.depth[level] > 0:
                table |= _transformer(f"down_blocks.{level}.attentions.{i}",
                                      f"input_blocks.{n}.1", lay.depth[level])
        if level != lay.levels - 1:
            n = 1 + level * (nrb + 1) + nrb
            table[f"down_blocks.{level}.downsamplers.0.conv"] = f"input_blocks.{n}.0.op"
    table |= _resnet("mid_block.resnets.0", "middle_block.0")
    if lay.depth_middle > 0:
        table |= _transformer("mid_block.attentions.0", "middle_block.1", lay.depth_middle)
        table |= _resnet("mid_block.resnets.1", "middle_block.2")
    else:
        table |= _resnet("mid_block.resnets.1", "middle_block.1")
    for up in range(lay.levels):
        level = lay.levels - 1 - up
        has_attn = lay.depth_output[level] > 0
        for i in range(nrb + 1):
            n = up * (nrb + 1) + i
            table |= _resnet(f"up_blocks.{up}.resnets.{i}", f"output_blocks.{n}.0")
            if has_attn:
                table |= _transformer(f"up_blocks.{up}.attentions.{i}",
                                      f"output_blocks.{n}.1", lay.depth_output[level])
            if i == nrb and level != 0:
                slot = 2 if has_attn else 1
                table[f"up_blocks.{up}.upsamplers.0.conv"] = f"output_blocks.{n}.{slot}.conv"
    return table


def load_lora_file(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a LoRA file (``.safetensors``, or a torch pickle read with ``weights_only``)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelLoadError(f"LoRA file {path!r} does not exist. Fix: check the path / loras dir.")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            sd = load_file(path)
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
            sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
    except Exception as exc:  # a corrupt file: report what and where
        raise ModelLoadError(
            f"could not read LoRA file {path!r}: {type(exc).__name__}: {exc}. "
            "Fix: re-download the file; only .safetensors and torch state dicts are read.") from exc
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise ModelLoadError(
            f"LoRA file {path!r} does not hold a flat dict of tensors; received "
            f"{type(sd).__name__}. Fix: save the LoRA as a safetensors state dict.")
    return sd


def _module_aliases(unet_modules: Iterable[str], clip_modules: Iterable[str],
                    layout: UNetLayout | None,
                    encoders: Mapping[str, tuple[Iterable[str], Iterable[str]]] | None = None,
                    ) -> dict[str, tuple[str, str]]:
    """Every accepted LoRA module name -> ("unet" | "clip" | encoder name, our module name)."""
    out: dict[str, tuple[str, str]] = {}
    unet_set = set(unet_modules)
    for ldm in unet_set:
        out["lora_unet_" + ldm.replace(".", "_")] = ("unet", ldm)
        out["diffusion_model." + ldm] = ("unet", ldm)
        out["model.diffusion_model." + ldm] = ("unet", ldm)
    for diff, ldm in unet_diffusers_to_ldm(layout).items():
        if ldm in unet_set:
            out["lora_unet_" + diff.replace(".", "_")] = ("unet", ldm)
            out["unet." + diff] = ("unet", ldm)
    for mod in clip_modules:
        # LoRA files name CLIPTextModel modules with the "text_model." prefix; accept our
        # names with or without it
        full = mod if mod.startswith("text_model.") else "text_model." + mod
        out["lora_te_" + full.replace(".", "_")] = ("clip", mod)
        out["text_encoder." + full] = ("clip", mod)
        out["cond_stage_model.transformer." + full] = ("clip", mod)
    for enc, (modules, prefixes) in (encoders or {}).items():
        names = [*prefixes, f"text_encoders.{enc}.transformer.", f"{enc}.transformer."]
        for mod in modules:
            full = mod if mod.startswith("text_model.") else "text_model." + mod
            for prefix in names:
                # kohya prefixes end in "_" and join the module path with "_"
                out[prefix + (full.replace(".", "_") if prefix.endswith("_") else full)] = (enc, mod)
    return out


def _modules(keys: Iterable[str]) -> set[str]:
    return {k.rsplit(".", 1)[0] for k in keys if k.endswith((".weight", ".bias"))}


def lora_patches(
    lora_sd: Mapping[str, Tensor], *, unet_keys: Iterable[str], clip_keys: Iterable[str] = (),
    unet_layout: UNetLayout | None = None,
    text_encoders: Mapping[str, tuple[Iterable[str], Iterable[str]]] | None = None,
) -> tuple[dict[str, Patch], Any, list[str]]:
    """Map a LoRA state dict onto our parameter names.

    Parameters
    ----------
    lora_sd:
        The LoRA tensors (:func:`load_lora_file`).
    unet_keys, clip_keys:
        Parameter names of our UNet (LDM names, relative to the UNet module) and CLIP text
        model (``text_model.encoder.layers.0.self_attn.q_proj.weight`` ...).
    unet_layout:
        Block structure for diffusers/kohya UNet names (default: the dataclass defaults, four levels of two res blocks).
    text_encoders:
        For models with several text encoders: encoder name -> (its parameter names, the LoRA
        name prefixes that address it, e.g. ``("lora_te1_", "text_encoder.")``; the family's
        ``lora_te_prefixes``).  ``text_encoders.<name>.transformer.`` is always accepted.

    Returns
    -------
    (unet_patches, clip_patches, unknown_keys):
        Parameter name -> patch for each model (``clip_patches`` is ``{encoder: {name: patch}}``
        when ``text_encoders`` is given), and every LoRA key that matched nothing (reported,
        never silently dropped).
    """
    unet_keys, clip_keys = set(unet_keys), set(clip_keys)
    enc_keys = {e: set(k) for e, (k, _) in (text_encoders or {}).items()}
    aliases = _module_aliases(_modules(unet_keys), _modules(clip_keys), unet_layout,
                              {e: (_modules(enc_keys[e]), p) for e, (_, p) in (text_encoders or {}).items()})
    groups: dict[str, dict[str, tuple[str, Tensor]]] = {}
    unknown: list[str] = []
    for key, tensor in lora_sd.items():
        for suffix, role in _SUFFIXES:
            if key.endswith(suffix):
                groups.setdefault(key[: -len(suffix)], {})[role] = (key, tensor)
                break
        else:
            unknown.append(key)
    out: dict[str, dict[str, Patch]] = {"unet": {}, "clip": {}, **{e: {} for e in enc_keys}}
    for name, parts in groups.items():
        target = aliases.get(name)
        roles = {r: t for r, (_, t) in parts.items()}
        if target is None or not ({"up", "down"} <= roles.keys() or roles.keys() & {"diff", "diff_b"}):
            unknown.extend(k for k, _ in parts.values())
            continue
        which, module = target
        keys = unet_keys if which == "unet" else clip_keys if which == "clip" else enc_keys[which]
        if "up" in roles and "down" in roles and f"{module}.weight" in keys:
            alpha = roles.get("alpha")
            out[which][f"{module}.weight"] = LoraPatch(
                roles["up"], roles["down"], None if alpha is None else float(alpha))
        elif "diff" in roles and f"{module}.weight" in keys:
            out[which][f"{module}.weight"] = DiffPatch(roles["diff"])
        if "diff_b" in roles and f"{module}.bias" in keys:
            out[which][f"{module}.bias"] = DiffPatch(roles["diff_b"])
        elif "diff_b" in roles:
            unknown.append(parts["diff_b"][0])
        if not any(k.startswith(module + ".") for k in out[which]):
            unknown.extend(k for k, _ in parts.values())
    clip_out: Any = {e: out[e] for e in enc_keys} if text_encoders is not None else out["clip"]
    return out["unet"], clip_out, sorted(set(unknown))
