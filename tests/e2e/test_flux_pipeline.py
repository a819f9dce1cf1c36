"""End-to-end: ComfyUI's Flux dev / schnell example prompts through ``Session.run_prompt`` on
tiny random-weight files in the released layouts (diffusion_models/, text_encoders/, vae/)."""

from __future__ import annotations

import copy
import pathlib
from typing import Any

import pytest
import torch

from comfy_notebook._session import Session
from comfy_notebook.models.vae import VAEConfig
from comfy_notebook.nodes import register_builtins
from comfy_notebook.testing import (
    make_flux_file,
    make_t5_file,
    make_text_encoder_file,
    make_vae_file,
)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    base = tmp_path_factory.mktemp("comfy")
    m = base / "models"
    make_flux_file(m / "diffusion_models" / "flux1-dev.safetensors", "flux-dev-tiny")
    make_flux_file(m / "diffusion_models" / "flux1-schnell.safetensors", "flux-schnell-tiny")
    src = make_flux_file(base / "tmp_bf16.safetensors", "flux-dev-tiny")
    from safetensors.torch import load_file, save_file

    save_file({k: v.to(torch.float8_e4m3fn) for k, v in load_file(src).items()},
              str(m / "diffusion_models" / "flux1-dev-fp8.safetensors"))
    make_t5_file(m / "text_encoders" / "t5xxl_fp16.safetensors")
    make_text_encoder_file(m / "text_encoders" / "clip_l.safetensors")
    make_vae_file(m / "vae" / "ae.safetensors", config=VAEConfig.flux_tiny())
    return base


def session(root: pathlib.Path) -> Session:
    s = Session(models_dir=root, output_dir=root / "output")
    register_builtins(s)
    return s


def flux_dev_prompt(unet: str = "flux1-dev.safetensors", weight_dtype: str = "default",
                    clip_order: tuple[str, str] = ("t5xxl_fp16.safetensors", "clip_l.safetensors"),
                    seed: int = 0, guidance: float = 3.5) -> dict[str, Any]:
    """ComfyUI's flux_dev_example workflow in API form (KSampler at cfg 1, euler, simple), 64 px."""
    return {
        "12": {"class_type": "UNETLoader", "inputs": {"unet_name": unet, "weight_dtype": weight_dtype}},
        "11": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": clip_order[0], "clip_name2": clip_order[1],
                                                           "type": "flux"}},
        "10": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {
            "text": "cute anime girl with massive fluffy fennec ears and a big fluffy tail", "clip": ["11", 0]}},
        "26": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["6", 0], "guidance": guidance}},
        "33": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["11", 0]}},
        "27": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "31": {"class_type": "KSampler", "inputs": {
            "model": ["12", 0], "seed": seed, "steps": 4, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
            "denoise": 1.0, "positive": ["26", 0], "negative": ["33", 0], "latent_image": ["27", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["31", 0], "vae": ["10", 0]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "ComfyUI"}},
    }


def _image(result: Any) -> torch.Tensor:
    return result.outputs["8"][0]


def test_flux_dev_prompt_runs_and_is_bit_identical(root):
    s = session(root)
    api = flux_dev_prompt()
    first = s.run_prompt(api)
    img = _image(first)
    assert img.shape == (1, 64, 64, 3) and torch.isfinite(img).all()
    again = session(root).run_prompt(copy.deepcopy(api))
    assert torch.equal(_image(again), img)
    cached = s.run_prompt(copy.deepcopy(api))
    assert cached.executed == set() or "31" not in cached.executed  # served from the cache
    # the clip files in the other order give the same image (DualCLIPLoader reads the contents)
    swapped = s.run_prompt(flux_dev_prompt(clip_order=("clip_l.safetensors", "t5xxl_fp16.safetensors")))
    assert torch.equal(_image(swapped), img)


def test_guidance_changes_the_image_and_defaults_to_3_5(root):
    s = session(root)
    base = _image(s.run_prompt(flux_dev_prompt(guidance=3.5)))
    other = _image(s.run_prompt(flux_dev_prompt(guidance=1.0)))
    assert not torch.equal(base, other)
    api = flux_dev_prompt()
    api["31"]["inputs"]["positive"] = ["6", 0]  # no FluxGuidance: the model gets 3.5
    assert torch.equal(_image(s.run_prompt(api)), base)


def test_flux_schnell_and_text_encode_flux(root):
    s = session(root)
    api = flux_dev_prompt(unet="flux1-schnell.safetensors")
    api["6"] = {"class_type": "CLIPTextEncodeFlux", "inputs": {
        "clip": ["11", 0], "clip_l": "a cat", "t5xxl": "a cat holding a sign", "guidance": 3.5}}
    img = _image(s.run_prompt(api))
    assert img.shape == (1, 64, 64, 3) and torch.isfinite(img).all()


def test_fp8_weights_give_the_bf16_image_within_fp8_rounding(root):
    s = session(root)
    ref = _image(s.run_prompt(flux_dev_prompt()))
    fp8_file = _image(s.run_prompt(flux_dev_prompt(unet="flux1-dev-fp8.safetensors")))
    fp8_cast = _image(s.run_prompt(flux_dev_prompt(weight_dtype="fp8_e4m3fn")))
    assert torch.equal(fp8_file, fp8_cast)  # the same fp8 weights either way
    unets = {i.name: i for i in s.models.list() if i.kind == "unet"}
    # the manager holds the fp8 weights as fp8: 1 byte a parameter against the compute dtype's
    default = unets["unet:flux1-dev/unet"]
    assert unets["unet:flux1-dev-fp8/unet"].bytes * default.dtype.itemsize == default.bytes
    assert unets["unet:flux1-dev@fp8_e4m3fn/unet"].bytes == unets["unet:flux1-dev-fp8/unet"].bytes
    diff = (fp8_file - ref).abs()
    # measured on these tiny random files (CPU): max 0.062, mean 0.0095 (pixels in 0..1)
    assert 0 < diff.max() < 0.1 and diff.mean() < 0.02, (diff.max(), diff.mean())


def test_model_sampling_nodes(root):
    s = session(root)
    api = flux_dev_prompt()
    api["40"] = {"class_type": "ModelSamplingFlux", "inputs": {
        "model": ["12", 0], "max_shift": 1.15, "base_shift": 0.5, "width": 64, "height": 64}}
    api["31"]["inputs"]["model"] = ["40", 0]
    shifted = _image(s.run_prompt(api))
    assert not torch.equal(shifted, _image(s.run_prompt(flux_dev_prompt())))
    api["40"] = {"class_type": "ModelSamplingFlux", "inputs": {
        "model": ["12", 0], "max_shift": 1.15, "base_shift": 0.5, "width": 1024, "height": 1024}}
    assert torch.equal(_image(s.run_prompt(api)), _image(session(root).run_prompt(flux_dev_prompt())))  # mu = 1.15


@pytest.mark.parametrize("sampler", ["euler_ancestral", "dpmpp_2s_ancestral", "dpmpp_2m", "heun"])
def test_samplers_run_on_flux(root, sampler):
    api = flux_dev_prompt()
    api["31"]["inputs"]["sampler_name"] = sampler
    img = _image(session(root).run_prompt(api))
    assert torch.isfinite(img).all()


def flux_custom_prompt(unet: str = "flux1-dev.safetensors", scheduler: str = "simple", steps: int = 4,
                       sampler: str = "euler", seed: int = 0) -> dict[str, Any]:
    """ComfyUI's Flux example as a SamplerCustomAdvanced graph (RandomNoise, BasicGuider, KSamplerSelect,
    BasicScheduler), 64 px."""
    api = flux_dev_prompt(unet=unet)
    del api["31"], api["33"]
    api.update({
        "25": {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}},
        "22": {"class_type": "BasicGuider", "inputs": {"model": ["12", 0], "conditioning": ["26", 0]}},
        "16": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": sampler}},
        "17": {"class_type": "BasicScheduler", "inputs": {"model": ["12", 0], "scheduler": scheduler,
                                                          "steps": steps, "denoise": 1.0}},
        "13": {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["25", 0], "guider": ["22", 0], "sampler": ["16", 0], "sigmas": ["17", 0],
            "latent_image": ["27", 0]}},
    })
    api["8"]["inputs"]["samples"] = ["13", 0]
    return api


@pytest.mark.parametrize("unet", ["flux1-dev.safetensors", "flux1-schnell.safetensors"])
def test_sampler_custom_advanced_equals_ksampler(root, unet):
    custom = _image(session(root).run_prompt(flux_custom_prompt(unet=unet)))
    plain = _image(session(root).run_prompt(flux_dev_prompt(unet=unet)))
    assert torch.equal(custom, plain)  # cfg 1: the negative of the KSampler graph is never evaluated
    again = _image(session(root).run_prompt(flux_custom_prompt(unet=unet)))
    assert torch.equal(custom, again)
    anc = _image(session(root).run_prompt(flux_custom_prompt(unet=unet, sampler="euler_ancestral")))
    assert torch.isfinite(anc).all() and not torch.equal(anc, custom)


@pytest.mark.parametrize("weight_dtype", ["default", "fp8_e4m3fn"])
def test_budget_below_the_model_runs_partially_loaded(root, weight_dtype):
    from comfy_notebook.runtime.devices import DevicePolicy
    from comfy_notebook.runtime.manager import ModelManager

    free = session(root)
    free.services.models = ModelManager(DevicePolicy.cpu())
    api = flux_dev_prompt(weight_dtype=weight_dtype)
    reference = _image(free.run_prompt(api))
    unet_bytes = next(i.bytes for i in free.models.list() if i.kind == "unet")
    tight = session(root)
    tight.services.models = ModelManager(DevicePolicy.cpu(), capacity_bytes=unet_bytes + (64 << 10))
    assert torch.equal(_image(tight.run_prompt(copy.deepcopy(api))), reference)
    stats = tight.models.stats
    assert stats.partial_loads >= 1 and stats.bytes_streamed > 0


def test_flux_lora_in_diffusers_style_patches_the_fused_weights(root):
    from safetensors.torch import save_file

    from comfy_notebook.families.flux_lora import diffusers_to_flux
    from comfy_notebook.models.flux import FluxConfig

    gen = torch.Generator().manual_seed(5)
    lora = {}
    cfg = FluxConfig.tiny()
    for name, (_, _, rows) in diffusers_to_flux(cfg).items():
        if not name.startswith(("transformer_blocks.0.attn.to_", "single_transformer_blocks.0.proj_mlp")):
            continue
        out = rows if rows is not None else cfg.hidden_size
        lora[f"transformer.{name}.lora_A.weight"] = torch.randn(4, cfg.hidden_size, generator=gen) * 0.3
        lora[f"transformer.{name}.lora_B.weight"] = torch.randn(out, 4, generator=gen) * 0.3
    path = root / "models" / "loras" / "flux_diffusers_lora.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(lora, str(path))
    base = _image(session(root).run_prompt(flux_dev_prompt()))
    for strength, same in ((0.0, True), (1.0, False)):
        api = flux_dev_prompt()
        api["50"] = {"class_type": "LoraLoaderModelOnly", "inputs": {
            "model": ["12", 0], "lora_name": "flux_diffusers_lora.safetensors", "strength_model": strength}}
        api["31"]["inputs"]["model"] = ["50", 0]
        img = _image(session(root).run_prompt(api))
        assert torch.equal(img, base) == same
