"""End-to-end on the tiny Flux files: the half-log-SNR samplers in their flow form and ComfyUI's
"scaled fp8" files (Flux diffusion model, T5) through ``Session.run_prompt``."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from comfy_notebook._session import Session
from comfy_notebook.models.vae import VAEConfig
from comfy_notebook.nodes import register_builtins
from comfy_notebook.testing import (
    make_flux_file,
    make_t5_file,
    make_text_encoder_file,
    make_vae_file,
)


def _scaled(src: str, dst: pathlib.Path) -> None:
    """A scaled-fp8 copy: every 2-d ``*.weight`` (the linear layers of Flux and T5 v1.1, but the
    T5 token embedding) as e4m3fn with its float32 ``scale_weight``, plus the marker."""
    out: dict[str, torch.Tensor] = {}
    for k, t in load_file(src).items():
        if k.endswith(".weight") and t.ndim == 2 and not any(s in k for s in ("embed", "shared", "relative_attention_bias")):
            scale = t.float().abs().max() / 448.0
            out[k] = (t.float() / scale).to(torch.float8_e4m3fn)
            out[k[: -len("weight")] + "scale_weight"] = scale.reshape(())
        else:
            out[k] = t
    out["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    save_file(out, str(dst))


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    base = tmp_path_factory.mktemp("comfy")
    m = base / "models"
    src = make_flux_file(m / "diffusion_models" / "flux1-dev.safetensors", "flux-dev-tiny")
    _scaled(src, m / "diffusion_models" / "flux1-dev-fp8-scaled.safetensors")
    t5 = make_t5_file(m / "text_encoders" / "t5xxl_fp16.safetensors")
    _scaled(t5, m / "text_encoders" / "t5xxl_fp8_e4m3fn_scaled.safetensors")
    make_text_encoder_file(m / "text_encoders" / "clip_l.safetensors")
    make_vae_file(m / "vae" / "ae.safetensors", config=VAEConfig.flux_tiny())
    return base


def session(root: pathlib.Path) -> Session:
    s = Session(models_dir=root, output_dir=root / "output")
    register_builtins(s)
    return s


def prompt(unet: str = "flux1-dev.safetensors", t5: str = "t5xxl_fp16.safetensors", sampler: str = "euler",
           scheduler: str = "simple") -> dict[str, Any]:
    return {
        "12": {"class_type": "UNETLoader", "inputs": {"unet_name": unet, "weight_dtype": "default"}},
        "11": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": t5, "clip_name2": "clip_l.safetensors",
                                                           "type": "flux"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox in snow", "clip": ["11", 0]}},
        "27": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "25": {"class_type": "RandomNoise", "inputs": {"noise_seed": 5}},
        "22": {"class_type": "BasicGuider", "inputs": {"model": ["12", 0], "conditioning": ["6", 0]}},
        "16": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": sampler}},
        "17": {"class_type": "BasicScheduler", "inputs": {"model": ["12", 0], "scheduler": scheduler,
                                                          "steps": 4, "denoise": 1.0}},
        "13": {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["25", 0], "guider": ["22", 0], "sampler": ["16", 0], "sigmas": ["17", 0],
            "latent_image": ["27", 0]}},
    }


def _latent(s: Session, api: dict[str, Any]) -> torch.Tensor:
    return s.run_prompt(api, targets=["13"]).outputs["13"][0]["samples"]


@pytest.mark.parametrize("sampler", ["dpmpp_2m_sde", "dpmpp_sde", "dpmpp_3m_sde_gpu", "seeds_2", "er_sde",
                                     "sa_solver", "lcm", "euler_ancestral_cfg_pp"])
def test_half_log_snr_samplers_run_on_flux_reproducibly(root, sampler):
    a = _latent(session(root), prompt(sampler=sampler))
    assert torch.isfinite(a).all() and a.abs().max() > 0
    assert torch.equal(a, _latent(session(root), prompt(sampler=sampler)))


def test_scaled_fp8_flux_and_t5_run_close_to_their_sources(root):
    s = session(root)
    ref = _latent(s, prompt())
    scaled_unet = _latent(s, prompt(unet="flux1-dev-fp8-scaled.safetensors"))
    scaled_both = _latent(s, prompt(unet="flux1-dev-fp8-scaled.safetensors", t5="t5xxl_fp8_e4m3fn_scaled.safetensors"))
    for got in (scaled_unet, scaled_both):
        assert torch.isfinite(got).all()
        rel = float((got - ref).norm() / ref.norm())
        assert 0 < rel < 0.2, rel  # fp8 rounding of per-tensor-scaled weights on a random tiny model
    unets = {i.name: i for i in s.models.list() if i.kind == "unet"}
    plain = next(v for k, v in unets.items() if "scaled" not in k)
    scaled = next(v for k, v in unets.items() if "scaled" in k)
    assert scaled.bytes < 0.6 * plain.bytes  # the linear weights are held as fp8
