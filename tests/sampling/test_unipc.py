"""UniPC (``uni_pc``, ``uni_pc_bh2``): against diffusers' UniPCMultistepScheduler, convergence, quirks."""

from __future__ import annotations

import math

import pytest
import torch

from comfy_notebook.families.sd1 import SD15_LATENT
from comfy_notebook.sampling import (
    SAMPLERS,
    DiscreteSchedule,
    SamplingConfigError,
    calculate_sigmas,
    ksample,
)
from comfy_notebook.sampling.model_sampling import ModelSampling
from comfy_notebook.sampling.schedules import get_sigmas_exponential

S = DiscreteSchedule()


def _diffusers_unipc(model, x, sigmas, solver_type):
    """Drive diffusers' UniPCMultistepScheduler with our denoiser on ComfyUI's sigma grid."""
    from diffusers import UniPCMultistepScheduler

    sv = sigmas.clone()
    if float(sv[-1]) == 0:
        sv[-1] = 0.001  # ComfyUI's end point
    n = len(sv) - 1
    sched = UniPCMultistepScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", solver_order=min(3, n - 1),
        solver_type=solver_type, predict_x0=True, lower_order_final=True, prediction_type="sample",
    )
    sched.set_timesteps(n)
    sched.sigmas = sv.float()  # the same grid as ours, ending at 0.001 instead of 0
    sched.timesteps = torch.arange(n, 0, -1) * 10  # only used to find the step index
    sample = x / (1 + sv[0] ** 2) ** 0.5  # VP scale
    for i, t in enumerate(sched.timesteps):
        s = sv[i]
        denoised = model(sample * (1 + s**2) ** 0.5, s.expand(x.shape[0]))
        sample = sched.step(denoised, t, sample).prev_sample
    return sample * (1 + sv[-1] ** 2) ** 0.5  # back to the k-diffusion scale


@pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers.*")
@pytest.mark.parametrize("steps", [3, 4, 8, 20])
@pytest.mark.parametrize(("name", "solver_type"), [("uni_pc", "bh1"), ("uni_pc_bh2", "bh2")])
def test_equals_diffusers_unipc(nonlinear, name, solver_type, steps):
    """Equal to diffusers' UniPCMultistepScheduler configured as ComfyUI's call.

    Same: solver_type (bh1/bh2), predict_x0=True, lower_order_final=True, solver_order =
    min(3, steps - 1) (ComfyUI's ``order``), the predictor/corrector weights, warm-up orders and the
    reuse of the evaluation at the predicted point for the corrector.  Made equal by hand: the sigma
    grid (diffusers builds its own from timesteps; we overwrite ``sigmas`` with ComfyUI's, whose
    final 0 becomes 0.001 as in ComfyUI; diffusers' own final sigma 0 would give NaN with bh1) and
    the parameterisation (diffusers works on VP-scaled samples with ``prediction_type="sample"``;
    we feed it our denoiser at x * sqrt(1 + sigma^2) and scale its result back).  Not equal: float32
    rounding (diffusers computes its coefficients per step in float32, we in float64 on the host),
    ~1e-7 here.
    """
    sigmas = calculate_sigmas(S, "karras", steps)
    x = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(0)) * sigmas[0]
    ref = _diffusers_unipc(nonlinear, x.clone(), sigmas, solver_type)
    ours = SAMPLERS[name](nonlinear, x.clone(), sigmas)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ["uni_pc", "uni_pc_bh2"])
def test_convergence_order_two(nonlinear, name):
    """Error vs a fine-step reference falls ~4x per halving of the step (global order 2).

    UniPC-3 with the corrector is order 4 per step inside the run, but ComfyUI's lower_order_final
    makes the last update a first-order predictor without corrector (local error O(h^2)), which
    bounds the global order at 2.  Euler must be clearly worse (order 1).
    """

    def sig(n):  # no final 0: every step shrinks as n grows
        return get_sigmas_exponential(n + 1, 0.05, 10.0)[:-1].double()

    x = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(0)).double() * 10
    exact = SAMPLERS["dpmpp_2m"](nonlinear, x, sig(4000))  # an independent solver, error ~1e-8
    errs = [float((SAMPLERS[name](nonlinear, x, sig(n)) - exact).abs().max()) for n in (16, 32, 64)]
    orders = [math.log2(errs[i] / errs[i + 1]) for i in range(2)]
    assert all(1.8 < o < 2.3 for o in orders), (errs, orders)
    euler = float((SAMPLERS["euler"](nonlinear, x, sig(64)) - exact).abs().max())
    assert errs[-1] < euler / 10


def test_ends_at_sigma_0_001_and_one_step_quirk(gaussian):
    """A final sigma 0 is treated as 0.001; one step makes no update (ComfyUI returns rescaled x)."""
    model = gaussian(0.5, 0.7)
    x = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(2)) * 10
    sig = torch.tensor([10.0, 0.0])
    out = SAMPLERS["uni_pc"](model, x, sig)
    torch.testing.assert_close(out, x * math.sqrt(1 + 0.001**2) / math.sqrt(1 + 100.0))
    assert model.calls == 1  # the evaluation ComfyUI makes before its (empty) update loop
    a = SAMPLERS["uni_pc"](model, x, torch.tensor([10.0, 1.0, 0.1, 0.0]))
    b = SAMPLERS["uni_pc"](model, x, torch.tensor([10.0, 1.0, 0.1, 0.001]))
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_one_model_call_per_step_and_callback(nonlinear):
    calls, seen = [0], []

    def counted(x, s):
        calls[0] += 1
        return nonlinear(x, s)

    sigmas = calculate_sigmas(S, "karras", 7)
    SAMPLERS["uni_pc_bh2"](counted, torch.randn(1, 4, 4, 4) * sigmas[0], sigmas, callback=seen.append)
    assert calls[0] == 7
    assert [s.step for s in seen] == list(range(7)) and all(s.total == 7 for s in seen)
    assert [float(s.sigma) for s in seen] == pytest.approx(sigmas[:-1].tolist())


def test_bad_variant_message():
    from comfy_notebook.sampling.samplers_unipc import sample_uni_pc

    with pytest.raises(SamplingConfigError, match="'bh1' or 'bh2'"):
        sample_uni_pc(lambda x, s: x, torch.zeros(1, 1, 1, 1), torch.tensor([1.0, 0.0]), variant="bh3")


def test_ksample_discards_penultimate_sigma():
    """KSampler gives uni_pc steps + 1 sigmas with the penultimate dropped (one call per step)."""
    calls = []

    def apply_model(x, t, context, **kw):
        calls.append(t.clone())
        return torch.tanh(x) * 0.5

    ksample(apply_model, model_sampling=ModelSampling(S), latent_format=SD15_LATENT, latent={"samples": torch.zeros(1, 4, 4, 4)},
            positive=[[torch.ones(1, 3, 8), {}]], negative=[[torch.zeros(1, 3, 8), {}]], seed=0, steps=5,
            cfg=1.0, sampler_name="uni_pc", scheduler="normal")
    full = calculate_sigmas(S, "normal", 6)
    expected = torch.cat([full[:-2], full[-1:]])[:-1]
    assert len(calls) == 5
    torch.testing.assert_close(torch.cat(calls).float(), S.timestep(expected).float())
