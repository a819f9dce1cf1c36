"""MODEL / CLIP / VAE values of every family: CLIPSetLastLayer on both SDXL encoders, LoRA key
styles reaching each encoder, SD2 inpainting checkpoints, the SDXL VAE dtype on a GPU."""

from __future__ import annotations

import dataclasses
import pathlib

import pytest
import torch

from comfy_notebook.families import load_checkpoint_values
from comfy_notebook.nodes.sampling import model_inputs
from comfy_notebook.runtime import DevicePolicy, ModelManager
from comfy_notebook.runtime.lora import UNetLayout, load_lora_file, lora_patches
from comfy_notebook.sampling import ksample
from comfy_notebook.testing import get_preset, make_checkpoint, make_lora


@pytest.fixture
def mgr() -> ModelManager:
    return ModelManager(DevicePolicy.cpu())


def test_clip_set_last_layer_applies_to_both_sdxl_encoders(mgr: ModelManager, preset_file) -> None:
    _, clip, _ = load_checkpoint_values(mgr, preset_file("sdxl"), name="xl")
    default, _, _ = clip.encode("a glass bottle")
    last, pooled_last, _ = clip.with_layer(-1).encode("a glass bottle")
    again, _, _ = clip.with_layer(-2).encode("a glass bottle")
    assert torch.equal(default, again)  # SDXL's default is the penultimate layer of both
    assert not torch.equal(default[..., :64], last[..., :64])  # CLIP-L half changed
    assert not torch.equal(default[..., 64:], last[..., 64:])  # CLIP-G half changed
    assert pooled_last.shape == (1, 64)


@pytest.mark.parametrize("preset", ["sdxl", "sdxl-refiner", "sd2"])
def test_lora_styles_reach_every_encoder_identically(tmp_path: pathlib.Path, mgr: ModelManager, preset: str,
                                                     preset_file) -> None:
    ckpt = preset_file(preset)
    model, clip, _ = load_checkpoint_values(mgr, ckpt, name=preset)
    encoders = clip.family.lora_text_encoders({e: r.base.parameter_names() for e, r in clip.refs.items()})
    found = {}
    for style in ("kohya", "comfy"):
        path = make_lora(tmp_path / f"{style}.safetensors", ckpt, style=style, rank=2, seed=4)
        unet, te, unknown = lora_patches(load_lora_file(path), unet_keys=model.ref.base.parameter_names(),
                                         unet_layout=UNetLayout.from_config(model.unet_config),
                                         text_encoders=encoders)
        assert not unknown, unknown[:4]
        assert unet and all(te[e] for e in clip.refs), {e: len(p) for e, p in te.items()}
        found[style] = (unet, te)
    (ku, kt), (cu, ct) = found["kohya"], found["comfy"]
    assert ku.keys() == cu.keys() and all(torch.equal(ku[k].up, cu[k].up) for k in ku)
    assert {e: set(p) for e, p in kt.items()} == {e: set(p) for e, p in ct.items()}
    patched = clip.with_patches(kt, 1.0)
    assert all(patched.refs[e].patches for e in clip.refs)


def test_sd2_inpainting_checkpoint_loads_and_samples(tmp_path: pathlib.Path, mgr: ModelManager) -> None:
    unet = dataclasses.replace(get_preset("sd2").unet, in_channels=9)
    path = make_checkpoint(tmp_path / "sd2-inpaint.safetensors", "sd2", unet=unet)
    model, clip, _ = load_checkpoint_values(mgr, path, name="inpaint")
    assert model.family.name == "sd2" and model.is_inpaint and model.concat_channels == 5
    assert model.model_sampling.prediction == "eps"  # ComfyUI: SD2 inpainting models are never v
    cond, pooled, _ = clip.encode("a cat")
    seen = []

    def apply_model(x, t, ctx, **kw):
        seen.append(x.shape[1])
        return torch.zeros_like(x[:, :4])

    out = ksample(apply_model, model_sampling=model.model_sampling, latent_format=model.latent_format,
                  latent={"samples": torch.zeros(1, 4, 8, 8)}, positive=[[cond, {"pooled_output": pooled}]],
                  negative=[[cond, {"pooled_output": pooled}]], seed=0, steps=2, cfg=3.0, sampler_name="euler",
                  scheduler="normal", model_inputs=model_inputs(model))
    assert seen and set(seen) == {9} and out["samples"].shape == (1, 4, 8, 8)


@pytest.mark.gpu
def test_sdxl_vae_runs_in_bf16_or_fp32_on_cuda_and_decodes_finite(preset_file) -> None:
    mgr = ModelManager(DevicePolicy.cuda(0))
    _, _, vae = load_checkpoint_values(mgr, preset_file("sdxl"), name="xl")
    assert vae.ref.base.dtype in (torch.bfloat16, torch.float32)
    image = vae.decode(torch.randn(1, 4, 16, 16) * 30)  # large latents: fp16 would overflow
    assert torch.isfinite(image).all()


def test_sampling_preview_uses_the_model_latent_format() -> None:
    """KSampler's progress preview carries the model's latent format: SDXL latents get SDXL's factors."""
    import numpy as np

    from comfy_notebook.families.sdxl import SDXL_LATENT
    from comfy_notebook.widgets.preview import latent_preview, latent_to_rgb
    from comfy_notebook.widgets.state import preview_data_url

    x = torch.zeros(1, 4, 2, 2)
    x[0, 3] = 1.0
    xl = np.asarray(latent_preview(x, latent_format=SDXL_LATENT))
    want = latent_to_rgb(x, SDXL_LATENT.rgb_factors, SDXL_LATENT.rgb_bias)[0, 0, 0]
    assert (xl[0, 0] == want).all() and not (xl[0, 0] == latent_to_rgb(x)[0, 0, 0]).all()
    assert preview_data_url({"samples": x, "latent_format": SDXL_LATENT}) != preview_data_url({"samples": x})


def test_the_panel_rows_show_fp8_storage(tmp_path: pathlib.Path, mgr: ModelManager) -> None:
    """An fp8-stored model computes in the policy's dtype but holds fp8 weights: its row says
    fp8 (found by the families notebook: the panel said float32 for an fp8 Flux transformer)."""
    from comfy_notebook.families import load_unet_value
    from comfy_notebook.testing import make_flux_file

    path = make_flux_file(tmp_path / "flux.safetensors")
    load_unet_value(mgr, path, name="fp8", weight_dtype="fp8_e4m3fn")
    load_unet_value(mgr, path, name="bf16")
    mgr.load("fp8/unet")
    mgr.load("bf16/unet")
    dtypes = {i.name: i.dtype for i in mgr.list()}
    assert dtypes["fp8/unet"] == torch.float8_e4m3fn
    assert dtypes["bf16/unet"] != torch.float8_e4m3fn
