from __future__ import annotations

import pytest
import torch

from comfy_notebook.sampling import (
    SAMPLER_NEEDS_SCHEDULE,
    SAMPLER_NEEDS_UNCOND,
    SAMPLERS,
    CFGDenoiser,
    CondEntry,
    DiscreteSchedule,
    StepInfo,
    calculate_sigmas,
)
from comfy_notebook.sampling.noise import BrownianTreeNoiseSampler

S = DiscreteSchedule()
# sampler name -> k-diffusion function name
SHARED = {
    "euler": "sample_euler", "euler_ancestral": "sample_euler_ancestral", "heun": "sample_heun",
    "dpm_2": "sample_dpm_2", "dpm_2_ancestral": "sample_dpm_2_ancestral", "lms": "sample_lms",
    "dpmpp_2s_ancestral": "sample_dpmpp_2s_ancestral", "dpmpp_sde": "sample_dpmpp_sde",
    "dpmpp_2m": "sample_dpmpp_2m", "dpmpp_2m_sde": "sample_dpmpp_2m_sde",
    "dpmpp_2m_sde_heun": "sample_dpmpp_2m_sde", "dpmpp_3m_sde": "sample_dpmpp_3m_sde",
}


def _noise_sampler(x, sigmas, seed=3):
    """Fresh, identical noise sequences for ours and k-diffusion's."""
    g = torch.Generator().manual_seed(seed)
    return lambda s, sn: torch.randn(x.shape, generator=g)


@pytest.mark.parametrize("name", sorted(SHARED))
def test_equals_kdiffusion(kdiff, nonlinear, name):
    sigmas = calculate_sigmas(S, "karras", 8)
    x = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(0)) * sigmas[0]
    kw, ours_kw = {}, {}
    if "sde" in name:
        tree = lambda: BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max(), seed=5)  # noqa: E731
        kw["noise_sampler"], ours_kw["noise_sampler"] = tree(), tree()
    elif "ancestral" in name:
        kw["noise_sampler"], ours_kw["noise_sampler"] = _noise_sampler(x, sigmas), _noise_sampler(x, sigmas)
    if name == "dpmpp_2m_sde_heun":
        kw["solver_type"] = "heun"
    if name == "lms":  # ComfyUI (not k-diffusion) jumps to `denoised` on the step to 0
        sigmas = sigmas[:-1]
    ref = getattr(kdiff, SHARED[name])(nonlinear, x.clone(), sigmas, disable=True, **kw)
    ours = SAMPLERS[name](nonlinear, x.clone(), sigmas, **ours_kw)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", ["dpm_fast", "dpm_adaptive"])
def test_dpm_fast_adaptive_equal_kdiffusion(kdiff, nonlinear, name):
    sigmas = calculate_sigmas(S, "karras", 7)
    x = torch.randn(1, 4, 6, 6, generator=torch.Generator().manual_seed(1)) * sigmas[0]
    smin, smax = float(sigmas[-2]), float(sigmas[0])
    if name == "dpm_fast":
        ref = kdiff.sample_dpm_fast(nonlinear, x.clone(), smin, smax, 7, disable=True)
    else:
        ref = kdiff.sample_dpm_adaptive(nonlinear, x.clone(), smin, smax, disable=True)
    ours = SAMPLERS[name](nonlinear, x.clone(), sigmas)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_gaussian_data_mean_and_variance(gaussian, name):
    """Data ~ N(0.5, 0.7^2): every sampler must land on that distribution.

    CFG++ samplers run on a real ``CFGDenoiser(..., keep_uncond=True).guided`` at cfg 3 whose
    positive and negative contexts differ but whose model is the exact denoiser of the same
    Gaussian for both, so guidance is the identity and the answer is still N(0.5, 0.7^2).
    """
    mu, sd = 0.5, 0.7
    model = gaussian(mu, sd)
    if name in SAMPLER_NEEDS_UNCOND:
        exact = model
        ctx_model = lambda x, sigma, context: exact(x, sigma)  # noqa: E731
        pos, neg = [CondEntry(cond=torch.ones(1, 2, 3))], [CondEntry(cond=-torch.ones(1, 2, 3))]
        model = CFGDenoiser(ctx_model, pos, neg, 3.0, keep_uncond=True).guided
    # first-order stochastic samplers need more steps for the same accuracy
    steps = 100 if name in ("ddpm", "euler_ancestral", "euler_ancestral_cfg_pp") else 30
    sigmas = calculate_sigmas(S, "karras", steps)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 1, 1, 1, generator=g) * (sigmas[0] ** 2 + sd**2) ** 0.5 + mu
    kw = {}
    if name in ("dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun",
                "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu"):
        kw["noise_sampler"] = BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max(), seed=1)
    else:
        kw["noise_sampler"] = _noise_sampler(x, sigmas)
    if name in SAMPLER_NEEDS_SCHEDULE:
        kw["schedule"] = S
    if name == "dpmpp_2s_ancestral_cfg_pp":  # ComfyUI's default widens the result (test_cfg_pp.py)
        kw["midpoint_uncond"] = False
    out = SAMPLERS[name](model, x, sigmas, **kw)
    if name == "lcm":  # x0-jump + re-noise: variance follows V' = c^2 V + sigma_next^2, c = s^2/(s^2+sigma^2)
        var = sigmas[0] ** 2 + sd**2
        for i in range(len(sigmas) - 1):
            var = (sd**2 / (sd**2 + sigmas[i] ** 2)) ** 2 * var + sigmas[i + 1] ** 2
        sd = float(var) ** 0.5
    assert abs(float(out.mean()) - mu) < 0.05, name
    assert abs(float(out.std()) - sd) < 0.05, name


def test_callback_gets_stepinfo_and_can_interrupt(nonlinear):
    sigmas = calculate_sigmas(S, "normal", 5)
    x = torch.randn(1, 4, 4, 4) * sigmas[0]
    seen = []
    SAMPLERS["euler"](nonlinear, x, sigmas, callback=seen.append)
    assert [s.step for s in seen] == [0, 1, 2, 3, 4] and all(s.total == 5 for s in seen)
    assert isinstance(seen[0], StepInfo) and seen[0].denoised.shape == x.shape
    with pytest.raises(AttributeError):
        seen[0].step = 3  # frozen

    class Stop(Exception):
        pass

    def stop(info):
        if info.step == 2:
            raise Stop

    with pytest.raises(Stop):
        SAMPLERS["dpmpp_2m"](nonlinear, x, sigmas, callback=stop)
    # a fresh run after an interrupt gives the same result as an uninterrupted one
    a = SAMPLERS["dpmpp_2m"](nonlinear, x, sigmas)
    b = SAMPLERS["dpmpp_2m"](nonlinear, x, sigmas)
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_names_follow_comfyui_order():
    """Offered names are exactly ComfyUI's KSampler.SAMPLERS (a125cd8), in its order."""
    comfy = [
        "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "dpm_2",
        "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp",
        "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
        "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm",
        "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
        "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde", "seeds_2",
        "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2",
    ]
    assert list(SAMPLERS) == comfy


def test_brownian_noise_from_known_sigmas_is_the_same_and_never_syncs(monkeypatch: pytest.MonkeyPatch) -> None:
    from comfy_notebook.sampling.noise import BrownianTreeNoiseSampler

    sigmas = torch.tensor([14.6, 7.0, 3.1, 1.2, 0.4, 0.0])
    x = torch.zeros(1, 4, 8, 8)
    for cpu in (True, False):
        plain = BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max(), seed=5, cpu=cpu)
        known = BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max(), seed=5, cpu=cpu)
        known.know(sigmas)
        want = [plain(sigmas[i], sigmas[i + 1]) for i in range(4)]

        def no_sync(self: torch.Tensor, *a: object) -> bool:
            raise AssertionError("host synchronisation in a step")

        with monkeypatch.context() as m:
            m.setattr(torch.Tensor, "__bool__", no_sync)
            m.setattr(torch.Tensor, "__float__", no_sync)
            got = [known(sigmas[i], sigmas[i + 1]) for i in range(4)]
        assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
        # a sigma that is not an element of the schedule still works (the synchronising path)
        torch.testing.assert_close(known(torch.tensor(7.0), torch.tensor(3.1)), want[1])
