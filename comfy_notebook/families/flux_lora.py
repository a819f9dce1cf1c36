"""Flux LoRA files in ComfyUI, kohya and diffusers/PEFT key styles -> patches on our Flux.

Key styles (ComfyUI ``comfy/lora.py`` ``model_lora_keys_unet`` and ``comfy/utils.py``
``flux_to_diffusers`` at a125cd8):

- ComfyUI / BFL: ``diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight`` (also
  ``lora_down``/``lora_up``, ``.alpha``, ``.diff``, ``.diff_b``): our parameter names;
- kohya: ``lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight`` (BFL names, dots as ``_``);
- diffusers / PEFT: ``transformer.transformer_blocks.0.attn.to_q.lora_A.weight`` ...; diffusers
  splits the fused projections, so ``to_q``/``to_k``/``to_v`` (and ``proj_mlp`` of single blocks)
  patch row slices of our ``qkv``/``linear1`` weights (:class:`SlicePatch`).  ``norm_out.linear``
  is left out (diffusers swaps its scale/shift halves) and reported as unknown.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from torch import Tensor

from comfy_notebook.models.flux import FluxConfig
from comfy_notebook.runtime.lora import lora_patches
from comfy_notebook.runtime.patches import DiffPatch, LoraPatch, Patch, SlicePatch

__all__ = ["diffusers_to_flux", "flux_lora_patches"]

Target = tuple[str, int, int] | tuple[str, None, None]  # (our module, row offset, rows) or whole


def diffusers_to_flux(config: FluxConfig) -> dict[str, Target]:
    """diffusers module name -> (our module, row offset, row count) (offset None: the whole weight)."""
    h = config.hidden_size
    mlp = int(h * config.mlp_ratio)
    t: dict[str, Target] = {
        "x_embedder": ("img_in", None, None), "context_embedder": ("txt_in", None, None),
        "time_text_embed.timestep_embedder.linear_1": ("time_in.in_layer", None, None),
        "time_text_embed.timestep_embedder.linear_2": ("time_in.out_layer", None, None),
        "time_text_embed.text_embedder.linear_1": ("vector_in.in_layer", None, None),
        "time_text_embed.text_embedder.linear_2": ("vector_in.out_layer", None, None),
        "time_text_embed.guidance_embedder.linear_1": ("guidance_in.in_layer", None, None),
        "time_text_embed.guidance_embedder.linear_2": ("guidance_in.out_layer", None, None),
        "proj_out": ("final_layer.linear", None, None),
    }
    for i in range(config.depth):
        d, b = f"transformer_blocks.{i}", f"double_blocks.{i}"
        for j, x in enumerate("qkv"):
            t[f"{d}.attn.to_{x}"] = (f"{b}.img_attn.qkv", j * h, h)
            t[f"{d}.attn.add_{x}_proj"] = (f"{b}.txt_attn.qkv", j * h, h)
        t |= {
            f"{d}.attn.to_out.0": (f"{b}.img_attn.proj", None, None),
            f"{d}.attn.to_add_out": (f"{b}.txt_attn.proj", None, None),
            f"{d}.ff.net.0.proj": (f"{b}.img_mlp.0", None, None), f"{d}.ff.net.2": (f"{b}.img_mlp.2", None, None),
            f"{d}.ff_context.net.0.proj": (f"{b}.txt_mlp.0", None, None),
            f"{d}.ff_context.net.2": (f"{b}.txt_mlp.2", None, None),
            f"{d}.norm1.linear": (f"{b}.img_mod.lin", None, None),
            f"{d}.norm1_context.linear": (f"{b}.txt_mod.lin", None, None),
        }
    for i in range(config.depth_single_blocks):
        d, b = f"single_transformer_blocks.{i}", f"single_blocks.{i}"
        for j, x in enumerate("qkv"):
            t[f"{d}.attn.to_{x}"] = (f"{b}.linear1", j * h, h)
        t[f"{d}.proj_mlp"] = (f"{b}.linear1", 3 * h, mlp)
        t[f"{d}.proj_out"] = (f"{b}.linear2", None, None)
        t[f"{d}.norm.linear"] = (f"{b}.modulation.lin", None, None)
    return t


_SUFFIXES = (
    (".lora_down.weight", "down"), (".lora_up.weight", "up"), (".alpha", "alpha"),
    (".lora_A.weight", "down"), (".lora_B.weight", "up"),
    (".lora.down.weight", "down"), (".lora.up.weight", "up"), (".diff", "diff"), (".diff_b", "diff_b"),
)


def _diffusers_patches(lora_sd: Mapping[str, Tensor], config: FluxConfig,
                       keys: set[str]) -> tuple[dict[str, list[Patch]], set[str]]:
    table = diffusers_to_flux(config)
    groups: dict[str, dict[str, tuple[str, Tensor]]] = {}
    for key, tensor in lora_sd.items():
        for prefix in ("transformer.", "lora_transformer_"):
            if not key.startswith(prefix):
                continue
            for suffix, role in _SUFFIXES:
                if key.endswith(suffix):
                    name = key[len(prefix):-len(suffix)]
                    if prefix == "lora_transformer_":  # kohya names of diffusers modules
                        name = next((m for m in table if m.replace(".", "_") == name), name)
                    groups.setdefault(name, {})[role] = (key, tensor)
                    break
    out: dict[str, list[Patch]] = {}
    used: set[str] = set()
    for name, parts in groups.items():
        target = table.get(name)
        roles = {r: v for r, (_, v) in parts.items()}
        if target is None or f"{target[0]}.weight" not in keys:
            continue
        module, offset, size = target
        inner: LoraPatch | DiffPatch | None = None
        if "up" in roles and "down" in roles:
            alpha = roles.get("alpha")
            inner = LoraPatch(roles["up"], roles["down"], None if alpha is None else float(alpha))
        elif "diff" in roles:
            inner = DiffPatch(roles["diff"])
        if inner is None:
            continue
        patch: Patch = inner if offset is None else SlicePatch(inner, 0, offset, size)  # type: ignore[arg-type]
        out.setdefault(f"{module}.weight", []).append(patch)
        if "diff_b" in roles and f"{module}.bias" in keys:
            b = DiffPatch(roles["diff_b"])
            out.setdefault(f"{module}.bias", []).append(b if offset is None else SlicePatch(b, 0, offset, size))  # type: ignore[arg-type]
        used |= {k for k, _ in parts.values()}
    return out, used


def flux_lora_patches(lora_sd: Mapping[str, Tensor], config: FluxConfig,
                      flux_keys: Iterable[str]) -> tuple[dict[str, tuple[Patch, ...]], list[str]]:
    """Map a Flux LoRA onto our Flux parameter names.

    Returns ``(patches, unknown_keys)``: parameter name -> patches (several for a fused weight),
    and every LoRA key that matched nothing (reported, never silently dropped).
    """
    keys = set(flux_keys)
    direct, _, unknown = lora_patches(lora_sd, unet_keys=keys, clip_keys=())
    via_diffusers, used = _diffusers_patches(lora_sd, config, keys)
    merged: dict[str, tuple[Patch, ...]] = {k: (p,) for k, p in direct.items()}
    for k, ps in via_diffusers.items():
        merged[k] = merged.get(k, ()) + tuple(ps)
    return merged, sorted(k for k in unknown if k not in used)
