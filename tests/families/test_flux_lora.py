"""Flux LoRA key styles: ComfyUI/BFL, kohya and diffusers/PEFT, checked against diffusers' converter."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import torch

from comfy_notebook.families.flux_lora import diffusers_to_flux, flux_lora_patches
from comfy_notebook.models.flux import Flux, FluxConfig
from comfy_notebook.runtime.patches import apply_patches
from comfy_notebook.testing import random_state_dict

_CFG = dataclasses.replace(FluxConfig.tiny(), depth=2, depth_single_blocks=2)


def _converter():
    spec = importlib.util.spec_from_file_location("_tf", Path(__file__).parents[1] / "models" / "test_flux.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod._diffusers_converter(_CFG.hidden_size)


def _model_sd():
    with torch.device("meta"):
        m = Flux(_CFG)
    return random_state_dict(m, 0, tag="flux")


def _patched(sd, patches):
    return {k: apply_patches(v, patches[k]) if k in patches else v for k, v in sd.items()}


def test_bfl_and_kohya_styles_patch_our_names():
    sd = _model_sd()
    gen = torch.Generator().manual_seed(0)
    w = sd["double_blocks.0.img_attn.qkv.weight"]
    up, down = torch.randn(w.shape[0], 4, generator=gen), torch.randn(4, w.shape[1], generator=gen)
    expected = w + (2.0 / 4) * up @ down
    for lora in (
        {"diffusion_model.double_blocks.0.img_attn.qkv.lora_B.weight": up,
         "diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight": down,
         "diffusion_model.double_blocks.0.img_attn.qkv.alpha": torch.tensor(2.0)},
        {"lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": up,
         "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": down,
         "lora_unet_double_blocks_0_img_attn_qkv.alpha": torch.tensor(2.0)},
    ):
        patches, unknown = flux_lora_patches(lora, _CFG, sd)
        assert not unknown and list(patches) == ["double_blocks.0.img_attn.qkv.weight"]
        torch.testing.assert_close(_patched(sd, patches)["double_blocks.0.img_attn.qkv.weight"], expected)


def test_diffusers_style_matches_diffusers_converter():
    sd = _model_sd()
    gen = torch.Generator().manual_seed(1)
    convert = _converter()
    ref_before = convert({"model.diffusion_model." + k: v.clone() for k, v in sd.items()})
    lora, deltas = {}, {}
    for name in diffusers_to_flux(_CFG):
        w = ref_before[name + ".weight"]
        up, down = torch.randn(w.shape[0], 2, generator=gen) * 0.1, torch.randn(2, w.shape[1], generator=gen) * 0.1
        lora[f"transformer.{name}.lora_B.weight"], lora[f"transformer.{name}.lora_A.weight"] = up, down
        deltas[name + ".weight"] = up @ down
    lora["transformer.norm_out.linear.lora_A.weight"] = torch.zeros(2, 64)  # swapped halves: not mapped
    patches, unknown = flux_lora_patches(lora, _CFG, sd)
    assert unknown == ["transformer.norm_out.linear.lora_A.weight"]
    assert len(patches["double_blocks.0.img_attn.qkv.weight"]) == 3
    assert len(patches["single_blocks.1.linear1.weight"]) == 4  # q, k, v and proj_mlp slices
    ref_after = convert({"model.diffusion_model." + k: v.clone() for k, v in _patched(sd, patches).items()})
    for key, delta in deltas.items():
        torch.testing.assert_close(ref_after[key] - ref_before[key], delta, atol=1e-5, rtol=0)
    untouched = set(ref_before) - set(deltas)
    assert all(torch.equal(ref_after[k], ref_before[k]) for k in untouched)


def test_strength_and_unknown_keys():
    sd = _model_sd()
    lora = {"diffusion_model.img_in.diff": torch.ones_like(sd["img_in.weight"]),
            "diffusion_model.img_in.diff_b": torch.ones_like(sd["img_in.bias"]),
            "something.else.lora_A.weight": torch.zeros(1)}
    patches, unknown = flux_lora_patches(lora, _CFG, sd)
    assert unknown == ["something.else.lora_A.weight"]
    assert torch.allclose(_patched(sd, patches)["img_in.bias"], sd["img_in.bias"] + 1)
