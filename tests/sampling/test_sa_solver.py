"""SA-Solver: Adams weights against quadrature, reductions to Euler / RES, order, tau window, ksample.

Its sampled distribution (stochastic window on) is checked by the analytic Gaussian test in
test_samplers.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy import integrate

from comfy_notebook.families.sd1 import SD15_LATENT
from comfy_notebook.sampling import (
    SAMPLER_NEEDS_SCHEDULE,
    SAMPLER_NOISE,
    SAMPLERS,
    CFGDenoiser,
    DiscreteSchedule,
    ModelDenoiser,
    SamplingConfigError,
    calculate_sigmas,
    default_noise_sampler,
    ksample,
    resolve_conditioning,
)
from comfy_notebook.sampling.model_sampling import ModelSampling
from comfy_notebook.sampling.samplers_sa import adams_coeffs, sample_sa_solver, tau_window
from comfy_notebook.sampling.schedules import get_sigmas_exponential

S = DiscreteSchedule()
ODE = {"tau_func": lambda sigma: 0.0}


@pytest.mark.parametrize(("n", "tau"), [(1, 0.0), (2, 0.0), (3, 1.0), (4, 0.7)])
def test_adams_weights_integrate_polynomials_exactly(n, tau):
    """sum_j b_j p(lambda_j) = alpha_t k int_s^t e^(-k (t - lambda)) p(lambda) dlambda for deg p < n."""
    lambdas = [-0.9, -0.4, 0.1, 0.35][-n:]
    lam_s, lam_t, sigma_t = 0.35, 0.8, math.exp(-0.8)
    k = 1 + tau * tau
    b = adams_coeffs(sigma_t, lambdas, lam_s, lam_t, tau)
    alpha_t = sigma_t * math.exp(lam_t)
    for p in range(n):
        exact = alpha_t * k * integrate.quad(lambda v, p=p: math.exp(-k * (lam_t - v)) * v**p, lam_s, lam_t)[0]
        assert sum(bj * lj**p for bj, lj in zip(b, lambdas, strict=True)) == pytest.approx(exact, rel=1e-9, abs=1e-12)


def test_simple_order_2_weights_hand_computed():
    lam, s, t, tau = [-0.2, 0.3], 0.3, 0.9, 1.0
    k, h, alpha = 2.0, 0.6, math.exp(-0.9) * math.exp(0.9)
    whole = alpha * (1 - math.exp(-k * h))
    corr = adams_coeffs(math.exp(-0.9), lam, s, t, tau, simple_order_2=True, corrector=True)
    assert corr == pytest.approx([whole - alpha * 0.5 * k * h, alpha * 0.5 * k * h])
    pred = adams_coeffs(math.exp(-0.9), lam, s, t, tau, simple_order_2=True, corrector=False)
    older = alpha * 0.5 * k * h * h / (lam[0] - s)
    assert pred == pytest.approx([older, whole - older])


def test_order_one_ode_is_euler(nonlinear):
    """Predictor order 1, no corrector, tau 0: x_t = (sigma_t / sigma_s) x + (1 - sigma_t / sigma_s) D = Euler."""
    sigmas = calculate_sigmas(S, "karras", 8)
    x = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(0)) * sigmas[0]
    ours = sample_sa_solver(nonlinear, x, sigmas, predictor_order=1, corrector_order=0, **ODE)
    torch.testing.assert_close(ours, SAMPLERS["euler"](nonlinear, x, sigmas), atol=1e-5, rtol=1e-5)


def test_order_two_predictor_ode_is_res_multistep(nonlinear):
    """Predictor order 2, tau 0: the exponential Adams-Bashforth-2 step of res_multistep (final sigma > 0)."""
    sigmas = calculate_sigmas(S, "karras", 8)[:-1]
    x = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(0)) * sigmas[0]
    ours = sample_sa_solver(nonlinear, x, sigmas, predictor_order=2, corrector_order=0, **ODE)
    # ComfyUI returns the last corrected state: here the one at sigmas[-2]
    ref = SAMPLERS["res_multistep"](nonlinear, x, sigmas[:-1])
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_ode_convergence_order(nonlinear):
    """As an ODE solver the default (predictor 3, corrector 4) converges at order ~2 on a grid ending at 0
    (the final steps drop to order 1, as ComfyUI's); predictor order 1 alone at order ~1."""

    def sig(n):
        return get_sigmas_exponential(n + 1, 0.05, 10.0).double()  # ..., 0.05, 0

    x = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(0)).double() * 10
    exact = SAMPLERS["dpmpp_2m"](nonlinear, x, sig(4000))
    for kw, low, high in (({}, 1.8, 2.3), ({"predictor_order": 1, "corrector_order": 0}, 0.9, 1.2)):
        errs = [float((sample_sa_solver(nonlinear, x, sig(n), **ODE, **kw) - exact).abs().max()) for n in (16, 32, 64)]
        orders = [math.log2(errs[i] / errs[i + 1]) for i in range(2)]
        assert all(low < o < high for o in orders), (kw, errs, orders)


def test_default_tau_window_from_schedule_and_noise_draws(nonlinear):
    sigmas = calculate_sigmas(S, "karras", 10)
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(1)) * sigmas[0]
    start, end = S.percent_to_sigma(0.2), S.percent_to_sigma(0.8)
    calls = []

    def noise(s, sn):
        calls.append(float(sn))
        return torch.ones_like(x)

    a = sample_sa_solver(nonlinear, x, sigmas, schedule=S, noise_sampler=noise)
    assert calls == [s for s in sigmas[1:].tolist() if end <= s <= start] and 0 < len(calls) < 9
    b = sample_sa_solver(nonlinear, x, sigmas, tau_func=tau_window(start, end), noise_sampler=noise)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    c = sample_sa_solver(nonlinear, x, sigmas, schedule=S, noise_sampler=noise, s_noise=0.0)
    assert not torch.allclose(a, c)
    assert tau_window(start, end, eta=0.0)(start) == 0.0
    with pytest.raises(SamplingConfigError, match=r"schedule.*tau_func"):
        sample_sa_solver(nonlinear, x, sigmas)
    assert {"sa_solver", "sa_solver_pece"} == SAMPLER_NEEDS_SCHEDULE
    assert SAMPLER_NOISE["sa_solver"] == SAMPLER_NOISE["sa_solver_pece"] == "ancestral"


def test_pece_evaluates_twice_per_corrected_step(gaussian):
    sigmas = calculate_sigmas(S, "karras", 6)
    x = torch.randn(1, 1, 2, 2) * sigmas[0]
    model = gaussian()
    SAMPLERS["sa_solver"](model, x, sigmas, schedule=S)
    assert model.calls == 6
    model = gaussian()
    SAMPLERS["sa_solver_pece"](model, x, sigmas, schedule=S)
    assert model.calls == 6 + 5  # every step but the first is corrected, then re-evaluated


def test_ksample_passes_schedule_and_seeded_noise():
    def apply_model(x, t, context, **kw):
        return torch.tanh(x) * 0.5 + context.mean() * t.view(-1, 1, 1, 1) / 1000.0

    def ctx(v):
        return torch.full((1, 5, 8), float(v))

    got = ksample(apply_model, model_sampling=ModelSampling(S), latent_format=SD15_LATENT, latent={"samples": torch.zeros(1, 4, 8, 8)},
                  positive=[[ctx(1.0), {}]], negative=[[ctx(-1.0), {}]], seed=5, steps=8, cfg=4.0,
                  sampler_name="sa_solver", scheduler="karras")["samples"]
    sigmas = calculate_sigmas(S, "karras", 8)
    pos, neg = resolve_conditioning([[ctx(1.0), {}]], [[ctx(-1.0), {}]], (8, 8), S)
    model = CFGDenoiser(ModelDenoiser(apply_model, ModelSampling(S, "eps")), pos, neg, 4.0)
    torch.manual_seed(5)
    x = torch.randn(1, 4, 8, 8) * math.sqrt(1 + float(sigmas[0]) ** 2)
    ref = sample_sa_solver(model, x, sigmas, schedule=S, noise_sampler=default_noise_sampler(x, 5))
    torch.testing.assert_close(got, ref / 0.18215, atol=1e-5, rtol=1e-5)
