"""Loading through the families: every preset's components, separate files into the same
components, dtype choices per device, and the CLIP recipe of each family."""

from __future__ import annotations

import pathlib

import pytest
import torch

from comfy_notebook.families import SD1, SD2, SDXL, SDXL_REFINER, detect, load_checkpoint
from comfy_notebook.families.base import VAE_DTYPES
from comfy_notebook.runtime.devices import DevicePolicy
from comfy_notebook.runtime.loading import open_state_dict
from comfy_notebook.testing import (
    make_text_encoder_file,
    make_unet_file,
    make_vae_file,
)

EXPECTED = {
    "sd1-tiny": (SD1, {"unet", "vae", "clip_l"}, "eps"),
    "sd2": (SD2, {"unet", "vae", "clip_h"}, "eps"),
    "sd2-v": (SD2, {"unet", "vae", "clip_h"}, "v_prediction"),
    "sdxl": (SDXL, {"unet", "vae", "clip_l", "clip_g"}, "eps"),
    "sdxl-refiner": (SDXL_REFINER, {"unet", "vae", "clip_g"}, "eps"),
}


@pytest.mark.parametrize("preset", list(EXPECTED))
def test_every_preset_is_detected_and_loads_strictly(preset: str, preset_file) -> None:
    family, parts, prediction = EXPECTED[preset]
    path = preset_file(preset)
    info = detect(open_state_dict(path), source=path)
    assert info.family is family and set(info.components) == parts
    assert info.model_sampling().prediction == prediction
    ck = load_checkpoint(path)
    assert set(ck.modules) == parts
    for name, comp in info.text_encoders.items():
        assert ck.modules[name].config == comp.config
    if "clip_g" in parts:
        assert ck.modules["clip_g"].config.projection_dim == 64
        assert ck.modules["clip_g"].config.activation == "gelu"


def test_separate_files_hold_the_checkpoint_components(tmp_path: pathlib.Path, preset_file) -> None:
    ck = load_checkpoint(preset_file("sdxl")).modules
    files = {
        "clip_l": make_text_encoder_file(tmp_path / "l.safetensors", "sdxl", encoder="clip_l"),
        "clip_g": make_text_encoder_file(tmp_path / "g.safetensors", "sdxl", encoder="clip_g"),
        "unet": make_unet_file(tmp_path / "u.safetensors", "sdxl"),
        "vae": make_vae_file(tmp_path / "v.safetensors", "sdxl"),
    }
    for name, path in files.items():
        info = detect(open_state_dict(path), source=path)
        assert name in info.components
        (module,) = load_checkpoint(path).modules.values()
        a, b = ck[name].state_dict(), module.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert detect(open_state_dict(files["unet"])).family is SDXL  # a UNet file: family from its shapes
    assert detect(open_state_dict(files["clip_g"])).family is None  # text encoders: from the loader's type


def test_sdxl_vae_dtype_never_fp16() -> None:
    cpu = DevicePolicy.cpu()
    assert cpu.dtype_for("vae", VAE_DTYPES) == torch.float32
    ampere = DevicePolicy(device=torch.device("cuda", 0), dtypes={"unet": torch.float16}, bf16=True)
    older = DevicePolicy(device=torch.device("cuda", 0), dtypes={"unet": torch.float16}, bf16=False)
    assert ampere.dtype_for("vae", VAE_DTYPES) == torch.bfloat16
    assert older.dtype_for("vae", VAE_DTYPES) == torch.float32
    forced = DevicePolicy(device=torch.device("cuda", 0), dtypes={"vae": torch.float16}, bf16=True)
    assert forced.dtype_for("vae", VAE_DTYPES) == torch.bfloat16  # fp16 is not a VAE dtype: never NaN
    assert ampere.dtype_for("unet", (torch.float16, torch.bfloat16)) == torch.float16


def test_text_encoding_recipes_match_comfyui() -> None:
    lo, g = SDXL.text_encoder("clip_l"), SDXL.text_encoder("clip_g")
    assert (lo.layer, lo.final_norm, lo.pad_token, lo.projected_pooled) == (-2, False, 49407, False)
    assert (g.layer, g.final_norm, g.pad_token, g.projected_pooled) == (-2, False, 0, True)
    h = SD2.text_encoder("clip_h")
    assert (h.layer, h.final_norm, h.pad_token) == (-2, True, 0)
    sd1 = SD1.text_encoder("clip_l")
    assert (sd1.layer, sd1.final_norm, sd1.pad_token) == (None, True, 49407)
    cond, pooled = SDXL.combine({"clip_l": (torch.ones(1, 77, 768), torch.zeros(1, 768)),
                                 "clip_g": (torch.full((1, 77, 1280), 2.0), torch.full((1, 1280), 3.0))})
    assert cond.shape == (1, 77, 2048) and float(cond[0, 0, 0]) == 1.0 and float(cond[0, 0, 2047]) == 2.0
    assert float(pooled[0, 0]) == 3.0


def test_sdxl_y_is_comfyui_encode_adm() -> None:
    """y = pooled + 256-wide [cos | sin] embeddings of (h, w, crop_h, crop_w, target_h, target_w)."""
    import math

    from comfy_notebook.families.sdxl import fourier_features

    pooled = torch.randn(1, 1280)
    y = SDXL.model_inputs(None, {"pooled_output": pooled, "width": 832, "height": 1216, "crop_w": 0,
                                 "crop_h": 0, "prompt_type": "positive"})["y"]
    assert y.shape == (1, 2816) and torch.equal(y[:, :1280], pooled)
    freqs = torch.exp(-math.log(10000.0) * torch.arange(128, dtype=torch.float32) / 128)
    for i, v in enumerate((1216, 832, 0, 0, 1216, 832)):  # target size defaults to the size
        args = v * freqs
        torch.testing.assert_close(y[0, 1280 + 256 * i:1280 + 256 * (i + 1)], torch.cat([args.cos(), args.sin()]))
    neg = SDXL_REFINER.model_inputs(None, {"pooled_output": pooled[:, :1280], "width": 64, "height": 64,
                                           "prompt_type": "negative"})["y"]
    assert neg.shape == (1, 2560)
    torch.testing.assert_close(neg[:, 1280 + 4 * 256:], fourier_features([2.5]))  # ComfyUI's negative score
    pos = SDXL_REFINER.model_inputs(None, {"pooled_output": pooled, "width": 64, "height": 64,
                                           "prompt_type": "positive"})["y"]
    torch.testing.assert_close(pos[:, 1280 + 4 * 256:], fourier_features([6.0]))


def test_sdxl_ksample_passes_latent_size_and_prompt_type() -> None:
    """Plain CLIPTextEncode conditioning on SDXL: width/height from the latent (x 8), as ComfyUI."""
    from comfy_notebook.sampling import ModelSampling, ksample

    seen = []

    def apply_model(x, t, ctx, y=None):
        seen.append(y)
        return torch.zeros_like(x)

    def inputs(params):
        return SDXL.model_inputs(None, params)

    pos = [[torch.zeros(1, 77, 8), {"pooled_output": torch.ones(1, 1280)}]]
    neg = [[torch.zeros(1, 77, 8), {"pooled_output": torch.ones(1, 1280), "width": 4096}]]
    ksample(apply_model, model_sampling=ModelSampling(), latent_format=SDXL.latent_format,
            latent={"samples": torch.zeros(1, 4, 6, 10)}, positive=pos, negative=neg, seed=0, steps=1, cfg=2.0,
            sampler_name="euler", scheduler="normal", model_inputs=inputs)
    y = seen[0]  # [2, 2816]: positive then negative
    from comfy_notebook.families.sdxl import fourier_features

    torch.testing.assert_close(y[0, 1280:], fourier_features([48, 80, 0, 0, 48, 80])[0])
    torch.testing.assert_close(y[1, 1280:], fourier_features([48, 4096, 0, 0, 48, 4096])[0])
