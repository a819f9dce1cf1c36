"""Stochastic exponential-integrator samplers: ComfyUI's ``seeds_2``, ``seeds_3`` and ``er_sde``.

- SEEDS-2/3 (Gonzalez et al., NeurIPS 2023, https://arxiv.org/abs/2305.14267), VP data
  prediction, eta = 1: one stage per extra model evaluation, with noise injected per stage and
  carried over (decayed) between stages.
- ER-SDE-Solver-3 (Cui et al., https://arxiv.org/abs/2309.06169), VP form, with ComfyUI's default
  noise scaler ``x (e^(x^0.3) + 10)`` and its integrals taken with 200 rectangle points.

Behaviour as ComfyUI (comfy/k_diffusion/sampling.py at a125cd8): the solvers step in the
half-log-SNR ``lambda`` of the model sampling (``snr.py``), with ``alpha = sigma e^lambda``.  For
discrete-time models (``model_sampling`` None or not a flow) ``lambda = -log(sigma)`` (alpha = 1 up
to rounding, kept in the formulas); for flow models (``model_sampling=`` a ``CONST`` one, bound by
``samplers_rf.for_model_sampling``) ``lambda = -logit(sigma)`` and a first sigma of 1 is moved to
``percent_to_sigma(1e-4)``.  Noise comes from the seeded ancestral ``noise_sampler``; a step to
sigma 0 returns the denoised prediction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from comfy_notebook.sampling.noise import NoiseSampler, default_noise_sampler
from comfy_notebook.sampling.samplers import Denoiser, StepCallback, _Loop
from comfy_notebook.sampling.snr import (
    half_log_snr,
    is_flow,
    offset_first_sigma,
    sigma_from_half_log_snr,
)

__all__ = ["sample_er_sde", "sample_seeds_2", "sample_seeds_3"]


def _h_phi_2(h: Tensor) -> Tensor:
    """h * phi_2(h) = (e^h - 1 - h) / h."""
    return (torch.expm1(h) - h) / h


def _snr(sigmas: Tensor, model_sampling: Any) -> tuple[Tensor, bool]:
    """(sigmas with a flow model's first sigma offset below 1, whether the model is a flow)."""
    flow = is_flow(model_sampling)
    return (offset_first_sigma(sigmas, model_sampling) if flow else sigmas), flow


def _carry(noise: Tensor, factor: Tensor, fresh: Tensor) -> Tensor:
    """Decay the stage noise by e^factor and top it up with fresh noise to unit variance."""
    return noise * factor.exp() + factor.mul(2).expm1().neg().sqrt() * fresh


@torch.no_grad()
def sample_seeds_2(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: StepCallback | None = None,
                   noise_sampler: NoiseSampler | None = None, eta: float = 1.0, s_noise: float = 1.0,
                   r: float = 0.5, model_sampling: Any = None) -> Tensor:
    """SEEDS-2: two evaluations per step (stage at lambda_s + r h)."""
    noise_sampler = noise_sampler or default_noise_sampler(x)
    sigmas, flow = _snr(sigmas, model_sampling)
    loop = _Loop(model, x, sigmas, callback)
    inject = eta > 0 and s_noise > 0
    for i in range(loop.n):
        denoised = loop.denoise(x, i)
        if loop.sv[i + 1] == 0:
            x = denoised
            continue
        lam_s, lam_t = half_log_snr(sigmas[i], flow), half_log_snr(sigmas[i + 1], flow)
        h = lam_t - lam_s
        h_eta = h * (eta + 1)
        lam_1 = torch.lerp(lam_s, lam_t, r)
        sigma_1 = sigma_from_half_log_snr(lam_1, flow)
        alpha_1, alpha_t = sigma_1 * lam_1.exp(), sigmas[i + 1] * lam_t.exp()
        x_2 = sigma_1 / sigmas[i] * (-r * h * eta).exp() * x - alpha_1 * torch.expm1(-r * h_eta) * denoised
        noise = torch.zeros_like(x)
        if inject:
            noise = (-2 * r * h * eta).expm1().neg().sqrt() * noise_sampler(sigmas[i], sigma_1)
            x_2 = x_2 + noise * sigma_1 * s_noise
        denoised_2 = loop.model_at(x_2, sigma_1)
        denoised_d = torch.lerp(denoised, denoised_2, 1 / (2 * r))
        x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x - alpha_t * torch.expm1(-h_eta) * denoised_d
        if inject:
            noise = _carry(noise, (r - 1) * h * eta, noise_sampler(sigma_1, sigmas[i + 1]))
            x = x + noise * sigmas[i + 1] * s_noise
    return x


@torch.no_grad()
def sample_seeds_3(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: StepCallback | None = None,
                   noise_sampler: NoiseSampler | None = None, eta: float = 1.0, s_noise: float = 1.0,
                   r_1: float = 1.0 / 3, r_2: float = 2.0 / 3, model_sampling: Any = None) -> Tensor:
    """SEEDS-3: three evaluations per step (stages at lambda_s + r_1 h and lambda_s + r_2 h)."""
    noise_sampler = noise_sampler or default_noise_sampler(x)
    sigmas, flow = _snr(sigmas, model_sampling)
    loop = _Loop(model, x, sigmas, callback)
    inject = eta > 0 and s_noise > 0
    for i in range(loop.n):
        denoised = loop.denoise(x, i)
        if loop.sv[i + 1] == 0:
            x = denoised
            continue
        lam_s, lam_t = half_log_snr(sigmas[i], flow), half_log_snr(sigmas[i + 1], flow)
        h = lam_t - lam_s
        h_eta = h * (eta + 1)
        lam_1, lam_2 = torch.lerp(lam_s, lam_t, r_1), torch.lerp(lam_s, lam_t, r_2)
        sigma_1, sigma_2 = sigma_from_half_log_snr(lam_1, flow), sigma_from_half_log_snr(lam_2, flow)
        alpha_1, alpha_2 = sigma_1 * lam_1.exp(), sigma_2 * lam_2.exp()
        alpha_t = sigmas[i + 1] * lam_t.exp()
        # stage 1
        x_2 = sigma_1 / sigmas[i] * (-r_1 * h * eta).exp() * x - alpha_1 * torch.expm1(-r_1 * h_eta) * denoised
        noise = torch.zeros_like(x)
        if inject:
            noise = (-2 * r_1 * h * eta).expm1().neg().sqrt() * noise_sampler(sigmas[i], sigma_1)
            x_2 = x_2 + noise * sigma_1 * s_noise
        denoised_2 = loop.model_at(x_2, sigma_1)
        # stage 2
        a3_2 = r_2 / r_1 * _h_phi_2(-r_2 * h_eta)
        a3_1 = torch.expm1(-r_2 * h_eta) - a3_2
        x_3 = sigma_2 / sigmas[i] * (-r_2 * h * eta).exp() * x - alpha_2 * (a3_1 * denoised + a3_2 * denoised_2)
        if inject:
            noise = _carry(noise, (r_1 - r_2) * h * eta, noise_sampler(sigma_1, sigma_2))
            x_3 = x_3 + noise * sigma_2 * s_noise
        denoised_3 = loop.model_at(x_3, sigma_2)
        # final stage
        b3 = _h_phi_2(-h_eta) / r_2
        b1 = torch.expm1(-h_eta) - b3
        x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x - alpha_t * (b1 * denoised + b3 * denoised_3)
        if inject:
            noise = _carry(noise, (r_2 - 1) * h * eta, noise_sampler(sigma_2, sigmas[i + 1]))
            x = x + noise * sigmas[i + 1] * s_noise
    return x


def _er_noise_scaler(v: Tensor) -> Tensor:
    """ComfyUI's default ER-SDE noise scaler."""
    return v * ((v**0.3).exp() + 10.0)


@torch.no_grad()
def sample_er_sde(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: StepCallback | None = None,
                  noise_sampler: NoiseSampler | None = None, s_noise: float = 1.0, max_stage: int = 3,
                  noise_scaler: Callable[[Tensor], Tensor] | None = None, model_sampling: Any = None) -> Tensor:
    """ER-SDE-Solver-3 (up to ``max_stage`` history terms), one evaluation per step.

    ``noise_scaler`` is the solver's noise-scale function of ``er = sigma / alpha`` (default:
    ComfyUI's ER-SDE one; ``lambda v: v`` with ``s_noise=0`` is the ODE solver).
    """
    scaler = _er_noise_scaler if noise_scaler is None else noise_scaler
    noise_sampler = noise_sampler or default_noise_sampler(x)
    sigmas, flow = _snr(sigmas, model_sampling)
    loop = _Loop(model, x, sigmas, callback)
    points = 200.0
    idx = torch.arange(0, points, dtype=torch.float32, device=x.device)  # [200]
    er = sigmas.logit().exp() if flow else sigmas.log().exp()  # er_lambda = sigma / alpha = e^(-half-log-SNR)
    old_denoised: Tensor | None = None
    old_denoised_d: Tensor | None = None
    for i in range(loop.n):
        denoised = loop.denoise(x, i)
        stage = min(max_stage, i + 1)
        if loop.sv[i + 1] == 0:
            x = denoised
        else:
            er_s, er_t = er[i], er[i + 1]
            alpha_s, alpha_t = sigmas[i] / er_s, sigmas[i + 1] / er_t
            r = scaler(er_t) / scaler(er_s)
            x = alpha_t / alpha_s * r * x + alpha_t * (1 - r) * denoised  # stage 1 (Euler)
            if stage >= 2 and old_denoised is not None:
                dt = er_t - er_s
                step = -dt / points
                pos = er_t + idx * step  # [200] integration points from er_t up to er_s
                scaled = scaler(pos)
                s = torch.sum(1 / scaled) * step
                denoised_d = (denoised - old_denoised) / (er_s - er[i - 1])
                x = x + alpha_t * (dt + s * scaler(er_t)) * denoised_d
                if stage >= 3 and old_denoised_d is not None:
                    s_u = torch.sum((pos - er_s) / scaled) * step
                    denoised_u = (denoised_d - old_denoised_d) / ((er_s - er[i - 2]) / 2)
                    x = x + alpha_t * ((dt**2) / 2 + s_u * scaler(er_t)) * denoised_u
                old_denoised_d = denoised_d
            if s_noise > 0:
                amp = (er_t**2 - er_s**2 * r**2).sqrt().nan_to_num(nan=0.0)
                x = x + alpha_t * noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * amp
        old_denoised = denoised
    return x
