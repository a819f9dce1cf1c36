"""Family and size detection from key names and shapes only."""

from __future__ import annotations

import pytest
import torch

from comfy_notebook.errors import UnsupportedModelError
from comfy_notebook.families import SD1, SD2, SDXL, detect
from comfy_notebook.models.clip import CLIPTextConfig
from comfy_notebook.models.unet import UNetConfig, UNetModel
from comfy_notebook.models.vae import AutoencoderKL, VAEConfig
from comfy_notebook.runtime.loading import open_state_dict
from comfy_notebook.testing import preset_configs


def _shapes(module: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in module.state_dict().items()}


def _meta(cls, cfg):
    with torch.device("meta"):
        return cls(cfg)


@pytest.mark.parametrize("preset", ["sd1-tiny", "sd1-tiny-linear", "sd1-full"])
def test_detects_every_size_of_the_presets(preset):
    from comfy_notebook.models.clip import CLIPTextModel

    unet, vae, clip = preset_configs(preset)
    sd = {
        **_shapes(_meta(UNetModel, unet), "model.diffusion_model."),
        **_shapes(_meta(AutoencoderKL, vae), "first_stage_model."),
        **_shapes(_meta(CLIPTextModel, clip), "cond_stage_model.transformer."),
        "alphas_cumprod": torch.zeros(1000),
    }
    info = detect(sd)
    assert info.family is SD1
    assert (info.unet, info.vae, info.components["clip_l"].config) == (unet, vae, clip)
    assert info.prefixes == {"unet": "model.diffusion_model.", "vae": "first_stage_model.",
                             "clip_l": "cond_stage_model.transformer."}
    assert info.extras == ("alphas_cumprod",)


def test_full_size_rules():
    unet, vae, clip = preset_configs("sd1-full")
    assert unet == UNetConfig.sd15() and vae == VAEConfig.sd() and clip == CLIPTextConfig.sd1()
    assert unet.heads_for(640) == (8, 80)  # SD1: 8 heads whatever the width
    assert clip.heads == 12  # 768 / 64


def test_tiny_file_is_detected_like_a_real_one(tiny_ckpt):
    info = detect(open_state_dict(tiny_ckpt), source=tiny_ckpt)
    unet, vae, clip = preset_configs("sd1-tiny")
    assert (info.family, info.unet, info.vae, info.components["clip_l"].config) == (SD1, unet, vae, clip)
    assert "cond_stage_model.transformer.text_model.embeddings.position_ids" in info.extras
    assert "betas" in info.extras and "model_ema.decay" in info.extras


def test_separate_vae_and_unet_files():
    vae = _shapes(_meta(AutoencoderKL, VAEConfig.tiny()), "")
    info = detect(vae)
    assert info.prefixes == {"vae": ""} and info.vae == VAEConfig.tiny() and info.unet is None
    assert info.family is None  # a separate VAE belongs to no single family
    unet = _shapes(_meta(UNetModel, UNetConfig.sd1_tiny()), "")
    assert detect(unet).unet == UNetConfig.sd1_tiny()


def test_sd2_unet_uses_64_wide_heads():
    import dataclasses

    cfg = dataclasses.replace(UNetConfig.sd1_tiny(), model_channels=64, context_dim=1024, num_heads=-1,
                              num_head_channels=64, use_linear_in_transformer=True)
    info = detect(_shapes(_meta(UNetModel, cfg), "model.diffusion_model."))
    assert info.family is SD2
    assert info.unet == cfg


def test_sdxl_recognised_by_label_embedding():
    import dataclasses

    cfg = dataclasses.replace(UNetConfig.sd1_tiny(), model_channels=64, adm_in_channels=16, num_heads=-1,
                              num_head_channels=64)
    sd = _shapes(_meta(UNetModel, cfg), "model.diffusion_model.")
    info = detect(sd)
    assert info.family is SDXL and info.unet == cfg
    assert SDXL.latent_format.scale_factor == 0.13025


def test_unknown_checkpoint_names_what_was_found():
    sd = {f"backbone.layer{i}.weight": torch.zeros(2, 2) for i in range(3)}
    with pytest.raises(UnsupportedModelError, match=r"unknown model file in x\.safetensors.*backbone\.layer0"):
        detect(sd, source="x.safetensors")
    with pytest.raises(UnsupportedModelError, match="diffusers-format"):
        detect({"down_blocks.0.resnets.0.conv1.weight": torch.zeros(1)})


def test_family_latent_scaling():
    x = torch.randn(3)
    fmt = SD1.latent_format
    torch.testing.assert_close(fmt.process_in(x), x * 0.18215)
    torch.testing.assert_close(fmt.process_out(fmt.process_in(x)), x)
    assert (SD1.beta_start, SD1.beta_end, SD1.num_timesteps, SD1.prediction) == (0.00085, 0.012, 1000, "eps")
