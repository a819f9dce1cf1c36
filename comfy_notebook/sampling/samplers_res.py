"""RES multistep samplers (ComfyUI ``res_multistep``, ``res_multistep_ancestral``).

Second-order exponential multistep method of Zhang et al., "Improved order analysis and design
of exponential integrator for diffusion models sampling" (https://arxiv.org/abs/2308.02157), as
ComfyUI's ``res_multistep`` (comfy/k_diffusion/sampling.py at a125cd8): Euler for the first
step and for steps down to 0, otherwise ``x = e^-h x + h (b1 D_i + b2 D_{i-1})`` in
t = -log(sigma) with ``c2 = (t_{i-1} - t_old) / h`` (t_old: the previous step's target), then
ancestral noise (eta = 0 for ``res_multistep``, 1 for ``res_multistep_ancestral``).

The ``_cfg_pp`` variants take a guided denoiser ``model(x, sigma) -> (denoised, uncond_denoised)``
(see ``samplers_cfg_pp.py``): Euler steps go along the unconditional direction from the guided
prediction, multistep steps first shift x by ``denoised - uncond_denoised`` and then use the
unconditional predictions (current and previous) in the update.
"""

from __future__ import annotations

import torch
from torch import Tensor

from comfy_notebook.sampling.noise import NoiseSampler, default_noise_sampler
from comfy_notebook.sampling.samplers import (
    Denoiser,
    StepCallback,
    _Loop,
    get_ancestral_step,
    to_d,
)
from comfy_notebook.sampling.samplers_cfg_pp import GuidedDenoiser, _GuidedLoop

__all__ = ["sample_res_multistep", "sample_res_multistep_ancestral", "sample_res_multistep_ancestral_cfg_pp",
           "sample_res_multistep_cfg_pp"]


def _phi1(t: Tensor) -> Tensor:
    return torch.expm1(t) / t


def _phi2(t: Tensor) -> Tensor:
    return (_phi1(t) - 1.0) / t


def _res_multistep(model: Denoiser | GuidedDenoiser, x: Tensor, sigmas: Tensor, callback: StepCallback | None,
                   noise_sampler: NoiseSampler | None, eta: float, s_noise: float, cfg_pp: bool = False) -> Tensor:
    """Shared loop of the RES multistep samplers (``cfg_pp``: ``model`` is a guided denoiser)."""
    guided = _GuidedLoop(model, x, sigmas, callback) if cfg_pp else None
    loop = guided or _Loop(model, x, sigmas, callback)
    if eta:
        noise_sampler = noise_sampler or default_noise_sampler(x)
    old_denoised: Tensor | None = None
    old_sigma_down: Tensor | None = None
    for i in range(loop.n):
        if guided is not None:
            denoised, uncond = guided.denoise_pair(x, i)
        else:
            denoised = uncond = loop.denoise(x, i)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        # sigma_down is 0 exactly when sigma_next is (eta <= 1); otherwise ask the tensor
        down_zero = loop.sv[i + 1] == 0 or (eta > 1 and bool(sigma_down == 0))
        if down_zero or old_denoised is None or old_sigma_down is None:
            if cfg_pp:  # Euler along the unconditional direction
                x = denoised + to_d(x, sigmas[i], uncond) * sigma_down
            else:
                x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])  # Euler
        else:
            t, t_old, t_next, t_prev = -sigmas[i].log(), -old_sigma_down.log(), -sigma_down.log(), -sigmas[i - 1].log()
            h = t_next - t
            c2 = (t_prev - t_old) / h
            phi1, phi2 = _phi1(-h), _phi2(-h)
            b1 = torch.nan_to_num(phi1 - phi2 / c2, nan=0.0)
            b2 = torch.nan_to_num(phi2 / c2, nan=0.0)
            if cfg_pp:
                x = x + (denoised - uncond)
            x = (-h).exp() * x + h * (b1 * uncond + b2 * old_denoised)
        if loop.sv[i + 1] > 0 and eta and noise_sampler is not None:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
        old_denoised, old_sigma_down = uncond, sigma_down  # uncond is denoised unless cfg_pp
    return x


@torch.no_grad()
def sample_res_multistep(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: StepCallback | None = None,
                         noise_sampler: NoiseSampler | None = None, s_noise: float = 1.0) -> Tensor:
    """RES second-order multistep (deterministic, eta = 0)."""
    return _res_multistep(model, x, sigmas, callback, noise_sampler, eta=0.0, s_noise=s_noise)


@torch.no_grad()
def sample_res_multistep_ancestral(model: Denoiser, x: Tensor, sigmas: Tensor, *,
                                   callback: StepCallback | None = None, noise_sampler: NoiseSampler | None = None,
                                   eta: float = 1.0, s_noise: float = 1.0) -> Tensor:
    """RES second-order multistep with ancestral noise (eta = 1)."""
    return _res_multistep(model, x, sigmas, callback, noise_sampler, eta=eta, s_noise=s_noise)


@torch.no_grad()
def sample_res_multistep_cfg_pp(model: GuidedDenoiser, x: Tensor, sigmas: Tensor, *,
                                callback: StepCallback | None = None, noise_sampler: NoiseSampler | None = None,
                                s_noise: float = 1.0) -> Tensor:
    """RES second-order multistep with CFG++ (deterministic, eta = 0)."""
    return _res_multistep(model, x, sigmas, callback, noise_sampler, eta=0.0, s_noise=s_noise, cfg_pp=True)


@torch.no_grad()
def sample_res_multistep_ancestral_cfg_pp(model: GuidedDenoiser, x: Tensor, sigmas: Tensor, *,
                                          callback: StepCallback | None = None,
                                          noise_sampler: NoiseSampler | None = None, eta: float = 1.0,
                                          s_noise: float = 1.0) -> Tensor:
    """RES second-order multistep with CFG++ and ancestral noise (eta = 1)."""
    return _res_multistep(model, x, sigmas, callback, noise_sampler, eta=eta, s_noise=s_noise, cfg_pp=True)
