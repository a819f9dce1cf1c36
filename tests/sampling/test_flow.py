"""Flow-matching model sampling against ComfyUI's formulas and diffusers' FlowMatchEulerDiscreteScheduler."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from comfy_notebook.sampling.flow import (
    FlowDenoiser,
    ModelSamplingDiscreteFlow,
    ModelSamplingFlux,
    flux_shift,
    flux_time_shift,
)
from comfy_notebook.sampling.schedules import SCHEDULERS, calculate_sigmas


def test_sd3_shift_matches_diffusers():
    from diffusers import FlowMatchEulerDiscreteScheduler

    ms = ModelSamplingDiscreteFlow(shift=3.0)
    s = np.linspace(1.0, 1 / 20, 20)
    ref = FlowMatchEulerDiscreteScheduler(shift=3.0)
    ref.set_timesteps(sigmas=s)
    ours = ms.sigma(torch.tensor(s) * 1000)
    assert torch.allclose(ours.float(), ref.sigmas[:-1].float(), atol=1e-6)
    assert ms.timestep(torch.tensor(0.5)) == 500.0
    assert math.isclose(float(ms.sigma_max), 1.0) and math.isclose(float(ms.sigma_min), 3e-3 / (1 + 2e-3), rel_tol=1e-5)


@pytest.mark.parametrize(("w", "h"), [(1024, 1024), (512, 512), (1344, 768)])
def test_flux_dynamic_shift_matches_diffusers(w, h):
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    mu = flux_shift(w, h)
    seq_len = (w // 16) * (h // 16)  # 2x2 patches of the 8x-downscaled latent
    assert math.isclose(mu, calculate_shift(seq_len), rel_tol=1e-12)
    ref = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
    s = np.linspace(1.0, 1 / 28, 28)
    ref.set_timesteps(sigmas=s, mu=mu)
    ours = ModelSamplingFlux(shift=mu).sigma(torch.tensor(s))
    assert torch.allclose(ours.float(), ref.sigmas[:-1].float(), atol=1e-6)
    assert math.isclose(flux_shift(1024, 1024), 1.15) and math.isclose(flux_shift(256, 256), 0.5)


def test_const_parameterisation():
    ms = ModelSamplingFlux()
    x0, noise = torch.randn(2, 16, 4, 4), torch.randn(2, 16, 4, 4)
    sigma = torch.tensor([0.3, 0.8])
    xt = ms.noise_scaling(sigma, noise, x0)
    assert torch.allclose(xt[1], 0.8 * noise[1] + 0.2 * x0[1], atol=1e-6)
    v = noise - x0  # the exact velocity
    assert torch.allclose(ms.calculate_denoised(sigma, v, xt), x0, atol=1e-6)
    assert torch.equal(ms.calculate_input(sigma, xt), xt)
    assert torch.allclose(ms.inverse_noise_scaling(torch.tensor([0.5]), torch.ones(1, 2)), torch.full((1, 2), 2.0))


def test_percent_to_sigma_and_training_sigmas():
    flux, sd3 = ModelSamplingFlux(shift=1.15), ModelSamplingDiscreteFlow(shift=3.0)
    assert flux.percent_to_sigma(0.0) == 1.0 and flux.percent_to_sigma(1.0) == 0.0
    assert math.isclose(flux.percent_to_sigma(0.5), flux_time_shift(1.15, 1.0, 0.5))
    assert math.isclose(sd3.percent_to_sigma(0.25), 3 * 0.75 / (1 + 2 * 0.75))
    assert len(flux.sigmas) == 10000 and len(sd3.sigmas) == 1000
    assert torch.all(flux.sigmas[1:] > flux.sigmas[:-1])
    assert flux == ModelSamplingFlux(shift=1.15) and hash(flux) == hash(ModelSamplingFlux(shift=1.15))
    schnell = ModelSamplingDiscreteFlow(shift=1.0, multiplier=1.0)
    assert float(schnell.timestep(torch.tensor(0.25))) == 0.25


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_every_scheduler_runs_on_flow_models(scheduler):
    for ms in (ModelSamplingFlux(shift=1.15), ModelSamplingDiscreteFlow(shift=3.0)):
        sig = calculate_sigmas(ms, scheduler, 8)
        assert sig[-1] == 0 and torch.isfinite(sig).all(), (scheduler, sig)
        assert float(sig[0]) <= 1.0 + 1e-6 and bool((sig[:-1] >= sig[1:]).all())


def test_simple_schedule_as_comfyui():
    ms = ModelSamplingFlux(shift=1.15)
    sig = calculate_sigmas(ms, "simple", 4)
    ss = 10000 / 4
    expected = [float(ms.sigmas[-(1 + int(x * ss))]) for x in range(4)] + [0.0]
    assert sig.tolist() == pytest.approx(expected, abs=0)
    assert sig[0] == 1.0


def test_flow_denoiser_passes_sigma_as_timestep():
    seen = {}

    def apply_model(x, t, context, **kw):
        seen.update(t=t, kw=kw)
        return torch.ones_like(x)

    d = FlowDenoiser(apply_model, ModelSamplingFlux())
    x = torch.zeros(1, 16, 2, 2)
    out = d(x, torch.tensor([0.25]), torch.zeros(1, 3, 8), guidance=torch.tensor([3.5]))
    assert torch.equal(seen["t"], torch.tensor([0.25])) and "guidance" in seen["kw"]
    assert torch.allclose(out, torch.full_like(x, -0.25))
    d_sd3 = FlowDenoiser(apply_model, ModelSamplingDiscreteFlow(shift=3.0))
    d_sd3(x, torch.tensor([0.25]), torch.zeros(1, 3, 8))
    assert torch.equal(seen["t"], torch.tensor([250.0]))
