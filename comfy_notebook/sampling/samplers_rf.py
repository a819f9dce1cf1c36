"""Ancestral samplers for rectified-flow models (ComfyUI's ``*_RF`` variants).

On a flow model (``CONST`` parameterisation: ``x_sigma = sigma * noise + (1 - sigma) * x0``,
sigma in [0, 1]) the variance-exploding ancestral step of k-diffusion does not apply.  ComfyUI
(``comfy/k_diffusion/sampling.py`` at a125cd8) switches ``euler_ancestral``, ``dpm_2_ancestral``
and ``dpmpp_2s_ancestral`` to these variants when the model sampling is ``CONST``: step down to
``sigma_down = sigma_next * (1 + (sigma_next / sigma - 1) * eta)`` along the straight path, then
rescale by ``alpha_next / alpha_down`` (alpha = 1 - sigma) and add noise with
``sqrt(sigma_next^2 - sigma_down^2 * alpha_next^2 / alpha_down^2)``.

``RF_VARIANTS`` maps the sampler names to these functions; :func:`for_model_sampling` picks the
variant for a model sampling (``prediction == "const"``).  It also gives the samplers that step in
the half-log-SNR (DPM-Solver++ SDE family, LCM: ``samplers_flow_sde.FLOW_VARIANTS``; SEEDS,
ER-SDE, SA-Solver, Euler CFG++: ``FLOW_AWARE``, which take ``model_sampling=``) the flow model's
model sampling, so that every sampler ComfyUI allows on flow models computes what ComfyUI does.
On diffusion models every sampler is returned as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import Tensor

from comfy_notebook.sampling import samplers_flow_sde as f
from comfy_notebook.sampling.noise import NoiseSampler, default_noise_sampler
from comfy_notebook.sampling.samplers import Denoiser, StepCallback, _Loop, to_d
from comfy_notebook.sampling.snr import is_flow

__all__ = [
    "FLOW_AWARE",
    "FLOW_VARIANTS",
    "RF_VARIANTS",
    "for_model_sampling",
    "is_flow",
    "sample_dpm_2_ancestral_RF",
    "sample_dpmpp_2s_ancestral_RF",
    "sample_euler_ancestral_RF",
]


def _rf_step(sigma: Tensor, sigma_next: Tensor, eta: float) -> tuple[Tensor, Tensor, Tensor]:
    """(sigma_down, alpha_next / alpha_down, renoise coefficient) of one RF ancestral step."""
    sigma_down = sigma_next * (1 + (sigma_next / sigma - 1) * eta)
    alpha_next, alpha_down = 1 - sigma_next, 1 - sigma_down
    renoise = (sigma_next**2 - sigma_down**2 * alpha_next**2 / alpha_down**2) ** 0.5
    return sigma_down, alpha_next / alpha_down, renoise


@torch.no_grad()
def sample_euler_ancestral_RF(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: StepCallback | None = None,
                              noise_sampler: NoiseSampler | None = None, eta: float = 1.0,
                              s_noise: float = 1.0) -> Tensor:
    """Euler ancestral steps on the straight flow path."""
    noise_sampler = noise_sampler or default_noise_sampler(x)
    loop = _Loop(model, x, sigmas, callback)
    for i in range(loop.n):
        denoised = loop.denoise(x, i)
        if loop.sv[i + 1] == 0:
            x = denoised
            continue
        sigma_down, rescale, renoise = _rf_step(sigmas[i], sigmas[i + 1], eta)
        ratio = sigma_down / sigmas[i]
        x = ratio * x + (1 - ratio) * denoised
        if eta > 0:
            x = rescale * x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * renoise
    return x


@torch.no_grad()
def sample_dpm_2_ancestral_RF(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: StepCallback | None = None,
                              noise_sampler: NoiseSampler | None = None, eta: float = 1.0,
                              s_noise: float = 1.0) -> Tensor:
    """DPM-Solver-2 ancestral steps on the straight flow path."""
    noise_sampler = noise_sampler or default_noise_sampler(x)
    loop = _Loop(model, x, sigmas, callback)
    for i in range(loop.n):
        denoised = loop.denoise(x, i)
        sigma_down, rescale, renoise = _rf_step(sigmas[i], sigmas[i + 1], eta)
        d = to_d(x, sigmas[i], denoised)
        if loop.sv[i + 1] * (1 + (loop.sv[i + 1] / loop.sv[i] - 1) * eta) == 0:  # sigma_down == 0, on the host
            x = x + d * (sigma_down - sigmas[i])
        else:
            sigma_mid = sigmas[i].log().lerp(sigma_down.log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigmas[i])
            d_2 = to_d(x_2, sigma_mid, loop.model_at(x_2, sigma_mid))
            x = x + d_2 * (sigma_down - sigmas[i])
            x = rescale * x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * renoise
    return x


@torch.no_grad()
def sample_dpmpp_2s_ancestral_RF(model: Denoiser, x: Tensor, sigmas: Tensor, *,
                                 callback: StepCallback | None = None, noise_sampler: NoiseSampler | None = None,
                                 eta: float = 1.0, s_noise: float = 1.0) -> Tensor:
    """DPM-Solver++(2S) ancestral steps on the straight flow path (lambda = log((1 - sigma) / sigma))."""
    noise_sampler = noise_sampler or default_noise_sampler(x)
    loop = _Loop(model, x, sigmas, callback)
    for i in range(loop.n):
        denoised = loop.denoise(x, i)
        sigma_down, rescale, renoise = _rf_step(sigmas[i], sigmas[i + 1], eta)
        if loop.sv[i + 1] == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
            continue
        if loop.sv[i] == 1.0:
            sigma_s = torch.full_like(sigmas[i], 0.9999)
        else:
            lam_i, lam_down = ((1 - sigmas[i]) / sigmas[i]).log(), ((1 - sigma_down) / sigma_down).log()
            sigma_s = 1 / ((lam_i + 0.5 * (lam_down - lam_i)).exp() + 1)
        ratio_s = sigma_s / sigmas[i]
        u = ratio_s * x + (1 - ratio_s) * denoised
        d_i = loop.model_at(u, sigma_s)
        ratio = sigma_down / sigmas[i]
        x = ratio * x + (1 - ratio) * d_i
        if eta > 0:
            x = rescale * x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * renoise
    return x


RF_VARIANTS: dict[str, Callable[..., Tensor]] = {
    "euler_ancestral": sample_euler_ancestral_RF,
    "dpm_2_ancestral": sample_dpm_2_ancestral_RF,
    "dpmpp_2s_ancestral": sample_dpmpp_2s_ancestral_RF,
}


# Flow variants that need the model sampling (first-sigma offset, noise scaling).
FLOW_VARIANTS: dict[str, Callable[..., Tensor]] = {
    "dpmpp_sde": f.sample_dpmpp_sde_flow,
    "dpmpp_sde_gpu": f.sample_dpmpp_sde_flow,
    "dpmpp_2m_sde": f.sample_dpmpp_2m_sde_flow,
    "dpmpp_2m_sde_gpu": f.sample_dpmpp_2m_sde_flow,
    "dpmpp_2m_sde_heun": f.sample_dpmpp_2m_sde_heun_flow,
    "dpmpp_2m_sde_heun_gpu": f.sample_dpmpp_2m_sde_heun_flow,
    "dpmpp_3m_sde": f.sample_dpmpp_3m_sde_flow,
    "dpmpp_3m_sde_gpu": f.sample_dpmpp_3m_sde_flow,
    "lcm": f.sample_lcm_flow,
}

# Samplers of ``registry.SAMPLERS`` that take ``model_sampling=`` and use it when it is a flow's.
FLOW_AWARE: frozenset[str] = frozenset({
    "euler_cfg_pp", "euler_ancestral_cfg_pp", "er_sde", "seeds_2", "seeds_3", "sa_solver", "sa_solver_pece"})


def for_model_sampling(name: str, fn: Callable[..., Tensor], model_sampling: Any) -> Callable[..., Tensor]:
    """``fn`` (the sampler called ``name``), or what ComfyUI runs instead on a flow model.

    Diffusion models (or no model sampling): ``fn`` itself.  Flow models: the RF ancestral
    variant, the flow SDE variant bound to ``model_sampling``, or ``fn`` with
    ``model_sampling=`` bound (``FLOW_AWARE``); other samplers are the same on both.
    """
    if not is_flow(model_sampling):
        return fn
    if name in RF_VARIANTS:
        return RF_VARIANTS[name]
    if name in FLOW_VARIANTS:
        return partial(FLOW_VARIANTS[name], model_sampling=model_sampling)
    if name in FLOW_AWARE:
        return partial(fn, model_sampling=model_sampling)
    return fn
