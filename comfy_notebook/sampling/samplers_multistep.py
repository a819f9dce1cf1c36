"""Multistep, adaptive and DDPM-style samplers (same signature as ``samplers.py``).

lms, dpm_fast, dpm_adaptive follow k-diffusion (MIT); ipndm, ipndm_v, deis follow zju-pi
diff-sampler (Apache-2.0) as ComfyUI uses them; ddpm and lcm follow ComfyUI's step functions.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from comfy_notebook.sampling.noise import NoiseSampler, default_noise_sampler
from comfy_notebook.sampling.samplers import (
    Denoiser,
    StepCallback,
    _Loop,
    _ones,
    _report,
    get_ancestral_step,
    to_d,
)

__all__: list[str] = []


def _lms_coeff(order: int, t: list[float], i: int, j: int) -> float:
    """Integral over [t_i, t_{i+1}] of the j-th Lagrange basis polynomial."""
    from scipy import integrate

    def fn(tau: float) -> float:
        prod = 1.0
        for k in range(order):
            if j != k:
                prod *= (tau - t[i - k]) / (t[i - j] - t[i - k])
        return prod

    return float(integrate.quad(fn, t[i], t[i + 1], epsrel=1e-4)[0])


@torch.no_grad()
def sample_lms(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: StepCallback | None = None,
               noise_sampler: NoiseSampler | None = None, order: int = 4) -> Tensor:
    """Linear multistep (Adams-Bashforth in sigma) of up to ``order``."""
    loop = _Loop(model, x, sigmas, callback)
    ds: list[Tensor] = []
    for i in range(loop.n):
        denoised = loop.denoise(x, i)
        ds = [*ds, to_d(x, sigmas[i], denoised)][-order:]
        if loop.sv[i + 1] == 0:
            x = denoised
        else:
            cur = min(i + 1, order)
            coeffs = [_lms_coeff(cur, loop.sv, i, j) for j in range(cur)]
            x = x + sum(c * d for c, d in zip(coeffs, reversed(ds), strict=False))
    return x


class _DPMSolver:
    """DPM-Solver-1/2/3 steps in t = -log(sigma) (Lu et al. 2022, arXiv:2206.00927)."""

    def __init__(self, model: Denoiser, x: Tensor, callback: StepCallback | None, total: int) -> None:
        self.model, self.s_in, self.callback, self.total = model, _ones(x), callback, total

    def eps(self, cache: dict[str, Tensor], key: str, x: Tensor, t: Tensor) -> Tensor:
        if key not in cache:
            sigma = (-t).exp()
            cache[key] = (x - self.model(x, sigma * self.s_in)) / sigma
        return cache[key]

    def step1(self, x: Tensor, t: Tensor, t_next: Tensor, cache: dict[str, Tensor]) -> Tensor:
        h = t_next - t
        return x - (-t_next).exp() * h.expm1() * self.eps(cache, "eps", x, t)

    def step2(self, x: Tensor, t: Tensor, t_next: Tensor, cache: dict[str, Tensor], r1: float = 0.5) -> Tensor:
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        u1 = x - (-s1).exp() * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        sn = (-t_next).exp()
        return x - sn * h.expm1() * eps - sn / (2 * r1) * h.expm1() * (eps_r1 - eps)

    def step3(self, x: Tensor, t: Tensor, t_next: Tensor, cache: dict[str, Tensor]) -> Tensor:
        r1, r2 = 1 / 3, 2 / 3
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1, s2 = t + r1 * h, t + r2 * h
        u1 = x - (-s1).exp() * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        u2 = (x - (-s2).exp() * (r2 * h).expm1() * eps
              - (-s2).exp() * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps))
        eps_r2 = self.eps(cache, "eps_r2", u2, s2)
        sn = (-t_next).exp()
        return x - sn * h.expm1() * eps - sn / r2 * (h.expm1() / h - 1) * (eps_r2 - eps)

    def report(self, i: int, x: Tensor, t: Tensor, cache: dict[str, Tensor]) -> None:
        eps = self.eps(cache, "eps", x, t)
        sigma = (-t).exp()
        _report(self.callback, i, self.total, sigma, sigma, x, x - sigma * eps)


def _range(sigmas: Tensor) -> tuple[Tensor, Tensor]:
    sigma_min = sigmas[-1] if float(sigmas[-1]) > 0 else sigmas[-2]
    return sigma_min, sigmas[0]


@torch.no_grad()
def sample_dpm_fast(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: StepCallback | None = None,
                    noise_sampler: NoiseSampler | None = None, eta: float = 0.0, s_noise: float = 1.0) -> Tensor:
    """DPM-Solver-Fast: ``len(sigmas) - 1`` evaluations between sigmas[0] and the last non-zero sigma."""
    if len(sigmas) <= 1:
        return x
    nfe = len(sigmas) - 1
    sigma_min, sigma_max = _range(sigmas)
    t_start, t_end = -sigma_max.log(), -sigma_min.log()
    noise_sampler = noise_sampler or default_noise_sampler(x)
    m = math.floor(nfe / 3) + 1
    ts = torch.linspace(float(t_start), float(t_end), m + 1, device=x.device)
    orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
    solver = _DPMSolver(model, x, callback, len(orders))
    for i, order in enumerate(orders):
        cache: dict[str, Tensor] = {}
        t, t_next = ts[i], ts[i + 1]
        if eta:
            sd, _ = get_ancestral_step((-t).exp(), (-t_next).exp(), eta)
            t_next_ = torch.minimum(t_end, -sd.log())
            su = ((-t_next).exp() ** 2 - (-t_next_).exp() ** 2) ** 0.5
        else:
            t_next_, su = t_next, torch.zeros(())
        solver.report(i, x, t, cache)
        step = {1: solver.step1, 2: solver.step2, 3: solver.step3}[order]
        x = step(x, t, t_next_, cache)
        if eta:
            x = x + su * s_noise * noise_sampler((-t).exp(), (-t_next).exp())
    return x


@torch.no_grad()
def sample_dpm_adaptive(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: StepCallback | None = None,
                        noise_sampler: NoiseSampler | None = None, order: int = 3, rtol: float = 0.05,
                        atol: float = 0.0078, h_init: float = 0.05, pcoeff: float = 0.0, icoeff: float = 1.0,
                        dcoeff: float = 0.0, accept_safety: float = 0.81, eta: float = 0.0,
                        s_noise: float = 1.0) -> Tensor:
    """DPM-Solver-12/23 with PID step-size control; uses only sigmas[0] and the last non-zero sigma.

    ``eta > 0`` makes each accepted step ancestral (step down to sigma_down, add noise up to the
    step's end), with the controller's order 1.5, as k-diffusion's ``dpm_solver_adaptive``.
    """
    if len(sigmas) <= 1:
        return x
    if order not in {2, 3}:
        raise ValueError(f"order must be 2 or 3, received {order}")
    sigma_min, sigma_max = _range(sigmas)
    t_end = -sigma_min.log()
    s = -sigma_max.log()
    pid_order = 1.5 if eta else order
    b1 = (pcoeff + icoeff + dcoeff) / pid_order
    b2, b3 = -(pcoeff + 2 * dcoeff) / pid_order, dcoeff / pid_order
    if eta:
        noise_sampler = noise_sampler or default_noise_sampler(x)
    h, errs = h_init, [0.0, 0.0, 0.0]
    atol_t, rtol_t = torch.tensor(atol), torch.tensor(rtol)
    x_prev, step = x, 0
    solver = _DPMSolver(model, x, callback, 0)
    while s < t_end - 1e-5:
        cache: dict[str, Tensor] = {}
        t = torch.minimum(t_end, s + h)
        t_, su = t, None
        if eta:
            sd, _ = get_ancestral_step((-s).exp(), (-t).exp(), eta)
            t_ = torch.minimum(t_end, -sd.log())
            su = ((-t).exp() ** 2 - (-t_).exp() ** 2) ** 0.5
        solver.report(step, x, s, cache)
        if order == 2:
            x_low, x_high = solver.step1(x, s, t_, cache), solver.step2(x, s, t_, cache)
        else:
            x_low, x_high = solver.step2(x, s, t_, cache, r1=1 / 3), solver.step3(x, s, t_, cache)
        delta = torch.maximum(atol_t, rtol_t * torch.maximum(x_low.abs(), x_prev.abs()))
        error = float(torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5)
        inv = 1 / (error + 1e-8)
        if step == 0:
            errs = [inv, inv, inv]
        errs[0] = inv
        factor = 1 + math.atan(errs[0] ** b1 * errs[1] ** b2 * errs[2] ** b3 - 1)
        if factor >= accept_safety:
            errs[2], errs[1] = errs[1], errs[0]
            if su is not None and noise_sampler is not None:
                x_high = x_high + su * s_noise * noise_sampler((-s).exp(), (-t).exp())
            x_prev, x, s = x_low, x_high, t
        h *= factor
        step += 1
    return x


def _history_step(buffer: list[Tensor], d: Tensor, max_order: int) -> list[Tensor]:
    return [*buffer, d][-(max_order - 1):] if max_order > 1 else []


@torch.no_grad()
def sample_ipndm(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: StepCallback | None = None,
                 noise_sampler: NoiseSampler | None = None, max_order: int = 4) -> Tensor:
    """Improved PNDM: Adams-Bashforth in sigma with fixed coefficients, up to order 4."""
    loop = _Loop(model, x, sigmas, callback)
    buf: list[Tensor] = []
    for i in range(loop.n):
        denoised = loop.denoise(x, i)
        d = (x - denoised) / sigmas[i]
        order, dt = min(max_order, i + 1), sigmas[i + 1] - sigmas[i]
        x_next = x
        if loop.sv[i + 1] == 0:
            x_next = denoised
        elif order == 1:
            x_next = x + dt * d
        elif order == 2:
            x_next = x + dt * (3 * d - buf[-1]) / 2
        elif order == 3:
            x_next = x + dt * (23 * d - 16 * buf[-1] + 5 * buf[-2]) / 12
        else:
            x_next = x + dt * (55 * d - 59 * buf[-1] + 37 * buf[-2] - 9 * buf[-3]) / 24
        buf = _history_step(buf, d, max_order)
        x = x_next
    return x


@torch.no_grad()
def sample_ipndm_v(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: StepCallback | None = None,
                   noise_sampler: NoiseSampler | None = None, max_order: int = 4) -> Tensor:
    """iPNDM with variable-step coefficients."""
    loop = _Loop(model, x, sigmas, callback)
    t = sigmas
    buf: list[Tensor] = []
    for i in range(loop.n):
        denoised = loop.denoise(x, i)
        d = (x - denoised) / sigmas[i]
        order, hn = min(max_order, i + 1), t[i + 1] - t[i]
        if loop.sv[i + 1] == 0:
            x_next = denoised
        elif order == 1:
            x_next = x + hn * d
        else:
            h1 = t[i] - t[i - 1]
            c1, c2 = (2 + hn / h1) / 2, -(hn / h1) / 2
            if order == 2:
                x_next = x + hn * (c1 * d + c2 * buf[-1])
            else:
                h2 = t[i - 1] - t[i - 2]
                temp1 = (1 - hn / (3 * (hn + h1)) * (hn * (hn + h1)) / (h1 * (h1 + h2))) / 2
                if order == 3:
                    x_next = x + hn * ((c1 + temp1) * d + (c2 - (1 + h1 / h2) * temp1) * buf[-1]
                                       + temp1 * h1 / h2 * buf[-2])
                else:
                    h3 = t[i - 2] - t[i - 3]
                    q = h1 * (h1 + h2) / (h2 * (h2 + h3))
                    temp2 = (((1 - hn / (3 * (hn + h1))) / 2 + (1 - hn / (2 * (hn + h1))) * hn / (6 * (hn + h1 + h2)))
                             * (hn * (hn + h1) * (hn + h1 + h2)) / (h1 * (h1 + h2) * (h1 + h2 + h3)))
                    k1 = c1 + temp1 + temp2
                    k2 = c2 - (1 + h1 / h2) * temp1 - (1 + h1 / h2 + q) * temp2
                    k3 = temp1 * h1 / h2 + (h1 / h2 + q * (1 + h2 / h3)) * temp2
                    k4 = -temp2 * q * h1 / h2
                    x_next = x + hn * (k1 * d + k2 * buf[-1] + k3 * buf[-2] + k4 * buf[-3])
        buf = _history_step(buf, d, max_order)
        x = x_next
    return x


def _deis_coeffs(t_steps: Tensor, max_order: int, n_int: int = 10000) -> list[list[Tensor]]:
    """DEIS 'tab' coefficients: integrate Lagrange bases against the VP integrand in VP time."""
    sigma_min, sigma_max, eps_s = 0.002, 80.0, 1e-3  # EDM -> VP time mapping constants
    log1 = lambda s: math.log(s**2 + 1)  # noqa: E731
    beta_d = 2 * (log1(sigma_min) / eps_s - log1(sigma_max)) / (eps_s - 1)
    beta_min = log1(sigma_max) - 0.5 * beta_d
    sig = t_steps.detach().cpu().double()
    ts = ((beta_min**2 + 2 * beta_d * (sig**2 + 1).log()).sqrt() - beta_min) / beta_d  # [N+1]
    beta_0, beta_1 = beta_min, beta_d + beta_min
    out: list[list[Tensor]] = []
    for i in range(len(ts) - 1):
        order = min(i + 1, max_order)
        if order == 1:
            out.append([])
            continue
        taus = torch.linspace(float(ts[i]), float(ts[i + 1]), n_int, dtype=torch.float64)
        dtau = (ts[i + 1] - ts[i]) / n_int
        log_alpha = -0.5 * taus**2 * (beta_1 - beta_0) - taus * beta_0
        alpha = log_alpha.exp()
        dlog = -taus * (beta_1 - beta_0) - beta_0  # d log(alpha) / d tau
        integrand = -0.5 * dlog / torch.sqrt(alpha * (1 - alpha))
        prev = ts[[i - k for k in range(order)]]
        row = []
        for j in range(order):
            poly = torch.ones_like(taus)
            for k in range(order):
                if k != j:
                    poly = poly * (taus - prev[k]) / (prev[j] - prev[k])
            row.append((integrand * poly).sum() * dtau)
        out.append(row)
    return out


@torch.no_grad()
def sample_deis(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: StepCallback | None = None,
                noise_sampler: NoiseSampler | None = None, max_order: int = 3) -> Tensor:
    """DEIS ('tab' mode), exponential-integrator multistep of up to ``max_order``."""
    coeffs = _deis_coeffs(sigmas, max_order)
    loop = _Loop(model, x, sigmas, callback)
    buf: list[Tensor] = []
    for i in range(loop.n):
        denoised = loop.denoise(x, i)
        d = (x - denoised) / sigmas[i]
        order = 1 if loop.sv[i + 1] <= 0 else min(max_order, i + 1)
        if order == 1:
            x_next = x + (sigmas[i + 1] - sigmas[i]) * d
        else:
            c = [v.to(x.dtype) for v in coeffs[i]]
            x_next = x + c[0] * d + sum(c[k] * buf[-k] for k in range(1, order))
        buf = _history_step(buf, d, max_order)
        x = x_next
    return x


def _generic_vp_step(model: Denoiser, x: Tensor, sigmas: Tensor, callback: StepCallback | None,
                     noise_sampler: NoiseSampler, lcm: bool) -> Tensor:
    loop = _Loop(model, x, sigmas, callback)
    for i in range(loop.n):
        denoised = loop.denoise(x, i)
        if lcm:  # jump to the prediction, re-noise to the next sigma
            x = denoised
            if loop.sv[i + 1] > 0:
                x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1]
            continue
        sigma, sigma_prev = sigmas[i], sigmas[i + 1]
        eps = (x - denoised) / sigma
        xv = x / torch.sqrt(1.0 + sigma**2)  # VP-scaled latent
        a_cum, a_cum_prev = 1 / (sigma * sigma + 1), 1 / (sigma_prev * sigma_prev + 1)
        alpha = a_cum / a_cum_prev
        mu = (1.0 / alpha).sqrt() * (xv - (1 - alpha) * eps / (1 - a_cum).sqrt())
        if loop.sv[i + 1] > 0:
            mu = mu + ((1 - alpha) * (1.0 - a_cum_prev) / (1.0 - a_cum)).sqrt() * noise_sampler(sigma, sigma_prev)
            mu = mu * torch.sqrt(1.0 + sigma_prev**2)
        x = mu
    return x


@torch.no_grad()
def sample_ddpm(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: StepCallback | None = None,
                noise_sampler: NoiseSampler | None = None) -> Tensor:
    """DDPM ancestral steps (Ho et al. 2020) in the VP scaling, as ComfyUI's ``DDPMSampler_step``."""
    return _generic_vp_step(model, x, sigmas, callback, noise_sampler or default_noise_sampler(x), lcm=False)


@torch.no_grad()
def sample_lcm(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: StepCallback | None = None,
               noise_sampler: NoiseSampler | None = None) -> Tensor:
    """Latent Consistency Model sampling: predict x0, re-noise to the next sigma."""
    return _generic_vp_step(model, x, sigmas, callback, noise_sampler or default_noise_sampler(x), lcm=True)


@torch.no_grad()
def sample_gradient_estimation(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: StepCallback | None = None,
                               noise_sampler: NoiseSampler | None = None, ge_gamma: float = 2.0) -> Tensor:
    """Euler with gradient estimation (Permenter & Yuan, https://openreview.net/pdf?id=o2ND9v0CeK)."""
    loop = _Loop(model, x, sigmas, callback)
    old_d: Tensor | None = None
    for i in range(loop.n):
        denoised = loop.denoise(x, i)
        d = to_d(x, sigmas[i], denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if loop.sv[i + 1] == 0:
            x = denoised
        else:
            x = x + d * dt
            if old_d is not None:
                x = x + (ge_gamma - 1) * (d - old_d) * dt
        old_d = d
    return x
