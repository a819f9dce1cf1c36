"""seeds_2, seeds_3, er_sde: noise use per step, convergence without noise, seeding.

Their sampled distribution is checked by the analytic Gaussian test in test_samplers.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from comfy_notebook.families.sd1 import SD15_LATENT
from comfy_notebook.sampling import (
    SAMPLER_NOISE,
    SAMPLERS,
    DiscreteSchedule,
    calculate_sigmas,
    ksample,
)
from comfy_notebook.sampling.model_sampling import ModelSampling
from comfy_notebook.sampling.samplers_exp import sample_seeds_2, sample_seeds_3
from comfy_notebook.sampling.schedules import get_sigmas_exponential

S = DiscreteSchedule()


@pytest.mark.parametrize(("name", "draws"), [("seeds_2", 2), ("seeds_3", 3), ("er_sde", 1)])
def test_noise_draws_per_step(nonlinear, name, draws):
    """SEEDS draws once per stage, ER-SDE once per step; none on the step to sigma 0."""
    sigmas = calculate_sigmas(S, "karras", 5)
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(1)) * sigmas[0]
    calls = []

    def noise(s, sn):
        calls.append((float(s), float(sn)))
        return torch.zeros_like(x)

    SAMPLERS[name](nonlinear, x, sigmas, noise_sampler=noise)
    assert len(calls) == draws * 4
    assert calls[0][0] == pytest.approx(float(sigmas[0])) and calls[-1][1] == pytest.approx(float(sigmas[4]))
    assert SAMPLER_NOISE[name] == "ancestral"


def test_seeds_eta_zero_is_deterministic_and_second_order(nonlinear):
    """Without noise SEEDS-2 is a 2-stage exponential integrator (order 2), SEEDS-3 order 3."""

    def sig(n):
        return get_sigmas_exponential(n + 1, 0.05, 10.0)[:-1].double()

    x = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(0)).double() * 10
    exact = SAMPLERS["dpmpp_2m"](nonlinear, x, sig(4000))
    for fn, low, high in ((sample_seeds_2, 1.7, 2.4), (sample_seeds_3, 2.6, 3.5)):
        errs = [float((fn(nonlinear, x, sig(n), eta=0.0) - exact).abs().max()) for n in (8, 16, 32)]
        orders = [math.log2(errs[i] / errs[i + 1]) for i in range(2)]
        assert all(low < o < high for o in orders), (fn.__name__, errs, orders)


def test_ksample_seeded_ancestral_noise_for_seeds():
    def run(seed):
        def apply_model(x, t, context, **kw):
            return torch.tanh(x) * 0.5

        return ksample(apply_model, model_sampling=ModelSampling(S), latent_format=SD15_LATENT, latent={"samples": torch.zeros(1, 4, 4, 4)},
                       positive=[[torch.ones(1, 3, 8), {}]], negative=[[torch.zeros(1, 3, 8), {}]], seed=seed,
                       steps=4, cfg=3.0, sampler_name="seeds_2", scheduler="karras")["samples"]

    torch.testing.assert_close(run(3), run(3), atol=0, rtol=0)
    assert not torch.allclose(run(3), run(4))
