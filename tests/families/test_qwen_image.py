"""The Qwen-Image family: detection, model sampling, Edit's reference-latent inputs, fp8 loading."""

from __future__ import annotations

import pytest
import torch

from comfy_notebook.testing import make_qwen_image_file

pytest.importorskip("comfy_notebook.families.wan")
pytest.importorskip("comfy_notebook.families.qwen_image_text")

from comfy_notebook.families._survey import survey
from comfy_notebook.families.qwen_image import (
    QWEN_IMAGE,
    SHIFT,
    detect_qwen_image,
    load_qwen_image,
    reference_inputs,
)
from comfy_notebook.models.qwen_image import QwenImage, QwenImageConfig
from comfy_notebook.runtime.loading import open_state_dict
from comfy_notebook.sampling.flow import ModelSamplingFlux, flux_time_shift


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
def test_detects_the_released_layout(tmp_path, prefix):
    path = make_qwen_image_file(tmp_path / "qwen_image_bf16.safetensors", prefix=prefix)
    sd = open_state_dict(path)
    config, found = detect_qwen_image(sd)
    assert found == prefix and config == QwenImageConfig.tiny()
    s = survey(sd, str(path))
    assert QWEN_IMAGE.matches(s)
    detected = QWEN_IMAGE.detect(s)
    unet = detected.components["unet"]
    assert unet.architecture is QwenImage and unet.prefix == prefix and unet.dtypes[0] == torch.bfloat16


def test_model_sampling_is_flux_style_with_shift_1_15():
    ms = QWEN_IMAGE.model_sampling()
    assert isinstance(ms, ModelSamplingFlux) and ms.shift == SHIFT == 1.15
    sigma = ms.sigma(torch.tensor(0.5))
    assert abs(float(sigma) - flux_time_shift(1.15, 1.0, 0.5)) < 1e-6
    assert torch.equal(ms.timestep(torch.tensor([0.25])), torch.tensor([0.25]))  # timestep = sigma


def test_reference_inputs_go_through_the_latent_format():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1, 16, 1, 6, 8, generator=g), torch.randn(1, 16, 4, 4, generator=g)
    out = reference_inputs(QWEN_IMAGE.latent_format, {"reference_latents": [a, b]})
    assert list(out) == ["ref_latent_index_0", "ref_latent_index_1"]
    assert torch.allclose(out["ref_latent_index_0"], QWEN_IMAGE.latent_format.process_in(a[:, :, 0]))
    assert torch.allclose(out["ref_latent_index_1"], QWEN_IMAGE.latent_format.process_in(b))
    offset = reference_inputs(QWEN_IMAGE.latent_format, {"reference_latents": [b],
                                                         "reference_latents_method": "offset"})
    assert list(offset) == ["ref_latent_offset_0"]
    assert QWEN_IMAGE.model_inputs(None, {"width": 64}) == {}


def test_fp8_file_stays_fp8_and_matches_the_bf16_model_within_rounding(tmp_path):
    bf16 = load_qwen_image(make_qwen_image_file(tmp_path / "bf16.safetensors"))
    fp8 = load_qwen_image(make_qwen_image_file(tmp_path / "fp8.safetensors", dtype=torch.float8_e4m3fn))
    assert fp8.transformer_blocks[0].attn.to_q.weight.dtype == torch.float8_e4m3fn
    g = torch.Generator().manual_seed(1)
    x, ctx, t = torch.randn(1, 16, 8, 8, generator=g), torch.randn(1, 5, 64, generator=g), torch.tensor([0.7])
    with torch.no_grad():
        a, b = bf16(x, t, ctx), fp8(x, t, ctx)
    rel = ((a - b).norm() / a.norm()).item()
    assert 0 < rel < 0.1, rel
