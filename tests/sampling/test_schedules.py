from __future__ import annotations

import math

import pytest
import torch

from comfy_notebook.sampling import (
    DiscreteSchedule,
    SamplingConfigError,
    calculate_sigmas,
    ksampler_sigmas,
)

S = DiscreteSchedule()


def test_schedule_matches_diffusers_scaled_linear():
    from diffusers import EulerDiscreteScheduler

    d = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    ref = ((1 - d.alphas_cumprod) / d.alphas_cumprod) ** 0.5
    torch.testing.assert_close(S.sigmas, ref.float(), rtol=1e-6, atol=1e-6)


def test_timestep_sigma_roundtrip_and_percent():
    t = torch.tensor([0.0, 10.0, 999.0])
    assert S.timestep(S.sigma(t)).tolist() == [0, 10, 999]
    mid = S.sigma(torch.tensor(10.5))
    assert math.isclose(float(mid.log()), float((S.log_sigmas[10] + S.log_sigmas[11]) / 2), rel_tol=1e-6)
    assert S.percent_to_sigma(0.0) == 999999999.9 and S.percent_to_sigma(1.0) == 0.0
    assert math.isclose(S.percent_to_sigma(0.5), float(S.sigma(torch.tensor(499.5))), rel_tol=1e-6)


@pytest.mark.parametrize("n", [1, 5, 20])
def test_karras_exponential_equal_kdiffusion(kdiff, n):
    lo, hi = float(S.sigma_min), float(S.sigma_max)
    torch.testing.assert_close(calculate_sigmas(S, "karras", n), kdiff.get_sigmas_karras(n, lo, hi), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(calculate_sigmas(S, "exponential", n), kdiff.get_sigmas_exponential(n, lo, hi), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("steps", [4, 20, 30])
def test_normal_and_karras_equal_diffusers(steps):
    from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler

    base = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    e = EulerDiscreteScheduler(timestep_spacing="linspace", **base)
    e.set_timesteps(steps)
    torch.testing.assert_close(calculate_sigmas(S, "normal", steps), e.sigmas.float(), atol=1e-5, rtol=1e-5)
    k = EulerDiscreteScheduler(use_karras_sigmas=True, **base)
    k.set_timesteps(steps)
    torch.testing.assert_close(calculate_sigmas(S, "karras", steps), k.sigmas.float(), atol=1e-5, rtol=1e-5)
    dp = DPMSolverMultistepScheduler(use_karras_sigmas=True, algorithm_type="dpmsolver++", solver_order=2,
                                     final_sigmas_type="zero", lower_order_final=True, **base)
    dp.set_timesteps(steps)
    torch.testing.assert_close(calculate_sigmas(S, "karras", steps), dp.sigmas.float(), atol=1e-5, rtol=1e-5)


def test_formulas_of_index_schedulers():
    sig = S.sigmas
    simple = calculate_sigmas(S, "simple", 4)
    assert simple.tolist() == pytest.approx([float(sig[-1]), float(sig[-251]), float(sig[-501]), float(sig[-751]), 0.0])
    ddim = calculate_sigmas(S, "ddim_uniform", 4)
    assert ddim.tolist() == pytest.approx([float(sig[751]), float(sig[501]), float(sig[251]), float(sig[1]), 0.0])
    sgm = calculate_sigmas(S, "sgm_uniform", 4)
    ts = torch.linspace(999, 0, 5)[:-1]
    assert sgm[:-1].tolist() == pytest.approx([float(S.sigma(t)) for t in ts]) and sgm[-1] == 0
    kl = calculate_sigmas(S, "kl_optimal", 3)
    lo, hi = math.atan(float(S.sigma_min)), math.atan(float(S.sigma_max))
    assert kl.tolist() == pytest.approx([math.tan(hi), math.tan((lo + hi) / 2), math.tan(lo), 0.0], rel=1e-5)
    lq = calculate_sigmas(S, "linear_quadratic", 1)
    assert lq.tolist() == pytest.approx([float(S.sigma_max), 0.0])
    beta = calculate_sigmas(S, "beta", 10)
    assert beta[0] == S.sigma_max and beta[-1] == 0 and bool((beta[1:] < beta[:-1]).all())


def test_ksampler_denoise_and_discard_penultimate():
    full = calculate_sigmas(S, "normal", 40)
    torch.testing.assert_close(ksampler_sigmas(S, "normal", "euler", 20, denoise=0.5), full[-21:])
    assert len(ksampler_sigmas(S, "normal", "euler", 20, denoise=0.0)) == 0
    d2 = ksampler_sigmas(S, "karras", "dpm_2", 10)
    ref = calculate_sigmas(S, "karras", 11)
    torch.testing.assert_close(d2, torch.cat([ref[:-2], ref[-1:]]))
    assert len(d2) == 11


def test_unknown_scheduler_error():
    with pytest.raises(SamplingConfigError, match=r"unknown scheduler 'foo'.*karras"):
        calculate_sigmas(S, "foo", 10)
