"""SA-Solver: stochastic Adams predictor-corrector (ComfyUI's ``sa_solver``, ``sa_solver_pece``).

Xue et al., "SA-Solver: Stochastic Adams Solver for Fast Sampling of Diffusion Models"
(NeurIPS 2023, https://arxiv.org/abs/2309.05019), in data prediction and half-log-SNR time
``lambda = -log(sigma)`` (discrete-time models).  One step from ``lambda_s`` to ``lambda_t``
(``h = lambda_t - lambda_s``, stochasticity ``tau``, ``k = 1 + tau^2``)::

    x_t = (sigma_t / sigma_s) e^(-tau^2 h) x_s + sum_j b_j D_j + sigma_t sqrt(1 - e^(-2 tau^2 h)) z
    b_j = alpha_t k * integral_s^t e^(-k (lambda_t - lambda)) L_j(lambda) d lambda

with ``L_j`` the Lagrange basis through the last few evaluation times and ``D_j`` the model's
predictions there.  The predictor extrapolates (up to ``predictor_order`` points); once the
model has been evaluated at the predicted state, the corrector redoes the same step with that
new point included (up to ``corrector_order`` points) and the same noise.  ``use_pece`` also
re-evaluates the model at the corrected state.  Orders drop to 1 towards a final sigma of 0.

Behaviour as ComfyUI (comfy/k_diffusion/sa_solver.py and sampling.py at a125cd8): ``tau`` is
1 for sigmas within the schedule's [percent 0.2, percent 0.8] window and 0 outside (an ODE
step), so the sampler needs the model's schedule (``registry.SAMPLER_NEEDS_SCHEDULE``: ``ksample``
passes ``schedule=``) or an explicit ``tau_func``.  The b coefficients are host scalars computed
in double precision (ComfyUI: in the sigmas' dtype); the per-step tensor work is the weighted sums.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from comfy_notebook.sampling.noise import NoiseSampler, default_noise_sampler
from comfy_notebook.sampling.samplers import Denoiser, StepCallback, _Loop
from comfy_notebook.sampling.schedules import DiscreteSchedule, SamplingConfigError
from comfy_notebook.sampling.snr import is_flow, offset_first_sigma

__all__ = ["adams_coeffs", "sample_sa_solver", "sample_sa_solver_pece", "tau_window"]

TauFunc = Callable[[float], float]


def tau_window(start_sigma: float, end_sigma: float, eta: float = 1.0) -> TauFunc:
    """``tau(sigma) = eta`` for ``end_sigma <= sigma <= start_sigma``, else 0 (eta <= 0: always 0, an ODE)."""

    def tau(sigma: float) -> float:
        if eta <= 0:
            return 0.0
        return eta if start_sigma >= sigma >= end_sigma else 0.0

    return tau


def _weighted_moments(h: float, n: int, k: float) -> list[float]:
    """``m_p = k * integral_{-h}^0 e^(k u) u^p du`` for p < n (by parts: ``m_p = -(-h)^p e^(-k h) - (p/k) m_(p-1)``)."""
    decay = math.exp(-k * h)
    out: list[float] = []
    for p in range(n):
        m = -math.expm1(-k * h) if p == 0 else -((-h) ** p) * decay - p / k * out[-1]
        out.append(m)
    return out


def adams_coeffs(sigma_t: float, lambdas: Sequence[float], lambda_s: float, lambda_t: float, tau: float,
                 simple_order_2: bool = False, corrector: bool = False) -> list[float]:
    """SA-Solver weights ``b_j`` of the predictions at ``lambdas`` (oldest first) for a step s -> t.

    Parameters
    ----------
    sigma_t:
        Sigma at the step's end.
    lambdas:
        Half-log-SNR of the evaluation points used (their count is the order).
    lambda_s, lambda_t:
        Half-log-SNR at the step's start and end.
    tau:
        Stochasticity of the step (0: ODE).
    simple_order_2:
        With two points, use the simplified order-2 weights of the paper's appendix D.
    corrector:
        Which simplified order-2 weights (corrector or predictor) to use.

    Returns
    -------
    list of float
        One weight per point, in the order of ``lambdas``: ``alpha_t k`` times the integral of
        ``e^(-k (lambda_t - lambda))`` times the point's Lagrange basis polynomial over [s, t].
    """
    k = 1.0 + tau * tau
    h = lambda_t - lambda_s
    alpha_t = sigma_t * math.exp(lambda_t)  # 1 up to rounding for discrete-time models
    whole = -math.expm1(-k * h)  # k * integral of e^(-k (t - lambda)) over [s, t]
    if simple_order_2 and len(lambdas) == 2:
        if corrector:
            newer = 0.5 * k * h
            return [alpha_t * (whole - newer), alpha_t * newer]
        older = 0.5 * k * h * h / (lambdas[-2] - lambda_s)
        return [alpha_t * older, alpha_t * (whole - older)]
    # b_j = alpha_t sum_p c_jp m_p with L_j(u) = sum_p c_jp u^p in u = lambda - lambda_t (host floats:
    # at most 4 points, so plain Python is cheaper per step than building tensors)
    nodes = [lam - lambda_t for lam in lambdas]
    moments = _weighted_moments(h, len(nodes), k)
    return [alpha_t * sum(c * m for c, m in zip(_lagrange_poly(nodes, j), moments, strict=True))
            for j in range(len(nodes))]


def _lagrange_poly(nodes: Sequence[float], j: int) -> list[float]:
    """Monomial coefficients (increasing powers) of the Lagrange basis polynomial of ``nodes[j]``."""
    poly = [1.0]
    for m, u_m in enumerate(nodes):
        if m == j:
            continue
        den = nodes[j] - u_m
        nxt = [0.0] * (len(poly) + 1)
        for p, c in enumerate(poly):  # poly * (u - u_m) / den
            nxt[p + 1] += c / den
            nxt[p] -= c * u_m / den
        poly = nxt
    return poly


def _combine(coeffs: list[float], preds: list[Tensor]) -> Tensor:
    """sum_j b_j D_j over the last ``len(coeffs)`` predictions."""
    out = preds[-len(coeffs)] * coeffs[0]
    for c, d in zip(coeffs[1:], preds[len(preds) - len(coeffs) + 1:], strict=True):
        out = out + d * c
    return out


def _half_log_snr(sigma: float, flow: bool) -> float:
    """Host ``lambda(sigma)``: ``-log(sigma)``, or ``log((1 - sigma) / sigma)`` for flow models (inf at 0)."""
    if sigma <= 0:
        return math.inf
    return math.log1p(-sigma) - math.log(sigma) if flow else -math.log(sigma)


def _default_tau(schedule: DiscreteSchedule | None, tau_func: TauFunc | None) -> TauFunc:
    if tau_func is not None:
        return tau_func
    if schedule is None:
        raise SamplingConfigError(
            "sa_solver needs the model's schedule for its default stochastic window (sigmas between "
            "the schedule's 20% and 80% points), or an explicit tau_func; received neither. Fix: run it "
            "through ksample (which passes schedule=), or pass schedule=DiscreteSchedule() or "
            "tau_func=tau_window(start_sigma, end_sigma).")
    return tau_window(schedule.percent_to_sigma(0.2), schedule.percent_to_sigma(0.8), eta=1.0)


@torch.no_grad()
def sample_sa_solver(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: StepCallback | None = None,
                     noise_sampler: NoiseSampler | None = None, schedule: DiscreteSchedule | None = None,
                     tau_func: TauFunc | None = None, s_noise: float = 1.0, predictor_order: int = 3,
                     corrector_order: int = 4, use_pece: bool = False, simple_order_2: bool = False,
                     model_sampling: Any = None) -> Tensor:
    """Stochastic Adams predictor-corrector (one evaluation per step; ``use_pece``: two).

    On a flow model (``model_sampling``, or else ``schedule``, a ``CONST`` model sampling) the
    half-log-SNR is ``-logit(sigma)`` and a first sigma of 1 moves to ``percent_to_sigma(1e-4)``,
    as ComfyUI a125cd8 (``snr.py``).

    As ComfyUI a125cd8, the result is the last *corrected* state: when ``sigmas`` end in 0 that
    is the final denoised prediction; when they end above 0 (a step window with leftover noise)
    it is the state at ``sigmas[-2]``, the final predictor step being left uncorrected and unused.
    """
    if len(sigmas) <= 1:
        return x
    if predictor_order < 1 or corrector_order < 0:
        raise SamplingConfigError(
            f"sa_solver orders must be predictor >= 1 and corrector >= 0, received {predictor_order} and "
            f"{corrector_order}. Fix: use the defaults (3 and 4) or other small positive orders.")
    tau_of = _default_tau(schedule if schedule is not None else model_sampling, tau_func)
    noise_sampler = noise_sampler or default_noise_sampler(x)
    ms = model_sampling if model_sampling is not None else schedule
    flow = is_flow(ms)
    if flow:
        sigmas = offset_first_sigma(sigmas, ms)
    loop = _Loop(model, x, sigmas, callback)
    sv = loop.sv
    lam = [_half_log_snr(s, flow) for s in sv]  # half-log-SNR per sigma
    keep = max(predictor_order, corrector_order)
    to_end = sv[-1] == 0  # lower the orders towards a final sigma of 0
    x_pred = x
    preds: list[Tensor] = []
    noise: Tensor | None = None
    h, tau = 0.0, 0.0  # of the last predictor step
    for i in range(loop.n):
        denoised = loop.denoise(x_pred, i)
        preds = [*preds, denoised][-keep:]
        p_order = min(predictor_order, len(preds))
        c_order = 0 if i == 0 or (sv[i + 1] == 0 and not use_pece) else min(corrector_order, len(preds))
        if to_end:
            p_order = min(p_order, loop.n - 1 - i)
            c_order = min(c_order, loop.n - i)
        # corrector: redo the step i-1 -> i with the new prediction included
        if c_order == 0:
            x = x_pred
        else:
            b = adams_coeffs(sv[i], lam[i - c_order + 1 : i + 1], lam[i - 1], lam[i], tau, simple_order_2, True)
            x = x * (sv[i] / sv[i - 1] * math.exp(-tau * tau * h)) + _combine(b, preds)
            if noise is not None:
                x = x + noise  # the predictor's noise, reused
            if use_pece:
                denoised = loop.model_at(x, sigmas[i])
                preds[-1] = denoised
        # predictor: step i -> i+1 from the last p_order predictions
        if sv[i + 1] == 0:
            x = denoised
            continue
        tau = tau_of(sv[i + 1])
        b = adams_coeffs(sv[i + 1], lam[i - p_order + 1 : i + 1], lam[i], lam[i + 1], tau, simple_order_2, False)
        h = lam[i + 1] - lam[i]
        x_pred = x * (sv[i + 1] / sv[i] * math.exp(-tau * tau * h)) + _combine(b, preds)
        noise = None
        if tau > 0 and s_noise > 0:
            amp = sv[i + 1] * math.sqrt(-math.expm1(-2 * tau * tau * h)) * s_noise
            noise = noise_sampler(sigmas[i], sigmas[i + 1]) * amp
            x_pred = x_pred + noise
    return x


@torch.no_grad()
def sample_sa_solver_pece(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: StepCallback | None = None,
                          noise_sampler: NoiseSampler | None = None, schedule: DiscreteSchedule | None = None,
                          tau_func: TauFunc | None = None, s_noise: float = 1.0, predictor_order: int = 3,
                          corrector_order: int = 4, simple_order_2: bool = False,
                          model_sampling: Any = None) -> Tensor:
    """SA-Solver in PECE mode (predict, evaluate, correct, evaluate): two evaluations per step."""
    return sample_sa_solver(model, x, sigmas, callback=callback, noise_sampler=noise_sampler, schedule=schedule,
                            tau_func=tau_func, s_noise=s_noise, predictor_order=predictor_order,
                            corrector_order=corrector_order, use_pece=True, simple_order_2=simple_order_2,
                            model_sampling=model_sampling)
