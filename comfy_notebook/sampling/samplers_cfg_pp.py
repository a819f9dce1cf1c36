"""CFG++ samplers (ComfyUI's ``*_cfg_pp`` names): guided x0, unconditional noise direction.

CFG++ (Chung et al. 2024, "Manifold-constrained classifier free guidance",
https://arxiv.org/abs/2406.08070) takes the clean-latent estimate from the guided prediction
but re-noises along the *unconditional* one: an Euler step becomes
``x_next = denoised + sigma_next * (x - uncond_denoised) / sigma`` instead of
``denoised + sigma_next * (x - denoised) / sigma``.  Guidance scales that work are therefore
small (about 0.5 to 2).  Behaviour follows ComfyUI (comfy/k_diffusion/sampling.py at a125cd8).

These samplers keep the common signature but take a *guided* denoiser,
``model(x, sigma[B]) -> (denoised, uncond_denoised)`` (``CFGDenoiser.guided``; ``ksample``
builds it for the names in ``registry.SAMPLER_NEEDS_UNCOND``).  :func:`unguided` turns a
plain denoiser into one (no guidance: both predictions equal, and CFG++ reduces to the base
sampler).  ``res_multistep_cfg_pp`` lives with its base sampler in ``samplers_res.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from comfy_notebook.sampling.noise import NoiseSampler, default_noise_sampler
from comfy_notebook.sampling.samplers import (
    Denoiser,
    StepCallback,
    _Loop,
    _report,
    get_ancestral_step,
    to_d,
)
from comfy_notebook.sampling.schedules import SamplingConfigError
from comfy_notebook.sampling.snr import half_log_snr, is_flow

__all__ = [
    "GuidedDenoiser",
    "sample_dpmpp_2m_cfg_pp",
    "sample_dpmpp_2s_ancestral_cfg_pp",
    "sample_euler_ancestral_cfg_pp",
    "sample_euler_cfg_pp",
    "sample_gradient_estimation_cfg_pp",
    "unguided",
]

GuidedDenoiser = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
"""``model(x, sigma[B]) -> (denoised, uncond_denoised)``, both shaped like ``x``."""


def unguided(model: Denoiser) -> GuidedDenoiser:
    """A guided denoiser from a plain one: ``(d, d)`` (no guidance, so uncond == denoised)."""

    def guided(x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        d = model(x, sigma)
        return d, d

    return guided


def _pair(out: object) -> tuple[Tensor, Tensor]:
    """Check a guided denoiser's output (a plain Tensor would silently unpack along the batch)."""
    if type(out) is not tuple or len(out) != 2:
        raise SamplingConfigError(
            "a CFG++ sampler needs model(x, sigma) -> (denoised, uncond_denoised); received "
            f"{type(out).__name__}. Fix: run it through ksample, pass CFGDenoiser(..., "
            "keep_uncond=True).guided, or wrap a plain denoiser with comfy_notebook.sampling.unguided(model).")
    return out


class _GuidedLoop(_Loop):
    """``_Loop`` over a guided denoiser: evaluations return ``(denoised, uncond_denoised)``."""

    __slots__ = ()

    def denoise_pair(self, x: Tensor, i: int) -> tuple[Tensor, Tensor]:
        """model(x, sigmas[i]) for step ``i``; the guided ``denoised`` goes to the callback."""
        denoised, uncond = _pair(self.model(x, self.sigmas[i] * self.s_in))
        _report(self.callback, i, self.n, self.sigmas[i], self.sigmas[i], x, denoised)
        return denoised, uncond

    def pair_at(self, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """model(x, sigma) broadcast over the batch (not reported)."""
        return _pair(self.model(x, sigma * self.s_in))


def _alpha(sigma: Tensor, flow: bool = False) -> Tensor:
    """Signal scale ``sigma * e^lambda`` in the half-log-SNR ``lambda`` (``snr.py``).

    Diffusion models: ``lambda = -log(sigma)``, alpha 1 up to rounding; flow models:
    ``lambda = -logit(sigma)``, alpha ``1 - sigma`` up to rounding (0 at sigma 1).
    """
    return sigma * half_log_snr(sigma, flow).exp()


@torch.no_grad()
def sample_euler_ancestral_cfg_pp(model: GuidedDenoiser, x: Tensor, sigmas: Tensor, *,
                                  callback: StepCallback | None = None, noise_sampler: NoiseSampler | None = None,
                                  eta: float = 1.0, s_noise: float = 1.0, model_sampling: Any = None) -> Tensor:
    """Ancestral Euler (DDIM-style) steps with CFG++; a step to 0 returns the guided prediction.

    ``model_sampling``: a flow model's (``snr.is_flow``) makes the step use its half-log-SNR, as
    ComfyUI a125cd8 (no first-sigma offset here: at sigma 1 alpha is 0, the step goes to the
    ancestral one with all noise).
    """
    noisy = eta > 0 and s_noise > 0
    flow = is_flow(model_sampling)
    if noisy:
        noise_sampler = noise_sampler or default_noise_sampler(x)
    loop = _GuidedLoop(model, x, sigmas, callback)
    for i in range(loop.n):
        denoised, uncond = loop.denoise_pair(x, i)
        if loop.sv[i + 1] == 0:
            x = denoised
            continue
        alpha_s, alpha_t = _alpha(sigmas[i], flow), _alpha(sigmas[i + 1], flow)
        d = to_d(x, sigmas[i], alpha_s * uncond)  # unconditional noise direction
        sigma_down, sigma_up = get_ancestral_step(sigmas[i] / alpha_s, sigmas[i + 1] / alpha_t, eta)
        x = alpha_t * denoised + (alpha_t * sigma_down) * d
        if noisy and noise_sampler is not None:
            x = x + alpha_t * noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_euler_cfg_pp(model: GuidedDenoiser, x: Tensor, sigmas: Tensor, *, callback: StepCallback | None = None,
                        noise_sampler: NoiseSampler | None = None, model_sampling: Any = None) -> Tensor:
    """Euler steps with CFG++: ``x_next = denoised + sigma_next (x - uncond_denoised) / sigma``."""
    return sample_euler_ancestral_cfg_pp(model, x, sigmas, callback=callback, eta=0.0, s_noise=0.0,
                                         model_sampling=model_sampling)


@torch.no_grad()
def sample_dpmpp_2s_ancestral_cfg_pp(model: GuidedDenoiser, x: Tensor, sigmas: Tensor, *,
                                     callback: StepCallback | None = None, noise_sampler: NoiseSampler | None = None,
                                     eta: float = 1.0, s_noise: float = 1.0,
                                     midpoint_uncond: bool = True) -> Tensor:
    """Ancestral DPM-Solver++(2S) steps with CFG++ (x is shifted by ``denoised - uncond_denoised``).

    ``midpoint_uncond=True`` is ComfyUI's behaviour: the final update shifts x by the step's
    ``denoised`` minus the *midpoint* evaluation's unconditional prediction (ComfyUI's hook
    keeps the latest one), so even without guidance it differs from ``dpmpp_2s_ancestral``
    (on Gaussian data it widens the result).  ``False`` uses the step's own
    ``uncond_denoised`` for both shifts and reduces to ``dpmpp_2s_ancestral`` without guidance.
    """
    noise_sampler = noise_sampler or default_noise_sampler(x)
    loop = _GuidedLoop(model, x, sigmas, callback)
    for i in range(loop.n):
        denoised, uncond = loop.denoise_pair(x, i)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        # sigma_down is 0 exactly when sigma_next is (eta <= 1); otherwise ask the tensor
        if loop.sv[i + 1] == 0 or (eta > 1 and bool(sigma_down == 0)):
            x = denoised + to_d(x, sigmas[i], uncond) * sigma_down  # Euler
        else:
            t, t_next = -sigmas[i].log(), -sigma_down.log()  # t = -log(sigma)
            h = t_next - t
            s = t + 0.5 * h
            x_2 = ((-s).exp() / (-t).exp()) * (x + (denoised - uncond)) - (-h * 0.5).expm1() * denoised
            denoised_2, uncond_2 = loop.pair_at(x_2, (-s).exp())
            shift = denoised - (uncond_2 if midpoint_uncond else uncond)
            x = ((-t_next).exp() / (-t).exp()) * (x + shift) - (-h).expm1() * denoised_2
        if loop.sv[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpmpp_2m_cfg_pp(model: GuidedDenoiser, x: Tensor, sigmas: Tensor, *, callback: StepCallback | None = None,
                           noise_sampler: NoiseSampler | None = None) -> Tensor:
    """DPM-Solver++(2M) with CFG++: ``x_next = denoised + e^-h (x - uncond_denoised) + correction``."""
    loop = _GuidedLoop(model, x, sigmas, callback)
    old_uncond: Tensor | None = None
    for i in range(loop.n):
        denoised, uncond = loop.denoise_pair(x, i)
        t, t_next = -sigmas[i].log(), -sigmas[i + 1].log()
        h = t_next - t
        decay = (-h).exp()  # sigma_next / sigma
        mix = -decay * uncond
        if old_uncond is not None and loop.sv[i + 1] != 0:
            r = (t + sigmas[i - 1].log()) / h  # h_last / h
            mix = mix - (-h).expm1() * (1 / (2 * r)) * (denoised - old_uncond)
        x = denoised + mix + decay * x
        old_uncond = uncond
    return x


@torch.no_grad()
def sample_gradient_estimation_cfg_pp(model: GuidedDenoiser, x: Tensor, sigmas: Tensor, *,
                                      callback: StepCallback | None = None, noise_sampler: NoiseSampler | None = None,
                                      ge_gamma: float = 2.0) -> Tensor:
    """Gradient estimation (Permenter & Yuan) with CFG++ Euler steps along the unconditional direction."""
    loop = _GuidedLoop(model, x, sigmas, callback)
    old_d: Tensor | None = None
    for i in range(loop.n):
        denoised, uncond = loop.denoise_pair(x, i)
        d = to_d(x, sigmas[i], uncond)
        dt = sigmas[i + 1] - sigmas[i]
        if loop.sv[i + 1] == 0:
            x = denoised
        else:
            x = denoised + d * sigmas[i + 1]
            if old_d is not None:
                x = x + (ge_gamma - 1) * (d - old_d) * dt
        old_d = d
    return x
