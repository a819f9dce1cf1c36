"""res_multistep / res_multistep_ancestral: convergence order, eta, noise use."""

from __future__ import annotations

import math

import torch

from comfy_notebook.sampling import SAMPLER_NOISE, SAMPLERS, DiscreteSchedule, calculate_sigmas
from comfy_notebook.sampling.samplers_res import sample_res_multistep_ancestral
from comfy_notebook.sampling.schedules import get_sigmas_exponential

S = DiscreteSchedule()


def test_res_multistep_second_order(nonlinear):
    """Error vs a fine-step reference falls ~4x per halving of the step (Euler: ~2x)."""

    def sig(n):
        return get_sigmas_exponential(n + 1, 0.05, 10.0)[:-1].double()

    x = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(0)).double() * 10
    exact = SAMPLERS["dpmpp_2m"](nonlinear, x, sig(4000))
    errs = [float((SAMPLERS["res_multistep"](nonlinear, x, sig(n)) - exact).abs().max()) for n in (16, 32, 64)]
    orders = [math.log2(errs[i] / errs[i + 1]) for i in range(2)]
    assert all(1.7 < o < 2.3 for o in orders), (errs, orders)


def test_ancestral_eta_zero_is_res_multistep_and_noise_per_step(nonlinear):
    sigmas = calculate_sigmas(S, "karras", 6)
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(1)) * sigmas[0]
    calls = []

    def noise(s, sn):
        calls.append((float(s), float(sn)))
        return torch.ones_like(x)

    a = sample_res_multistep_ancestral(nonlinear, x, sigmas, eta=0.0, noise_sampler=noise)
    torch.testing.assert_close(a, SAMPLERS["res_multistep"](nonlinear, x, sigmas), atol=0, rtol=0)
    calls.clear()
    b = sample_res_multistep_ancestral(nonlinear, x, sigmas, noise_sampler=noise)
    assert calls == [(float(sigmas[i]), float(sigmas[i + 1])) for i in range(5)]  # none on the step to 0
    assert not torch.allclose(a, b)
    assert SAMPLER_NOISE["res_multistep_ancestral"] == "ancestral"
