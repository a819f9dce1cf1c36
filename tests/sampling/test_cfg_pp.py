"""CFG++ samplers: hand-computed steps, reduction to the base samplers, the guided CFG denoiser, ksample.

Their sampled distribution is checked by the analytic Gaussian test in test_samplers.py.  The
one-off comparison with ComfyUI a125cd8's own functions is recorded in the commit / report.
"""

from __future__ import annotations

import math

import pytest
import torch

from comfy_notebook.families.sd1 import SD15_LATENT
from comfy_notebook.sampling import (
    SAMPLER_NEEDS_UNCOND,
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
    unguided,
)
from comfy_notebook.sampling.model_sampling import ModelSampling

S = DiscreteSchedule()
W = 1.7  # guidance scale of the toy guided model


def _cond(x, sigma):
    sig = sigma.view(-1, 1, 1, 1)
    return torch.tanh(x * 0.3) / (1 + sig) + 0.1 * x.roll(1, dims=-1) / (1 + sig**2)


def _uncond(x, sigma):
    sig = sigma.view(-1, 1, 1, 1)
    return torch.tanh(x * 0.2 + 0.1) / (1 + sig) - 0.05 * x.roll(1, dims=-2) / (1 + sig**2)


def guided(x, sigma):
    """Toy guided denoiser: (CFG result, unconditional prediction), cond != uncond."""
    c, u = _cond(x, sigma), _uncond(x, sigma)
    return u + (c - u) * W, u


def _pair(x, s):
    return guided(x, torch.full((x.shape[0],), float(s), dtype=x.dtype))


def _x(seed=0, scale=3.0):
    return torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


def _sig(*v):
    return torch.tensor(v, dtype=torch.float64)


def test_euler_cfg_pp_single_step_and_step_to_zero():
    """x_next = denoised + sigma_next * (x - uncond_denoised) / sigma; a step to 0 returns denoised."""
    x = _x()
    d, u = _pair(x, 3.0)
    out = SAMPLERS["euler_cfg_pp"](guided, x, _sig(3.0, 1.2))
    torch.testing.assert_close(out, d + 1.2 * (x - u) / 3.0)
    torch.testing.assert_close(SAMPLERS["euler_cfg_pp"](guided, x, _sig(3.0, 0.0)), d)


def test_euler_ancestral_cfg_pp_single_step():
    x, z = _x(), _x(1, 1.0)
    s0, s1 = 3.0, 1.2
    d, u = _pair(x, s0)
    up = min(s1, math.sqrt(s1**2 * (s0**2 - s1**2) / s0**2))
    down = math.sqrt(s1**2 - up**2)
    out = SAMPLERS["euler_ancestral_cfg_pp"](guided, x, _sig(s0, s1), noise_sampler=lambda a, b: z)
    torch.testing.assert_close(out, d + down * (x - u) / s0 + up * z)


@pytest.mark.parametrize("midpoint_uncond", [True, False])
def test_dpmpp_2s_ancestral_cfg_pp_single_step(midpoint_uncond):
    """eta = 0 (no noise): midpoint sqrt(s0 s1); ComfyUI shifts the final update by the midpoint's uncond."""
    x, s0, s1 = _x(), 3.0, 1.2
    d, u = _pair(x, s0)
    sm = math.sqrt(s0 * s1)
    x2 = (sm / s0) * (x + d - u) + (1 - sm / s0) * d
    d2, u2 = _pair(x2, sm)
    expected = (s1 / s0) * (x + d - (u2 if midpoint_uncond else u)) + (1 - s1 / s0) * d2
    out = SAMPLERS["dpmpp_2s_ancestral_cfg_pp"](guided, x, _sig(s0, s1), eta=0.0, midpoint_uncond=midpoint_uncond)
    torch.testing.assert_close(out, expected)


def test_dpmpp_2m_cfg_pp_two_steps():
    x0, (s0, s1, s2) = _x(), (3.0, 1.2, 0.4)
    d0, u0 = _pair(x0, s0)
    x1 = d0 + (s1 / s0) * (x0 - u0)
    d1, u1 = _pair(x1, s1)
    r = math.log(s0 / s1) / math.log(s1 / s2)  # h_last / h
    x2 = d1 + (s2 / s1) * (x1 - u1) + (1 - s2 / s1) / (2 * r) * (d1 - u0)
    torch.testing.assert_close(SAMPLERS["dpmpp_2m_cfg_pp"](guided, x0, _sig(s0, s1, s2)), x2)


def test_gradient_estimation_cfg_pp_two_steps():
    x0, (s0, s1, s2), gamma = _x(), (3.0, 1.2, 0.4), 2.0
    d0, u0 = _pair(x0, s0)
    e0 = (x0 - u0) / s0
    x1 = d0 + e0 * s1
    d1, u1 = _pair(x1, s1)
    e1 = (x1 - u1) / s1
    x2 = d1 + e1 * s2 + (gamma - 1) * (e1 - e0) * (s2 - s1)
    torch.testing.assert_close(SAMPLERS["gradient_estimation_cfg_pp"](guided, x0, _sig(s0, s1, s2)), x2)


def test_res_multistep_cfg_pp_two_steps():
    """Second step: exponential integrator of the line through the last two uncond predictions."""
    x0, (s0, s1, s2) = _x(), (3.0, 1.2, 0.4)
    d0, u0 = _pair(x0, s0)
    x1 = d0 + (x0 - u0) / s0 * s1
    d1, u1 = _pair(x1, s1)
    h, h_last = math.log(s1 / s2), math.log(s0 / s1)
    phi1, phi2 = -math.expm1(-h) / h, (h - 1 + math.exp(-h)) / h**2
    x2 = math.exp(-h) * (x1 + d1 - u1) + h * ((phi1 + phi2 * h / h_last) * u1 - phi2 * h / h_last * u0)
    torch.testing.assert_close(SAMPLERS["res_multistep_cfg_pp"](guided, x0, _sig(s0, s1, s2)), x2)


BASE = {"euler_cfg_pp": "euler", "euler_ancestral_cfg_pp": "euler_ancestral",
        "dpmpp_2s_ancestral_cfg_pp": "dpmpp_2s_ancestral", "dpmpp_2m_cfg_pp": "dpmpp_2m",
        "res_multistep_cfg_pp": "res_multistep", "res_multistep_ancestral_cfg_pp": "res_multistep_ancestral",
        "gradient_estimation_cfg_pp": "gradient_estimation"}


@pytest.mark.parametrize("name", sorted(BASE))
def test_without_guidance_equals_base_sampler(nonlinear, name):
    """uncond == denoised: CFG++ is its base sampler (those match k-diffusion / ComfyUI)."""
    assert set(BASE) == SAMPLER_NEEDS_UNCOND
    sigmas = calculate_sigmas(S, "karras", 8)
    x = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(0)) * sigmas[0]
    kw = {}
    if name == "dpmpp_2s_ancestral_cfg_pp":
        kw["midpoint_uncond"] = False

    def noise():
        g = torch.Generator().manual_seed(3)
        return lambda s, sn: torch.randn(x.shape, generator=g)

    ours = SAMPLERS[name](unguided(nonlinear), x, sigmas, noise_sampler=noise(), **kw)
    ref = SAMPLERS[BASE[name]](nonlinear, x, sigmas, noise_sampler=noise())
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=2e-5)
    assert SAMPLER_NOISE.get(name) == SAMPLER_NOISE.get(BASE[name])


def test_comfy_dpmpp_2s_ancestral_cfg_pp_differs_without_guidance(nonlinear):
    sigmas = calculate_sigmas(S, "karras", 6)
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(2)) * sigmas[0]
    a = SAMPLERS["dpmpp_2s_ancestral_cfg_pp"](unguided(nonlinear), x, sigmas, eta=0.0)
    b = SAMPLERS["dpmpp_2s_ancestral"](nonlinear, x, sigmas, eta=0.0)
    assert (a - b).abs().max() > 1e-3


def test_plain_denoiser_is_refused_with_a_fix(nonlinear):
    sigmas = calculate_sigmas(S, "karras", 3)
    with pytest.raises(SamplingConfigError, match=r"\(denoised, uncond_denoised\).*received Tensor.*unguided"):
        SAMPLERS["euler_cfg_pp"](nonlinear, torch.zeros(2, 4, 4, 4), sigmas)


class Stub:
    """apply_model stub: eps depends on x, timestep and the context's mean; records batch sizes."""

    def __init__(self):
        self.batches = []

    def __call__(self, x, t, context, **kw):
        self.batches.append(x.shape[0])
        c = context.mean(dim=(1, 2)).view(-1, 1, 1, 1)
        return torch.tanh(x) * 0.5 + c * (t.view(-1, 1, 1, 1) / 1000.0)


def _ctx(v):
    return torch.full((1, 5, 8), float(v))


@pytest.mark.parametrize("cfg", [1.0, 6.0])
def test_guided_cfg_denoiser_fast_and_general(cfg):
    md = ModelDenoiser(Stub(), ModelSampling(S, "eps"))
    pos, neg = resolve_conditioning([[_ctx(1.0), {}]], [[_ctx(-2.0), {}]], (4, 4), S)
    fast = CFGDenoiser(md, pos, neg, cfg, keep_uncond=True)
    general = CFGDenoiser(md, pos, neg, cfg, fast_path=False, keep_uncond=True)
    assert fast.fast and not general.fast
    x, sigma = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1)), torch.full((2,), 2.5)
    d, u = fast.guided(x, sigma)
    dg, ug = general.guided(x, sigma)
    torch.testing.assert_close((d, u), (dg, ug), atol=0, rtol=0)
    torch.testing.assert_close(u, md(x, sigma, _ctx(-2.0).expand(2, 5, 8)), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(d, fast(x, sigma), atol=0, rtol=0)  # __call__ is the same CFG result
    assert md.apply_model.batches[0] == 4  # the negative prompt is evaluated even at cfg 1
    with pytest.raises(SamplingConfigError, match="keep_uncond=True"):
        CFGDenoiser(md, pos, neg, 1.0).guided(x, sigma)


def _run(name, cfg, negative=-1.0, model=None, **kw):
    model = model or Stub()
    out = ksample(model, model_sampling=ModelSampling(S), latent_format=SD15_LATENT, latent=kw.pop("latent", {"samples": torch.zeros(1, 4, 8, 8)}),
                  positive=[[_ctx(1.0), {}]], negative=[[_ctx(negative), {}]], seed=7, steps=4, cfg=cfg,
                  sampler_name=name, scheduler="karras", **kw)
    return out["samples"], model


def test_ksample_cfg_pp_uses_uncond_at_cfg_one():
    """ComfyUI disables the cfg-1 shortcut for CFG++: the negative prompt still matters."""
    a, m = _run("euler_cfg_pp", 1.0, negative=-1.0)
    b, _ = _run("euler_cfg_pp", 1.0, negative=3.0)
    assert set(m.batches) == {2} and not torch.allclose(a, b)
    c, m = _run("euler", 1.0, negative=-1.0)
    e, _ = _run("euler", 1.0, negative=3.0)
    assert set(m.batches) == {1}
    torch.testing.assert_close(c, e, atol=0, rtol=0)


def test_ksample_cfg_pp_equals_manual_composition():
    got, _ = _run("euler_ancestral_cfg_pp", 1.5)
    sigmas = calculate_sigmas(S, "karras", 4)
    pos, neg = resolve_conditioning([[_ctx(1.0), {}]], [[_ctx(-1.0), {}]], (8, 8), S)
    model = CFGDenoiser(ModelDenoiser(Stub(), ModelSampling(S, "eps")), pos, neg, 1.5, keep_uncond=True).guided
    torch.manual_seed(7)
    x = torch.randn(1, 4, 8, 8) * math.sqrt(1 + float(sigmas[0]) ** 2)
    ref = SAMPLERS["euler_ancestral_cfg_pp"](model, x, sigmas, noise_sampler=default_noise_sampler(x, 7))
    torch.testing.assert_close(got, ref / 0.18215, atol=1e-5, rtol=1e-5)


def test_ksample_cfg_pp_inpainting_keeps_unmasked_pixels():
    lat = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    mask = torch.zeros(1, 8, 8)
    mask[:, :, 4:] = 1.0
    out, _ = _run("dpmpp_2m_cfg_pp", 2.0, latent={"samples": lat, "noise_mask": mask}, denoise=0.7)
    torch.testing.assert_close(out[..., :4], lat[..., :4], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out[..., 4:], lat[..., 4:])
