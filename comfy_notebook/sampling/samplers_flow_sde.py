"""DPM-Solver++ SDE samplers and LCM for rectified-flow models (ComfyUI's behaviour on ``CONST``).

ComfyUI (``comfy/k_diffusion/sampling.py`` at a125cd8) writes ``dpmpp_sde``, ``dpmpp_2m_sde``
(midpoint / heun) and ``dpmpp_3m_sde`` in the half-log-SNR ``lambda`` of the model sampling
(see ``snr.py``) with the signal scale ``alpha = sigma * exp(lambda)``, so that on a flow model
(``x = (1 - sigma) x0 + sigma noise``) they integrate the flow's own SDE: the first sigma is
moved below 1 (``percent_to_sigma(1e-4)``), ``lambda = -logit(sigma)``, ``alpha = 1 - sigma``.
For a step s -> t with ``h = lambda_t - lambda_s``:

- 2M / 3M SDE: ``x_t = (sigma_t / sigma_s) e^(-eta h) x_s + alpha_t (1 - e^(-(1 + eta) h)) D``
  plus the multistep corrections (scaled by alpha_t) and the noise
  ``sigma_t sqrt(1 - e^(-2 eta h)) z``;
- SDE (2 evaluations): each stage an ancestral DPM-Solver++(1) step in the variance-exploding
  sigma ``e^(-lambda)``, scaled by ``alpha``.

On diffusion models these are mathematically the k-diffusion samplers of ``samplers.py``
(alpha = 1), which stay in use there so that diffusion-model results do not change by a rounding.
``lcm`` re-noises with the model sampling's noise scaling (``sigma z + (1 - sigma) x0``).

Each function takes ``model_sampling=`` (a flow model sampling); :func:`samplers_rf.for_model_sampling`
binds it when the model is a flow model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from comfy_notebook.sampling.noise import NoiseSampler, default_noise_sampler
from comfy_notebook.sampling.samplers import Denoiser, StepCallback, _Loop, get_ancestral_step
from comfy_notebook.sampling.snr import half_log_snr, offset_first_sigma, sigma_from_half_log_snr

__all__ = [
    "sample_dpmpp_2m_sde_flow",
    "sample_dpmpp_2m_sde_heun_flow",
    "sample_dpmpp_3m_sde_flow",
    "sample_dpmpp_sde_flow",
    "sample_lcm_flow",
]


def _offset(sigmas: Tensor, model_sampling: Any, noise_sampler: NoiseSampler | None) -> Tensor:
    """The offset sigmas; a Brownian-tree noise sampler learns them (per-step times without a sync)."""
    out = offset_first_sigma(sigmas, model_sampling)
    know = getattr(noise_sampler, "know", None)
    if out is not sigmas and know is not None:
        know(out)
    return out


def _lam(sigma: Tensor) -> Tensor:
    return half_log_snr(sigma, True)


def _need(noise_sampler: NoiseSampler | None, x: Tensor, sigmas: Tensor) -> NoiseSampler:
    if noise_sampler is not None:
        return noise_sampler
    from comfy_notebook.sampling.noise import BrownianTreeNoiseSampler

    return BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max(), cpu=True)


@torch.no_grad()
def sample_dpmpp_sde_flow(model: Denoiser, x: Tensor, sigmas: Tensor, *, model_sampling: Any,
                          callback: StepCallback | None = None, noise_sampler: NoiseSampler | None = None,
                          eta: float = 1.0, s_noise: float = 1.0, r: float = 0.5) -> Tensor:
    """DPM-Solver++ (stochastic), two evaluations per step, in the flow's half-log-SNR."""
    if len(sigmas) <= 1:
        return x
    noise_sampler = _need(noise_sampler, x, sigmas)  # over the schedule as given (sigma_max 1)
    sigmas = _offset(sigmas, model_sampling, noise_sampler)
    noisy = eta > 0 and s_noise > 0
    loop = _Loop(model, x, sigmas, callback)
    for i in range(loop.n):
        denoised = loop.denoise(x, i)
        if loop.sv[i + 1] == 0:
            x = denoised
            continue
        lam_s, lam_t = _lam(sigmas[i]), _lam(sigmas[i + 1])
        h = lam_t - lam_s
        lam_1 = lam_s + r * h
        fac = 1 / (2 * r)
        sigma_1 = sigma_from_half_log_snr(lam_1, True)
        alpha_s = sigmas[i] * lam_s.exp()
        alpha_1 = sigma_1 * lam_1.exp()
        alpha_t = sigmas[i + 1] * lam_t.exp()
        # stage 1: ancestral DPM-Solver++(1) to lambda_1 in the VE sigma e^-lambda
        sd, su = get_ancestral_step(lam_s.neg().exp(), lam_1.neg().exp(), eta)
        h_ = sd.log().neg() - lam_s
        x_2 = (alpha_1 / alpha_s) * (-h_).exp() * x - alpha_1 * (-h_).expm1() * denoised
        if noisy:
            x_2 = x_2 + alpha_1 * noise_sampler(sigmas[i], sigma_1) * s_noise * su
        denoised_2 = loop.model_at(x_2, sigma_1)
        # stage 2: to lambda_t with the blended prediction
        sd, su = get_ancestral_step(lam_s.neg().exp(), lam_t.neg().exp(), eta)
        h_ = sd.log().neg() - lam_s
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (alpha_t / alpha_s) * (-h_).exp() * x - alpha_t * (-h_).expm1() * denoised_d
        if noisy:
            x = x + alpha_t * noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * su
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde_flow(model: Denoiser, x: Tensor, sigmas: Tensor, *, model_sampling: Any,
                             callback: StepCallback | None = None, noise_sampler: NoiseSampler | None = None,
                             eta: float = 1.0, s_noise: float = 1.0, solver_type: str = "midpoint") -> Tensor:
    """DPM-Solver++(2M) SDE (midpoint or heun correction) in the flow's half-log-SNR."""
    if solver_type not in {"heun", "midpoint"}:
        raise ValueError(f"solver_type must be 'heun' or 'midpoint', received {solver_type!r}")
    if len(sigmas) <= 1:
        return x
    noise_sampler = _need(noise_sampler, x, sigmas)
    sigmas = _offset(sigmas, model_sampling, noise_sampler)
    loop = _Loop(model, x, sigmas, callback)
    old_denoised: Tensor | None = None
    h: Tensor | None = None
    h_last: Tensor | None = None
    for i in range(loop.n):
        denoised = loop.denoise(x, i)
        if loop.sv[i + 1] == 0:
            x = denoised
        else:
            lam_s, lam_t = _lam(sigmas[i]), _lam(sigmas[i + 1])
            h = lam_t - lam_s
            h_eta = h * (eta + 1)
            alpha_t = sigmas[i + 1] * lam_t.exp()
            x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x + alpha_t * (-h_eta).expm1().neg() * denoised
            if old_denoised is not None and h_last is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + alpha_t * ((-h_eta).expm1().neg() / (-h_eta) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * alpha_t * (-h_eta).expm1().neg() * (1 / r) * (denoised - old_denoised)
            if eta > 0 and s_noise > 0:
                x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
        old_denoised = denoised
        h_last = h
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde_heun_flow(model: Denoiser, x: Tensor, sigmas: Tensor, *, model_sampling: Any,
                                  callback: StepCallback | None = None, noise_sampler: NoiseSampler | None = None,
                                  eta: float = 1.0, s_noise: float = 1.0, solver_type: str = "heun") -> Tensor:
    """DPM-Solver++(2M) SDE with the heun correction (ComfyUI's ``dpmpp_2m_sde_heun``) on a flow model."""
    return sample_dpmpp_2m_sde_flow(model, x, sigmas, model_sampling=model_sampling, callback=callback,
                                    noise_sampler=noise_sampler, eta=eta, s_noise=s_noise, solver_type=solver_type)


@torch.no_grad()
def sample_dpmpp_3m_sde_flow(model: Denoiser, x: Tensor, sigmas: Tensor, *, model_sampling: Any,
                             callback: StepCallback | None = None, noise_sampler: NoiseSampler | None = None,
                             eta: float = 1.0, s_noise: float = 1.0) -> Tensor:
    """DPM-Solver++(3M) SDE in the flow's half-log-SNR."""
    if len(sigmas) <= 1:
        return x
    noise_sampler = _need(noise_sampler, x, sigmas)
    sigmas = _offset(sigmas, model_sampling, noise_sampler)
    loop = _Loop(model, x, sigmas, callback)
    denoised_1: Tensor | None = None
    denoised_2: Tensor | None = None
    h: Tensor | None = None
    h_1: Tensor | None = None
    h_2: Tensor | None = None
    for i in range(loop.n):
        denoised = loop.denoise(x, i)
        if loop.sv[i + 1] == 0:
            x = denoised
        else:
            lam_s, lam_t = _lam(sigmas[i]), _lam(sigmas[i + 1])
            h = lam_t - lam_s
            h_eta = h * (eta + 1)
            alpha_t = sigmas[i + 1] * lam_t.exp()
            x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x + alpha_t * (-h_eta).expm1().neg() * denoised
            if h_2 is not None and h_1 is not None and denoised_1 is not None and denoised_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + (alpha_t * phi_2) * d1 - (alpha_t * phi_3) * d2
            elif h_1 is not None and denoised_1 is not None:
                d = (denoised - denoised_1) / (h_1 / h)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                x = x + (alpha_t * phi_2) * d
            if eta > 0 and s_noise > 0:
                x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


@torch.no_grad()
def sample_lcm_flow(model: Denoiser, x: Tensor, sigmas: Tensor, *, model_sampling: Any,
                    callback: StepCallback | None = None, noise_sampler: NoiseSampler | None = None) -> Tensor:
    """LCM on a flow model: jump to the prediction, re-noise with ``sigma z + (1 - sigma) x0``."""
    noise_sampler = noise_sampler or default_noise_sampler(x)
    loop = _Loop(model, x, sigmas, callback)
    for i in range(loop.n):
        x = loop.denoise(x, i)
        if loop.sv[i + 1] > 0:
            x = model_sampling.noise_scaling(sigmas[i + 1], noise_sampler(sigmas[i], sigmas[i + 1]), x)
    return x
