"""Samplers as functions that own their loop (k-diffusion style), under ComfyUI's names.

Every sampler has the signature::

    sample_x(model, x, sigmas, *, callback=None, noise_sampler=None, **options) -> Tensor

``model(x, sigma[B]) -> denoised`` is a denoiser (see ``denoisers.py``), ``x`` is the noised
latent at ``sigmas[0]`` and ``sigmas`` descends to (usually) 0.  ``callback`` receives a frozen
``StepInfo`` once per step; it may raise to interrupt (samplers keep no state outside their
frame).  Algorithms follow k-diffusion (https://github.com/crowsonkb/k-diffusion, MIT) and
ComfyUI's fork of it; branching uses one host copy of ``sigmas`` made before the loop, so the
per-step path does not synchronise with the device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from comfy_notebook.sampling.noise import (
    BrownianTreeNoiseSampler,
    NoiseSampler,
    default_noise_sampler,
)

__all__ = ["Denoiser", "StepCallback", "StepInfo", "get_ancestral_step", "to_d"]

Denoiser = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class StepInfo:
    """Progress of one sampling step.

    ``step`` counts from 0 to ``total - 1``; ``sigma`` is the step's noise level (0-d tensor),
    ``x`` the latent entering the step and ``denoised`` the model's prediction of the clean
    latent at this step (both in the sampler's internal, process_in'd scale).
    """

    step: int
    total: int
    sigma: Tensor
    sigma_hat: Tensor
    x: Tensor
    denoised: Tensor


StepCallback = Callable[[StepInfo], None]


def to_d(x: Tensor, sigma: Tensor, denoised: Tensor) -> Tensor:
    """Karras ODE derivative dx/dsigma from a denoiser output."""
    return (x - denoised) / sigma


def get_ancestral_step(sigma_from: Tensor, sigma_to: Tensor, eta: float = 1.0) -> tuple[Tensor, Tensor]:
    """(sigma_down, sigma_up) of an ancestral step: step down deterministically, add noise up."""
    if not eta:
        return sigma_to, torch.zeros_like(sigma_to)
    up = eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
    sigma_up = torch.where(up < sigma_to, up, sigma_to)  # Python's min(sigma_to, up): a NaN ``up`` gives sigma_to
    return (sigma_to**2 - sigma_up**2) ** 0.5, sigma_up


def _report(cb: StepCallback | None, i: int, n: int, sigma: Tensor, hat: Tensor, x: Tensor, d: Tensor) -> None:
    if cb is not None:
        cb(StepInfo(step=i, total=n, sigma=sigma, sigma_hat=hat, x=x, denoised=d))


def _ones(x: Tensor) -> Tensor:
    return x.new_ones([x.shape[0]])  # [B]


class _Loop:
    """What every sampler loop shares: ``s_in`` [B] ones, the step count, sigmas on the host.

    ``denoise(x, i)`` is the first model evaluation of step ``i``, reported to the callback;
    ``model_at(x, sigma)`` any further evaluation within the step.
    """

    __slots__ = ("callback", "model", "n", "s_in", "sigmas", "sv")

    def __init__(self, model: Denoiser, x: Tensor, sigmas: Tensor, callback: StepCallback | None) -> None:
        self.model, self.sigmas, self.callback = model, sigmas, callback
        self.s_in = _ones(x)  # [B]
        self.n = len(sigmas) - 1
        self.sv: list[float] = sigmas.tolist()  # one host copy, for branching without a sync

    def denoise(self, x: Tensor, i: int) -> Tensor:
        """model(x, sigmas[i]) for step ``i``, reported to the callback."""
        denoised = self.model(x, self.sigmas[i] * self.s_in)
        _report(self.callback, i, self.n, self.sigmas[i], self.sigmas[i], x, denoised)
        return denoised

    def model_at(self, x: Tensor, sigma: Tensor) -> Tensor:
        """model(x, sigma) broadcast over the batch (not reported)."""
        return self.model(x, sigma * self.s_in)


@torch.no_grad()
def sample_euler(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: StepCallback | None = None,
                 noise_sampler: NoiseSampler | None = None) -> Tensor:
    """Euler steps, Algorithm 2 of Karras et al. (2022) without churn."""
    loop = _Loop(model, x, sigmas, callback)
    for i in range(loop.n):
        denoised = loop.denoise(x, i)
        x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
    return x


@torch.no_grad()
def sample_euler_ancestral(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: StepCallback | None = None,
                           noise_sampler: NoiseSampler | None = None, eta: float = 1.0, s_noise: float = 1.0) -> Tensor:
    """Ancestral sampling with Euler steps."""
    noise_sampler = noise_sampler or default_noise_sampler(x)
    loop = _Loop(model, x, sigmas, callback)
    for i in range(loop.n):
        denoised = loop.denoise(x, i)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        if loop.sv[i + 1] == 0:
            x = denoised
        else:
            d = to_d(x, sigmas[i], denoised)
            x = x + d * (sigma_down - sigmas[i]) + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_heun(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: StepCallback | None = None,
                noise_sampler: NoiseSampler | None = None) -> Tensor:
    """Heun steps, Algorithm 2 of Karras et al. (2022); Euler for the last step to 0."""
    loop = _Loop(model, x, sigmas, callback)
    for i in range(loop.n):
        denoised = loop.denoise(x, i)
        d = to_d(x, sigmas[i], denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if loop.sv[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], loop.model_at(x_2, sigmas[i + 1]))
            x = x + (d + d_2) / 2 * dt
    return x


@torch.no_grad()
def sample_heunpp2(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: StepCallback | None = None,
                   noise_sampler: NoiseSampler | None = None) -> Tensor:
    """Heun++ (3 evaluations, weights by sigma / (3 sigma_0)), as ComfyUI's ``sample_heunpp2``."""
    loop = _Loop(model, x, sigmas, callback)
    s_end = loop.sv[-1]
    for i in range(loop.n):
        denoised = loop.denoise(x, i)
        d = to_d(x, sigmas[i], denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if loop.sv[i + 1] == s_end:
            x = x + d * dt
        elif loop.sv[i + 2] == s_end:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], loop.model_at(x_2, sigmas[i + 1]))
            w2 = sigmas[i + 1] / (2 * sigmas[0])
            x = x + (d * (1 - w2) + d_2 * w2) * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], loop.model_at(x_2, sigmas[i + 1]))
            x_3 = x_2 + d_2 * (sigmas[i + 2] - sigmas[i + 1])
            d_3 = to_d(x_3, sigmas[i + 2], loop.model_at(x_3, sigmas[i + 2]))
            w = 3 * sigmas[0]
            w2, w3 = sigmas[i + 1] / w, sigmas[i + 2] / w
            x = x + ((1 - w2 - w3) * d + w2 * d_2 + w3 * d_3) * dt
    return x


@torch.no_grad()
def sample_dpm_2(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: StepCallback | None = None,
                 noise_sampler: NoiseSampler | None = None) -> Tensor:
    """DPM-Solver-2 inspired midpoint steps (k-diffusion ``sample_dpm_2``)."""
    loop = _Loop(model, x, sigmas, callback)
    for i in range(loop.n):
        denoised = loop.denoise(x, i)
        d = to_d(x, sigmas[i], denoised)
        if loop.sv[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigmas[i])
        else:
            sigma_mid = sigmas[i].log().lerp(sigmas[i + 1].log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigmas[i])
            d_2 = to_d(x_2, sigma_mid, loop.model_at(x_2, sigma_mid))
            x = x + d_2 * (sigmas[i + 1] - sigmas[i])
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: StepCallback | None = None,
                           noise_sampler: NoiseSampler | None = None, eta: float = 1.0, s_noise: float = 1.0) -> Tensor:
    """Ancestral sampling with DPM-Solver-2 steps."""
    noise_sampler = noise_sampler or default_noise_sampler(x)
    loop = _Loop(model, x, sigmas, callback)
    for i in range(loop.n):
        denoised = loop.denoise(x, i)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        d = to_d(x, sigmas[i], denoised)
        if loop.sv[i + 1] == 0:
            x = x + d * (sigma_down - sigmas[i])
        else:
            sigma_mid = sigmas[i].log().lerp(sigma_down.log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigmas[i])
            d_2 = to_d(x_2, sigma_mid, loop.model_at(x_2, sigma_mid))
            x = x + d_2 * (sigma_down - sigmas[i])
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpmpp_2s_ancestral(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: StepCallback | None = None,
                              noise_sampler: NoiseSampler | None = None, eta: float = 1.0, s_noise: float = 1.0) -> Tensor:
    """Ancestral sampling with DPM-Solver++(2S) steps (Lu et al. 2022)."""
    noise_sampler = noise_sampler or default_noise_sampler(x)
    loop = _Loop(model, x, sigmas, callback)
    for i in range(loop.n):
        denoised = loop.denoise(x, i)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        if loop.sv[i + 1] == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            t, t_next = -sigmas[i].log(), -sigma_down.log()  # t = -log(sigma)
            h = t_next - t
            s = t + 0.5 * h
            x_2 = ((-s).exp() / (-t).exp()) * x - (-h * 0.5).expm1() * denoised
            denoised_2 = loop.model_at(x_2, (-s).exp())
            x = ((-t_next).exp() / (-t).exp()) * x - (-h).expm1() * denoised_2
        if loop.sv[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def _brownian(x: Tensor, sigmas: Tensor, noise_sampler: NoiseSampler | None) -> NoiseSampler:
    if noise_sampler is not None:
        return noise_sampler
    return BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max(), cpu=True)


@torch.no_grad()
def sample_dpmpp_sde(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: StepCallback | None = None,
                     noise_sampler: NoiseSampler | None = None, eta: float = 1.0, s_noise: float = 1.0,
                     r: float = 0.5) -> Tensor:
    """DPM-Solver++ (stochastic), two evaluations per step, Brownian-tree noise."""
    if len(sigmas) <= 1:
        return x
    noise_sampler = _brownian(x, sigmas, noise_sampler)
    loop = _Loop(model, x, sigmas, callback)
    for i in range(loop.n):
        denoised = loop.denoise(x, i)
        if loop.sv[i + 1] == 0:
            x = denoised
            continue
        t, t_next = -sigmas[i].log(), -sigmas[i + 1].log()
        h = t_next - t
        s = t + h * r
        fac = 1 / (2 * r)
        sigma_s = (-s).exp()
        # step 1
        sd, su = get_ancestral_step((-t).exp(), sigma_s, eta)
        s_ = -sd.log()
        x_2 = (sd / sigmas[i]) * x - (t - s_).expm1() * denoised
        x_2 = x_2 + noise_sampler(sigmas[i], sigma_s) * s_noise * su
        denoised_2 = loop.model_at(x_2, sigma_s)
        # step 2
        sd, su = get_ancestral_step((-t).exp(), (-t_next).exp(), eta)
        t_next_ = -sd.log()
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (sd / sigmas[i]) * x - (t - t_next_).expm1() * denoised_d
        x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * su
    return x


@torch.no_grad()
def sample_dpmpp_2m(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: StepCallback | None = None,
                    noise_sampler: NoiseSampler | None = None) -> Tensor:
    """DPM-Solver++(2M), multistep, one evaluation per step."""
    loop = _Loop(model, x, sigmas, callback)
    old_denoised: Tensor | None = None
    for i in range(loop.n):
        denoised = loop.denoise(x, i)
        t, t_next = -sigmas[i].log(), -sigmas[i + 1].log()
        h = t_next - t
        if old_denoised is None or loop.sv[i + 1] == 0:
            x = ((-t_next).exp() / (-t).exp()) * x - (-h).expm1() * denoised
        else:
            r = (t + sigmas[i - 1].log()) / h  # h_last / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = ((-t_next).exp() / (-t).exp()) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: StepCallback | None = None,
                        noise_sampler: NoiseSampler | None = None, eta: float = 1.0, s_noise: float = 1.0,
                        solver_type: str = "midpoint") -> Tensor:
    """DPM-Solver++(2M) SDE (midpoint or heun correction), Brownian-tree noise."""
    if solver_type not in {"heun", "midpoint"}:
        raise ValueError(f"solver_type must be 'heun' or 'midpoint', received {solver_type!r}")
    if len(sigmas) <= 1:
        return x
    noise_sampler = _brownian(x, sigmas, noise_sampler)
    loop = _Loop(model, x, sigmas, callback)
    old_denoised: Tensor | None = None
    h_last: Tensor | None = None
    h: Tensor | None = None
    for i in range(loop.n):
        denoised = loop.denoise(x, i)
        if loop.sv[i + 1] == 0:
            x = denoised
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            eta_h = eta * h
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + (-h - eta_h).expm1().neg() * denoised
            if old_denoised is not None and h_last is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + ((-h - eta_h).expm1().neg() / (-h - eta_h) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * (-h - eta_h).expm1().neg() * (1 / r) * (denoised - old_denoised)
            if eta:
                x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * eta_h).expm1().neg().sqrt() * s_noise
        old_denoised = denoised
        h_last = h
    return x


@torch.no_grad()
def sample_dpmpp_3m_sde(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: StepCallback | None = None,
                        noise_sampler: NoiseSampler | None = None, eta: float = 1.0, s_noise: float = 1.0) -> Tensor:
    """DPM-Solver++(3M) SDE, Brownian-tree noise."""
    if len(sigmas) <= 1:
        return x
    noise_sampler = _brownian(x, sigmas, noise_sampler)
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
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            h_eta = h * (eta + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            if h_2 is not None and h_1 is not None and denoised_1 is not None and denoised_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None and denoised_1 is not None:
                r = h_1 / h
                d = (denoised - denoised_1) / r
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                x = x + phi_2 * d
            if eta:
                x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


def _with(fn: Callable[..., Tensor], **fixed: Any) -> Callable[..., Tensor]:
    """A sampler with some options fixed (e.g. ``solver_type='heun'``)."""

    def sampler(model: Denoiser, x: Tensor, sigmas: Tensor, **kw: Any) -> Tensor:
        return fn(model, x, sigmas, **fixed, **kw)

    sampler.__name__ = fn.__name__
    sampler.__doc__ = f"{fn.__name__} with {fixed}."
    return sampler


sample_dpmpp_2m_sde_heun = _with(sample_dpmpp_2m_sde, solver_type="heun")
