"""The Flux family: detection, loading the four files, the text recipe, sampling a tiny model."""

from __future__ import annotations

import pytest
import torch

from comfy_notebook.errors import ModelLoadError
from comfy_notebook.families import load_text_encoder
from comfy_notebook.families.flux import (
    DEFAULT_GUIDANCE,
    FluxTextEncoders,
    apply_flux,
    detect_flux,
    encode_flux_prompt,
    flux_model_kwargs,
    load_flux,
    load_t5,
    model_sampling_for,
    process_in,
    process_out,
    text_encoder_kind,
)
from comfy_notebook.models.flux import FluxConfig
from comfy_notebook.runtime.loading import open_state_dict
from comfy_notebook.sampling.flow import FlowDenoiser, ModelSamplingDiscreteFlow, ModelSamplingFlux
from comfy_notebook.sampling.samplers import sample_euler
from comfy_notebook.sampling.schedules import calculate_sigmas
from comfy_notebook.testing import (
    make_checkpoint,
    make_flux_file,
    make_t5_file,
    make_text_encoder_file,
)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("flux")
    return {
        "dev": make_flux_file(d / "diffusion_models" / "flux1-dev.safetensors", "flux-dev-tiny"),
        "schnell": make_flux_file(d / "diffusion_models" / "flux1-schnell.safetensors", "flux-schnell-tiny"),
        "t5": make_t5_file(d / "text_encoders" / "t5xxl_fp16.safetensors"),
        "clip_l": make_text_encoder_file(d / "text_encoders" / "clip_l.safetensors"),
    }


def test_detection(files, tmp_path):
    cfg, prefix = detect_flux(open_state_dict(files["dev"]))
    assert cfg == FluxConfig.tiny() and prefix == ""
    cfg, _ = detect_flux(open_state_dict(files["schnell"]))
    assert not cfg.guidance_embed
    full = make_flux_file(tmp_path / "ckpt.safetensors", prefix="model.diffusion_model.")
    assert detect_flux(open_state_dict(full))[1] == "model.diffusion_model."
    assert detect_flux(open_state_dict(make_checkpoint(tmp_path / "sd1.safetensors"))) is None
    assert text_encoder_kind(open_state_dict(files["t5"])) == "t5xxl"
    assert text_encoder_kind(open_state_dict(files["clip_l"])) == "clip_l"
    assert text_encoder_kind(open_state_dict(files["dev"])) is None
    with pytest.raises(ModelLoadError, match="holds no Flux transformer"):
        load_flux(files["t5"])


def test_model_sampling_and_latent_format():
    assert model_sampling_for(FluxConfig.tiny()) == ModelSamplingFlux(shift=1.15)
    assert model_sampling_for(FluxConfig.tiny(guidance_embed=False)) == ModelSamplingDiscreteFlow(1.0, 1.0)
    z = torch.randn(1, 16, 4, 4)
    torch.testing.assert_close(process_out(process_in(z)), z)
    assert torch.allclose(process_in(torch.full((1,), 0.1159)), torch.zeros(1))


def test_guidance_defaults_to_3_5():
    pooled = torch.randn(1, 64)
    kw = flux_model_kwargs({"pooled_output": pooled})
    assert kw["guidance"].tolist() == [DEFAULT_GUIDANCE] and torch.equal(kw["y"], pooled)
    assert flux_model_kwargs({"pooled_output": pooled, "guidance": 2.0}, batch=2)["guidance"].tolist() == [2.0, 2.0]
    assert "guidance" not in flux_model_kwargs({"guidance": None})


def test_text_encoding_and_a_tiny_sampling_run(files):
    enc = FluxTextEncoders(clip_l=load_text_encoder(files["clip_l"]), t5=load_t5(files["t5"]))
    cond, pooled = encode_flux_prompt(enc, "a cat holding a sign that says hello world")
    assert cond.shape == (1, 256, 32) and pooled.shape == (1, 64)
    cond2, pooled2 = encode_flux_prompt(enc, "a cat holding a sign that says hello world", "a dog")
    assert torch.equal(pooled2, pooled) and not torch.equal(cond2, cond)
    model = load_flux(files["dev"])
    ms = model_sampling_for(model.config)
    kw = flux_model_kwargs({"pooled_output": pooled})

    def run() -> torch.Tensor:
        denoiser = FlowDenoiser(lambda x, t, c, **k: apply_flux(model, x, t, c, **k), ms)
        sigmas = calculate_sigmas(ms, "simple", 4)
        noise = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0))
        x = ms.noise_scaling(sigmas[0], noise, torch.zeros_like(noise))
        return sample_euler(lambda x, s: denoiser(x, s, cond, **kw), x, sigmas)

    a, b = run(), run()
    assert torch.equal(a, b) and torch.isfinite(a).all() and a.shape == (1, 16, 8, 8)
