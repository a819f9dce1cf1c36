"""The rest of ComfyUI a125cd8's custom-sampling nodes: SetFirstSigma, ExtendIntermediateSigmas,
SamplingPercentToSigma (comfy_extras/nodes_custom_sampler.py), SamplerLCMUpscale and SamplerEulerCFGpp
(comfy_extras/nodes_advanced_samplers.py).  ManualSigmas and SamplerSEEDS2 are not in ComfyUI at
a125cd8 (they came later), so they are not here."""

from __future__ import annotations

import math
import pathlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from comfy_notebook.nodes import NODE_CLASS_MAPPINGS
from comfy_notebook.nodes.sampler_options import SamplerEulerCFGpp, SamplerLCMUpscale
from comfy_notebook.nodes.sigmas import (
    ExtendIntermediateSigmas,
    SamplingPercentToSigma,
    SetFirstSigma,
)
from comfy_notebook.sampling import DiscreteSchedule, SamplingConfigError, unguided
from comfy_notebook.sampling.flow import ModelSamplingFlux
from comfy_notebook.sampling.model_sampling import ModelSampling
from comfy_notebook.sampling.samplers_advanced import upscale_factors


def test_registered_with_comfy_signatures():
    for name in ("SetFirstSigma", "ExtendIntermediateSigmas", "SamplingPercentToSigma", "SamplerLCMUpscale",
                 "SamplerEulerCFGpp"):
        assert name in NODE_CLASS_MAPPINGS, name
    req = SetFirstSigma.INPUT_TYPES()["required"]
    assert list(req) == ["sigmas", "sigma"] and req["sigma"][1]["default"] == 136.0
    req = ExtendIntermediateSigmas.INPUT_TYPES()["required"]
    assert list(req) == ["sigmas", "steps", "start_at_sigma", "end_at_sigma", "spacing"]
    assert (req["steps"][1]["default"], req["start_at_sigma"][1]["default"], req["end_at_sigma"][1]["default"]) == (
        2, -1.0, 12.0)
    assert req["spacing"][0] == ["linear", "cosine", "sine"]
    req = SamplingPercentToSigma.INPUT_TYPES()["required"]
    assert list(req) == ["model", "sampling_percent", "return_actual_sigma"]
    assert SamplingPercentToSigma.RETURN_TYPES == ("FLOAT",) and SamplingPercentToSigma.RETURN_NAMES == ("sigma_value",)
    req = SamplerLCMUpscale.INPUT_TYPES()["required"]
    assert list(req) == ["scale_ratio", "scale_steps", "upscale_method"]
    assert req["scale_ratio"][1]["default"] == 1.0 and req["scale_steps"][1]["default"] == -1
    assert req["upscale_method"][0] == ["bislerp", "nearest-exact", "bilinear", "area", "bicubic"]
    assert SamplerEulerCFGpp.INPUT_TYPES()["required"]["version"][0] == ["regular", "alternative"]


def test_set_first_sigma_copies():
    sig = torch.tensor([14.6, 3.0, 0.0])
    (out,) = SetFirstSigma().set_first_sigma(sig, 20.0)
    assert out.tolist() == pytest.approx([20.0, 3.0, 0.0]) and float(sig[0]) == pytest.approx(14.6)


def test_extend_intermediate_sigmas_by_hand():
    sig = torch.tensor([20.0, 10.0, 4.0, 0.0])
    (lin,) = ExtendIntermediateSigmas().extend(sig, 2, -1.0, 5.0, "linear")  # steps from 20 and 10 split in two
    assert lin.tolist() == pytest.approx([20.0, 15.0, 10.0, 7.0, 4.0, 0.0])
    (cos,) = ExtendIntermediateSigmas().extend(sig, 3, 15.0, 0.0, "cosine")  # from 10 and 4 only
    f1, f2 = math.sin(math.pi / 6), math.sin(math.pi / 3)
    assert cos.tolist() == pytest.approx([20.0, 10.0, 10 - 6 * f1, 10 - 6 * f2, 4.0, 4 - 4 * f1, 4 - 4 * f2, 0.0],
                                         rel=1e-6)
    (sine,) = ExtendIntermediateSigmas().extend(sig, 2, -1.0, 0.0, "sine")
    assert sine[1].item() == pytest.approx(20 - 10 * (1 - math.cos(math.pi / 4)))
    assert sine.dtype == torch.float32
    with pytest.raises(SamplingConfigError, match="Fix"):
        ExtendIntermediateSigmas().extend(sig, 2, -1.0, 0.0, "cubic")


def test_sampling_percent_to_sigma_on_diffusion_and_flow_models():
    node = SamplingPercentToSigma()
    sd = SimpleNamespace(model_sampling=ModelSampling(DiscreteSchedule()))
    flux = SimpleNamespace(model_sampling=ModelSamplingFlux(shift=1.15))
    assert node.get_sigma(sd, 0.0, False) == (999999999.9,)
    assert node.get_sigma(sd, 0.0, True)[0] == pytest.approx(14.6146, rel=1e-4)
    assert node.get_sigma(sd, 1.0, True)[0] == pytest.approx(0.0292, rel=1e-2)
    assert node.get_sigma(flux, 0.0, False) == (1.0,) and node.get_sigma(flux, 1.0, False) == (0.0,)
    mid = node.get_sigma(flux, 0.5, False)[0]
    assert mid == pytest.approx(math.exp(1.15) / (math.exp(1.15) + 1.0))
    assert node.get_sigma(flux, 1.0, True)[0] == pytest.approx(float(ModelSamplingFlux(shift=1.15).sigmas[0]))


def _den(x, sigma):
    s = sigma.view(-1, 1, 1, 1)
    return torch.tanh(x) * 0.5 / (1 + s)


def test_lcm_upscale_by_hand():
    (spec,) = SamplerLCMUpscale().get_sampler(2.0, -1, "nearest-exact")
    sig = torch.tensor([10.0, 5.0, 2.0, 1.0, 0.0])
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0)) * 10
    out = spec.run(_den, x, sig, seed=9)
    # ComfyUI's factors: max(len(sigmas) // 2 + 1, 2) = 3 points of linspace(1, 2) without the first
    assert upscale_factors(5, 2.0, None) == pytest.approx([1.5, 2.0])
    gen = torch.Generator().manual_seed(9)
    ref = x
    for i, size in enumerate((6, 8, 8, 8)):
        ref = _den(ref, sig[i:i + 1])
        if i < 2:
            ref = F.interpolate(ref, size=(size, size), mode="nearest-exact")
        if sig[i + 1] > 0:
            ref = ref + sig[i + 1] * torch.randn(ref.shape, generator=gen)
    assert out.shape == (1, 4, 8, 8)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(spec.run(_den, x, sig, seed=9), out, rtol=0, atol=0)
    (spec3,) = SamplerLCMUpscale().get_sampler(3.0, 1, "bislerp")
    assert upscale_factors(5, 3.0, 1) == [3.0] and spec3.run(_den, x, sig, seed=9).shape == (1, 4, 12, 12)
    assert list(np.linspace(1.0, 2.0, 3)[1:]) == pytest.approx([1.5, 2.0])


def test_euler_cfg_pp_versions():
    (regular,) = SamplerEulerCFGpp().get_sampler("regular")
    (alt,) = SamplerEulerCFGpp().get_sampler("alternative")
    assert regular.name == "euler_cfg_pp" and alt.needs_uncond and regular.needs_uncond
    sig = torch.tensor([3.0, 1.0])
    x = torch.randn(1, 2, 2, 2)

    def guided(xx, sigma):
        return _den(xx, sigma), _den(xx, sigma) * 0.5

    d, u = guided(x, sig[:1])
    out = alt.run(guided, x, sig, seed=0)
    torch.testing.assert_close(out, x + (x - 2 * d + u) / 3.0 * (1.0 - 3.0))  # ComfyUI's sample_euler_pp
    torch.testing.assert_close(alt.run(unguided(_den), x, sig, seed=0),
                               x + (x - _den(x, sig[:1])) / 3.0 * (1.0 - 3.0))  # no guidance: plain Euler


def test_lcm_upscale_through_sampler_custom(tmp_path: pathlib.Path):
    from comfy_notebook._session import Session
    from comfy_notebook.nodes import register_builtins
    from comfy_notebook.testing import make_checkpoint

    make_checkpoint(tmp_path / "models" / "checkpoints" / "tiny.safetensors", preset="sd1-tiny", seed=0)
    s = Session(models_dir=tmp_path / "models", output_dir=tmp_path / "out")
    register_builtins(s)
    g = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "10": {"class_type": "SamplerLCMUpscale", "inputs": {"scale_ratio": 1.5, "scale_steps": -1,
                                                              "upscale_method": "bislerp"}},
        "11": {"class_type": "BasicScheduler", "inputs": {"model": ["4", 0], "scheduler": "sgm_uniform",
                                                          "steps": 4, "denoise": 1.0}},
        "12": {"class_type": "SetFirstSigma", "inputs": {"sigmas": ["11", 0], "sigma": 14.0}},
        "3": {"class_type": "SamplerCustom", "inputs": {
            "model": ["4", 0], "add_noise": True, "noise_seed": 1, "cfg": 1.0, "positive": ["6", 0],
            "negative": ["7", 0], "sampler": ["10", 0], "sigmas": ["12", 0], "latent_image": ["5", 0]}},
    }
    a = s.run_prompt(g, targets=["3"]).outputs["3"][0]["samples"]
    assert a.shape == (1, 4, 12, 12) and torch.isfinite(a).all()
    g["3"]["inputs"]["noise_seed"] = 2
    b = Session(models_dir=tmp_path / "models", output_dir=tmp_path / "out2")
    register_builtins(b)
    assert not torch.equal(a, b.run_prompt(g, targets=["3"]).outputs["3"][0]["samples"])
