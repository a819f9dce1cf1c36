"""Rectified-flow ancestral samplers on an analytic flow model (Gaussian data, exact denoiser)."""

from __future__ import annotations

import pytest
import torch

from comfy_notebook.sampling.flow import ModelSamplingDiscreteFlow, ModelSamplingFlux
from comfy_notebook.sampling.samplers import (
    sample_dpmpp_2s_ancestral,
    sample_euler,
    sample_euler_ancestral,
)
from comfy_notebook.sampling.samplers_rf import (
    RF_VARIANTS,
    for_model_sampling,
    is_flow,
    sample_dpm_2_ancestral_RF,
    sample_dpmpp_2s_ancestral_RF,
    sample_euler_ancestral_RF,
)
from comfy_notebook.sampling.schedules import DiscreteSchedule, calculate_sigmas

S = 0.5  # data ~ N(0, S^2)


def _denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """E[x0 | x_sigma] for x_sigma = sigma * noise + (1 - sigma) * x0, x0 ~ N(0, S^2)."""
    s = sigma.view(-1, 1, 1, 1)
    return (1 - s) * S**2 / ((1 - s) ** 2 * S**2 + s**2) * x


def _sigmas(n: int = 30) -> torch.Tensor:
    return calculate_sigmas(ModelSamplingFlux(shift=1.15), "simple", n)


def _noise(n: int = 4000) -> torch.Tensor:
    return torch.randn(n, 1, 1, 1, generator=torch.Generator().manual_seed(0))


def test_eta_zero_is_the_deterministic_euler_path():
    sig = _sigmas()
    x = _noise(8) * sig[0]
    a = sample_euler_ancestral_RF(_denoiser, x, sig, eta=0.0)
    torch.testing.assert_close(a, sample_euler(_denoiser, x, sig), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fn", [sample_euler_ancestral_RF, sample_dpm_2_ancestral_RF, sample_dpmpp_2s_ancestral_RF])
def test_samples_have_the_data_distribution(fn):
    sig = _sigmas(300)  # first-order steps: 30 steps give std 0.41-0.47, 300 within 0.02 of 0.5
    gen = torch.Generator().manual_seed(1)

    def noise_sampler(sigma, sigma_next):
        return torch.randn(4000, 1, 1, 1, generator=gen)

    out = fn(_denoiser, _noise() * sig[0], sig, noise_sampler=noise_sampler)
    assert torch.isfinite(out).all()
    assert abs(out.std().item() - S) < 0.03, out.std()  # the VE ancestral step would be far off


def test_ve_ancestral_steps_are_wrong_for_flow_models():
    sig = _sigmas(300)
    gen = torch.Generator().manual_seed(1)
    out = sample_dpmpp_2s_ancestral(_denoiser, _noise() * sig[0], sig,
                                    noise_sampler=lambda a, b: torch.randn(4000, 1, 1, 1, generator=gen))
    assert abs(out.std().item() - S) > 0.05  # why ComfyUI switches to the RF variants


def test_dispatch_by_model_sampling():
    assert is_flow(ModelSamplingFlux()) and is_flow(ModelSamplingDiscreteFlow(shift=3.0))
    assert not is_flow(DiscreteSchedule())
    assert for_model_sampling("euler_ancestral", sample_euler_ancestral, ModelSamplingFlux()) is sample_euler_ancestral_RF
    assert for_model_sampling("euler_ancestral", sample_euler_ancestral, DiscreteSchedule()) is sample_euler_ancestral
    assert for_model_sampling("euler", sample_euler, ModelSamplingFlux()) is sample_euler
    assert set(RF_VARIANTS) == {"euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral"}
