"""Custom sampling in the sampling room: SAMPLER / NOISE values, guidance, sigma operations,
and the shared core ``sample_sigmas`` against ``ksample`` (KSampler's path)."""

from __future__ import annotations

import math

import pytest
import torch

from comfy_notebook.families.base import LatentFormat
from comfy_notebook.families.sd1 import SD15_LATENT
from comfy_notebook.sampling import (
    DiscreteSchedule,
    DualCFGDenoiser,
    EmptyNoise,
    Guidance,
    ModelDenoiser,
    RandomNoise,
    SamplerSpec,
    SamplingConfigError,
    add_noise,
    basic_sigmas,
    beta_sigmas,
    calculate_sigmas,
    default_noise_sampler,
    fix_empty_latent_channels,
    flip_sigmas,
    ksample,
    ksampler_sigmas,
    prepare_noise,
    resolve_conditioning,
    sample_sigmas,
    sd_turbo_sigmas,
    split_sigmas,
    split_sigmas_denoise,
)
from comfy_notebook.sampling.model_sampling import ModelSampling
from comfy_notebook.sampling.schedules import (
    get_sigmas_exponential,
    get_sigmas_karras,
    get_sigmas_laplace,
    get_sigmas_polyexponential,
    get_sigmas_vp,
)

S = DiscreteSchedule()
MS = ModelSampling(S)
POS, NEG, MID = [[torch.full((1, 77, 8), 1.0), {}]], [[torch.full((1, 77, 8), -1.0), {}]], [[torch.full((1, 77, 8), 0.3), {}]]


class Stub:
    """apply_model stub: eps depends on x, timestep and the context's mean; records contexts."""

    def __init__(self):
        self.calls, self.contexts = 0, []

    def __call__(self, x, t, context, **kw):
        self.calls += 1
        self.contexts.append(context[:, 0, 0].tolist())
        c = context.mean(dim=(1, 2)).view(-1, 1, 1, 1)
        return torch.tanh(x) * 0.5 + c * (t.view(-1, 1, 1, 1) / 1000.0)


def core(*, latent=None, noise=None, sigmas=None, guidance=None, sampler="euler", seed=7, model=None, **kw):
    latent = latent or {"samples": torch.zeros(1, 4, 8, 8)}
    noise = RandomNoise(seed).generate_noise(latent) if noise is None else noise
    sigmas = basic_sigmas(S, "karras", 5) if sigmas is None else sigmas
    guidance = guidance or Guidance.cfg_guided(POS, NEG, 5.0)
    sampler = sampler if isinstance(sampler, SamplerSpec) else SamplerSpec(sampler)
    return sample_sigmas(model or Stub(), model_sampling=MS, latent_format=SD15_LATENT, latent=latent, noise=noise,
                         sigmas=sigmas, guidance=guidance, sampler=sampler, seed=seed, **kw)


def kref(**kw):
    base = dict(model_sampling=MS, latent_format=SD15_LATENT, latent={"samples": torch.zeros(1, 4, 8, 8)}, positive=POS,
                negative=NEG, seed=7, steps=5, cfg=5.0, sampler_name="euler", scheduler="karras")
    base.update(kw)
    return ksample(Stub(), **base)["samples"]


# -- schedulers ------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 4, 20])
def test_range_schedulers_equal_k_diffusion(kdiff, n):
    smin, smax = 0.0291675, 14.614642
    assert torch.equal(get_sigmas_karras(n, smin, smax, 7.0), kdiff.get_sigmas_karras(n, smin, smax, 7.0))
    assert torch.equal(get_sigmas_karras(n, 0.1, 3.0, 3.5), kdiff.get_sigmas_karras(n, 0.1, 3.0, 3.5))
    assert torch.equal(get_sigmas_exponential(n, smin, smax), kdiff.get_sigmas_exponential(n, smin, smax))
    for rho in (1.0, 2.5):
        assert torch.equal(get_sigmas_polyexponential(n, smin, smax, rho),
                           kdiff.get_sigmas_polyexponential(n, smin, smax, rho))
    # ComfyUI computes sqrt(expm1(.)) where k-diffusion has exp(.) - 1 (which cancels near t = eps_s)
    vp, ref = get_sigmas_vp(n, 19.9, 0.1, 1e-3), kdiff.get_sigmas_vp(n, 19.9, 0.1, 1e-3)
    t = torch.linspace(1, 1e-3, n).double()
    exact = torch.cat([torch.sqrt(torch.expm1(19.9 * t**2 / 2 + 0.1 * t)), torch.zeros(1, dtype=torch.float64)])
    torch.testing.assert_close(vp.double(), exact, rtol=2e-6, atol=0)
    torch.testing.assert_close(vp, ref, rtol=1e-3, atol=0)


def test_laplace_sigmas_hand_computed():
    sig = get_sigmas_laplace(5, 0.03, 14.6, mu=0.0, beta=0.5)
    x = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    lmb = -0.5 * torch.sign(0.5 - x) * torch.log(1 - 2 * (0.5 - x).abs() + 1e-5)
    torch.testing.assert_close(sig, lmb.exp().clamp(0.03, 14.6), rtol=1e-6, atol=0)
    assert len(sig) == 5 and float(sig[0]) == pytest.approx(14.6) and float(sig[-1]) == pytest.approx(0.03)
    assert float(sig[2]) == pytest.approx(1.0)  # the median sits at exp(mu)


@pytest.mark.parametrize("scheduler", ["normal", "karras", "simple", "exponential", "beta", "sgm_uniform"])
@pytest.mark.parametrize("denoise", [1.0, 0.6])
def test_basic_sigmas_equal_ksampler_sigmas(scheduler, denoise):
    got = basic_sigmas(S, scheduler, 7, denoise)
    assert torch.equal(got, ksampler_sigmas(S, scheduler, "euler", 7, denoise))
    assert len(got) == 8 and got.dtype == torch.float32


def test_basic_sigmas_denoise_zero_is_empty_and_no_penultimate_discard():
    assert basic_sigmas(S, "normal", 5, 0.0).numel() == 0
    # KSampler drops the penultimate sigma for dpm_2; BasicScheduler never does (as ComfyUI)
    assert not torch.equal(basic_sigmas(S, "normal", 5), ksampler_sigmas(S, "normal", "dpm_2", 5))
    assert torch.equal(basic_sigmas(S, "normal", 5), calculate_sigmas(S, "normal", 5))


def test_beta_sigmas_use_the_model_schedule():
    assert torch.equal(beta_sigmas(S, 6), calculate_sigmas(S, "beta", 6))
    other = beta_sigmas(S, 6, alpha=0.3, beta=0.9)
    assert not torch.equal(other, beta_sigmas(S, 6)) and float(other[-1]) == 0.0


def test_sd_turbo_timesteps():
    sig = sd_turbo_sigmas(S, 1)
    torch.testing.assert_close(sig, torch.stack([S.sigmas[999], torch.tensor(0.0)]), rtol=1e-6, atol=0)
    four = sd_turbo_sigmas(S, 4)
    torch.testing.assert_close(four[:-1], S.sigmas[[999, 899, 799, 699]], rtol=1e-6, atol=0)
    half = sd_turbo_sigmas(S, 3, denoise=0.5)  # start at step 10 - int(5) = 5: timestep 499
    torch.testing.assert_close(half[:-1], S.sigmas[[499, 399, 299]], rtol=1e-6, atol=0)
    assert len(sd_turbo_sigmas(S, 10, denoise=0.3)) == 4  # 299, 199, 99 and the final 0
    assert sd_turbo_sigmas(S, 2, denoise=0.0).tolist() == [0.0]


def test_split_and_flip_sigmas():
    sig = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    high, low = split_sigmas(sig, 2)
    assert high.tolist() == [5.0, 4.0, 3.0] and low.tolist() == [3.0, 2.0, 1.0, 0.0]
    high, low = split_sigmas_denoise(sig, 0.4)  # 5 steps, round(2.0) = 2 low steps
    assert high.tolist() == [5.0, 4.0, 3.0, 2.0] and low.tolist() == [2.0, 1.0, 0.0]
    high, low = split_sigmas_denoise(sig, 0.0)
    assert high.tolist() == [] and low.tolist() == [0.0]
    flipped = flip_sigmas(sig)
    assert flipped.tolist() == pytest.approx([0.0001, 1.0, 2.0, 3.0, 4.0, 5.0]) and float(sig[-1]) == 0.0
    assert flip_sigmas(torch.zeros(0)).numel() == 0


# -- noise and sampler values ----------------------------------------------------------------------
def test_add_noise_scaling():
    lat = torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(4))
    noise = torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(5))
    sig = torch.tensor([6.0, 2.0, 0.5])
    fmt = LatentFormat("half", scale_factor=0.5)
    kw = {"model_sampling": MS, "latent_format": fmt}
    torch.testing.assert_close(add_noise(lat, noise, sig, **kw), (noise * 5.5 + lat * 0.5) / 0.5)
    torch.testing.assert_close(add_noise(torch.zeros(1, 4, 3, 3), noise, sig[:1], **kw), noise * 12.0)
    assert add_noise(lat, noise, torch.zeros(0), **kw) is lat
    bad = noise.clone()
    bad[0, 0, 0, 0] = float("inf")
    assert float(add_noise(lat, bad, sig, **kw)[0, 0, 0, 0]) == 0.0


def test_fix_empty_latent_channels():
    empty = torch.zeros(2, 4, 3, 5)
    fixed = fix_empty_latent_channels(empty, 16)
    assert fixed.shape == (2, 16, 3, 5) and not fixed.any()
    assert fix_empty_latent_channels(empty, 4) is empty
    full = torch.ones(2, 4, 3, 5)
    assert fix_empty_latent_channels(full, 16) is full  # only an empty latent is resized


def test_noise_values():
    lat = {"samples": torch.zeros(2, 4, 3, 3), "batch_index": [3, 1]}
    assert torch.equal(RandomNoise(11).generate_noise(lat), prepare_noise(lat["samples"], 11, [3, 1]))
    torch.manual_seed(11)
    expected = torch.randn(1, 4, 3, 3)
    assert torch.equal(RandomNoise(11).generate_noise({"samples": torch.zeros(1, 4, 3, 3)}), expected)
    empty = EmptyNoise()
    assert empty.seed == 0 and torch.equal(empty.generate_noise(lat), torch.zeros(2, 4, 3, 3))


def test_sampler_spec_validates_and_freezes_options():
    with pytest.raises(SamplingConfigError, match="unknown sampler 'eulr'"):
        SamplerSpec("eulr")
    opts = {"eta": 0.5}
    spec = SamplerSpec("euler_ancestral", opts)
    opts["eta"] = 2.0
    assert spec.options["eta"] == 0.5 and "eta=0.5" in repr(spec)
    with pytest.raises(TypeError):
        spec.options["eta"] = 1.0  # type: ignore[index]


# -- the core equals KSampler's path --------------------------------------------------------------
@pytest.mark.parametrize("name", ["euler", "euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_sde",
                                  "euler_cfg_pp", "lcm", "sa_solver", "dpm_adaptive"])
def test_core_with_basic_sigmas_is_bit_identical_to_ksample(name):
    got, denoised = core(sampler=name)
    assert torch.equal(got, kref(sampler_name=name))
    assert denoised is not None and denoised.shape == got.shape


def test_core_img2img_with_mask_is_bit_identical_to_ksample():
    lat = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2)),
           "noise_mask": (torch.arange(64).view(1, 8, 8) % 3 == 0).float()}
    got, _ = core(latent=lat, sigmas=basic_sigmas(S, "normal", 5, 0.6), sampler="euler_ancestral")
    assert torch.equal(got, kref(latent=lat, scheduler="normal", denoise=0.6, sampler_name="euler_ancestral"))


@pytest.mark.parametrize("name", ["euler", "euler_ancestral", "dpmpp_2m_sde"])
def test_split_sigmas_two_stage_equals_ksampler_advanced_windows(name):
    full = basic_sigmas(S, "karras", 6)
    high, low = split_sigmas(full, 2)
    stage1, _ = core(sigmas=high, sampler=name)
    stage2, _ = core(latent={"samples": stage1}, noise=EmptyNoise().generate_noise({"samples": stage1}),
                     sigmas=low, sampler=name, seed=0)
    ref1 = kref(sampler_name=name, steps=6, end_step=2, force_full_denoise=False)
    ref2 = kref(latent={"samples": ref1}, sampler_name=name, steps=6, add_noise=False, start_step=2, seed=0)
    assert torch.equal(stage1, ref1) and torch.equal(stage2, ref2)


def test_empty_sigmas_return_the_latent_untouched():
    lat = {"samples": torch.randn(1, 4, 8, 8)}
    model = Stub()
    got, denoised = core(latent=lat, sigmas=torch.zeros(0), model=model)
    assert got is lat["samples"] and denoised is None and model.calls == 0


def test_denoised_output_is_the_last_prediction_in_comfy_scale():
    seen = []
    got, denoised = core(sampler="euler_ancestral", callback=lambda info: seen.append(info.denoised))
    assert len(seen) == 5 and torch.equal(denoised, seen[-1] / 0.18215)
    assert torch.equal(got, denoised)  # the last step ends at sigma 0: x = denoised


# -- sampler options -------------------------------------------------------------------------------
def test_eta_zero_ancestral_equals_euler_and_options_change_results():
    euler, _ = core(sampler="euler")
    eta0, _ = core(sampler=SamplerSpec("euler_ancestral", {"eta": 0.0}))
    torch.testing.assert_close(eta0, euler, rtol=0, atol=1e-6)
    full, _ = core(sampler="euler_ancestral")
    half, _ = core(sampler=SamplerSpec("euler_ancestral", {"eta": 0.5}))
    quiet, _ = core(sampler=SamplerSpec("euler_ancestral", {"s_noise": 0.0}))
    assert not torch.allclose(full, half) and not torch.allclose(full, quiet)
    assert not torch.allclose(quiet, euler)  # s_noise 0 still steps down to sigma_down only


def test_solver_type_option_equals_the_named_variant():
    heun, _ = core(sampler=SamplerSpec("dpmpp_2m_sde", {"solver_type": "heun"}))
    named, _ = core(sampler="dpmpp_2m_sde_heun")
    mid, _ = core(sampler="dpmpp_2m_sde")
    assert torch.equal(heun, named) and not torch.allclose(heun, mid)


def test_lms_order_one_is_euler():
    one, _ = core(sampler=SamplerSpec("lms", {"order": 1}))
    euler, _ = core(sampler="euler")
    torch.testing.assert_close(one, euler, rtol=1e-5, atol=1e-5)
    four, _ = core(sampler="lms")
    assert not torch.allclose(four, euler, atol=1e-4)


def test_er_sde_noise_scaler_option():
    from comfy_notebook.nodes.sampler_options import SamplerER_SDE

    (default,) = SamplerER_SDE().get_sampler("ER-SDE", 3, 1.0, 1.0)
    assert torch.equal(core(sampler=default)[0], core(sampler="er_sde")[0])  # eta 1 is the built-in scaler
    (ode,) = SamplerER_SDE().get_sampler("ER-SDE", 3, 0.0, 1.0)
    assert ode.options["s_noise"] == 0.0
    noise = RandomNoise(5).generate_noise({"samples": torch.zeros(1, 4, 8, 8)})
    a, b = core(sampler=ode, noise=noise, seed=1)[0], core(sampler=ode, noise=noise, seed=2)[0]
    assert torch.equal(a, b)  # deterministic: the per-step seed no longer matters
    c, d = core(sampler=default, noise=noise, seed=1)[0], core(sampler=default, noise=noise, seed=2)[0]
    assert not torch.equal(c, d)
    (rev,) = SamplerER_SDE().get_sampler("Reverse-time SDE", 3, 1.0, 1.0)
    assert not torch.allclose(core(sampler=rev)[0], core(sampler=default)[0])


def test_dpm_adaptive_eta_equals_k_diffusion(kdiff, nonlinear):
    x = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(0)) * 10

    def noise(seed):
        gen = torch.Generator().manual_seed(seed)
        return lambda s, t: torch.randn(x.shape, generator=gen)

    ref = kdiff.sample_dpm_adaptive(nonlinear, x.clone(), 0.05, 10.0, eta=0.7, s_noise=0.9, noise_sampler=noise(3),
                                    disable=True)
    from comfy_notebook.sampling.samplers_multistep import sample_dpm_adaptive

    got = sample_dpm_adaptive(nonlinear, x.clone(), torch.tensor([10.0, 0.05, 0.0]), eta=0.7, s_noise=0.9,
                              noise_sampler=noise(3))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    plain = sample_dpm_adaptive(nonlinear, x.clone(), torch.tensor([10.0, 0.05, 0.0]))
    assert not torch.allclose(plain, got, atol=1e-3)


# -- guidance --------------------------------------------------------------------------------------
def test_cfg_one_never_evaluates_the_negative():
    nan_neg = [[torch.full((1, 77, 8), float("nan")), {}]]
    model = Stub()
    got, _ = core(guidance=Guidance.cfg_guided(POS, nan_neg, 1.0), model=model)
    assert torch.isfinite(got).all() and all(c == [1.0] for c in model.contexts)
    basic, _ = core(guidance=Guidance.basic(POS))
    assert torch.equal(basic, got)
    assert not Guidance.basic(POS).evaluates_negative and Guidance.cfg_guided(POS, NEG, 2.0).evaluates_negative


def _dual(cfg1, cfg2, nested=False, keep=False):
    model = Stub()
    den = ModelDenoiser(model, MS)
    pos, mid, neg = (resolve_conditioning(c, [], (8, 8), S)[0] for c in (POS, MID, NEG))
    return DualCFGDenoiser(den, pos, mid, neg, cfg1=cfg1, cfg2=cfg2, nested=nested, keep_uncond=keep), den, model


def test_dual_cfg_formulas_and_skips():
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([3.0])
    dual, den, model = _dual(4.0, 2.0)
    p, m, n = (den(x, sigma, c[0][0]) for c in (POS, MID, NEG))
    torch.testing.assert_close(dual(x, sigma), n + (m - n) * 2.0 + (p - m) * 4.0, rtol=1e-5, atol=1e-6)
    nested, *_ = _dual(4.0, 2.0, nested=True)
    torch.testing.assert_close(nested(x, sigma), n + 2.0 * (m + (p - m) * 4.0 - n), rtol=1e-5, atol=1e-6)
    skip_neg, _, model = _dual(4.0, 1.0)
    torch.testing.assert_close(skip_neg(x, sigma), m + (p - m) * 4.0, rtol=1e-5, atol=1e-6)
    assert sorted({v for c in model.contexts for v in c}) == pytest.approx([0.3, 1.0])  # no negative
    only_pos, _, model = _dual(1.0, 1.0)
    torch.testing.assert_close(only_pos(x, sigma), p, rtol=1e-5, atol=1e-6)
    assert {v for c in model.contexts for v in c} == {1.0}
    kept, *_ = _dual(4.0, 1.0, keep=True)
    denoised, uncond = kept.guided(x, sigma)  # CFG++: the negative is evaluated even at cfg2 1
    torch.testing.assert_close(uncond, n, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(denoised, m + (p - m) * 4.0, rtol=1e-5, atol=1e-6)


def test_dual_guidance_through_the_core_runs_cfg_pp_too():
    dual = Guidance.dual(POS, MID, NEG, 3.0, 2.0)
    a, _ = core(guidance=dual)
    b, _ = core(guidance=Guidance.dual(POS, MID, NEG, 3.0, 2.0, nested=True))
    assert torch.isfinite(a).all() and not torch.allclose(a, b)
    c, _ = core(guidance=dual, sampler="euler_cfg_pp")
    assert torch.isfinite(c).all()
    # cond1 == cond2 reduces dual CFG to plain CFG at cfg_cond2_negative
    same, _ = core(guidance=Guidance.dual(POS, POS, NEG, 3.0, 5.0))
    torch.testing.assert_close(same, core()[0], rtol=1e-4, atol=1e-5)
    assert math.isclose(dual.cfg, 3.0) and dual.evaluates_negative


class _FlowLike(ModelSampling):
    """A model sampling with flow-matching noise scaling (as ComfyUI's CONST), over the same schedule."""

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        return noise * sigma + latent_image * (1.0 - sigma)

    def inverse_noise_scaling(self, sigma, latent):
        return latent / (1.0 - sigma)


def test_core_takes_noise_scaling_from_the_model_sampling():
    """The custom-sampling core asks the MODEL's sampling object (flow models: sigma*noise + (1-sigma)*x)."""
    flow = _FlowLike(S)
    lat = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(6))}
    noise = RandomNoise(3).generate_noise(lat)
    sigmas = torch.tensor([0.8, 0.5, 0.2])  # ends above 0: the inverse scaling shows
    seen = []
    got, _ = sample_sigmas(Stub(), model_sampling=flow, latent_format=SD15_LATENT, latent=lat, noise=noise,
                           sigmas=sigmas, guidance=Guidance.basic(POS), sampler=SamplerSpec("euler"), seed=3,
                           callback=lambda info: seen.append(info.x))
    x0 = lat["samples"] * 0.18215
    torch.testing.assert_close(seen[0], noise * 0.8 + x0 * 0.2)
    eps, _ = sample_sigmas(Stub(), model_sampling=MS, latent_format=SD15_LATENT, latent=lat, noise=noise,
                           sigmas=sigmas, guidance=Guidance.basic(POS), sampler=SamplerSpec("euler"), seed=3)
    assert not torch.allclose(got, eps)

    class NoInverse(_FlowLike):
        def inverse_noise_scaling(self, sigma, latent):
            return latent

    plain, _ = sample_sigmas(Stub(), model_sampling=NoInverse(S), latent_format=SD15_LATENT, latent=lat, noise=noise,
                             sigmas=sigmas, guidance=Guidance.basic(POS), sampler=SamplerSpec("euler"), seed=3)
    torch.testing.assert_close(got, plain / (1.0 - 0.2))  # the inverse scaling at sigmas[-1] = 0.2


def test_sampler_options_reach_the_rf_variant_on_flow_models(nonlinear):
    """On a flow model, SamplerEulerAncestral's eta goes to ComfyUI's RF variant (as KSampler picks it)."""
    from comfy_notebook.sampling.flow import ModelSamplingDiscreteFlow
    from comfy_notebook.sampling.samplers_rf import RF_VARIANTS

    flow = ModelSamplingDiscreteFlow(shift=3.0)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    sigmas = basic_sigmas(flow, "simple", 4)
    spec = SamplerSpec("euler_ancestral", {"eta": 0.5})
    got = spec.run(nonlinear, x.clone(), sigmas, seed=9, model_sampling=flow)
    ref = RF_VARIANTS["euler_ancestral"](nonlinear, x.clone(), sigmas, eta=0.5,
                                         noise_sampler=default_noise_sampler(x, 9))
    assert torch.equal(got, ref)
    eps_path = spec.run(nonlinear, x.clone(), sigmas, seed=9, model_sampling=MS)  # not a flow model
    assert not torch.allclose(got, eps_path)
