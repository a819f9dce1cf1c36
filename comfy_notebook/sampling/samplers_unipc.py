"""UniPC (Zhao et al. 2023, https://arxiv.org/abs/2302.04867): ComfyUI's ``uni_pc`` / ``uni_pc_bh2``.

Behaviour matched (ComfyUI ``comfy/extra_samplers/uni_pc.py`` at a125cd8, ``sample_unipc``):

- multistep UniPC with data prediction (``predict_x0``), B(h) = h (``bh1``, ``uni_pc``) or
  B(h) = e^h - 1 (``bh2``, ``uni_pc_bh2``), order ``min(3, steps - 1)``, warm-up with lower
  orders and ``lower_order_final`` (the last updates use orders ``min(order, steps + 1 - j)``);
- the corrector (UniC) runs after every update except the last, reusing the model evaluation
  at the predicted point (so one model call per step);
- a final sigma of 0 is replaced by 0.001: the result is the sample at sigma = 0.001;
- with a single step there is no update at all: the result is ``x`` rescaled by
  ``sqrt(1 + sigma_last^2) / sqrt(1 + sigma_0^2)`` (what ComfyUI returns, quirk included).

ComfyUI runs the solver in VP space (x / sqrt(1 + sigma^2), lambda = log(alpha / sigma)); here the
same update is written in the k-diffusion scale, where it reads
``x_t = (s_t / s_0) x - expm1(-h) m_0 - B(h) sum_k rho_k D1_k`` with ``h = log(s_0 / s_t)``.  All
per-update coefficients depend only on the sigmas, so they are computed once on the host in
float64 before the loop; each step is then a few tensor multiply-adds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from comfy_notebook.sampling.noise import NoiseSampler
from comfy_notebook.sampling.samplers import Denoiser, StepCallback, _ones, _report
from comfy_notebook.sampling.schedules import SamplingConfigError

__all__ = ["sample_uni_pc", "sample_uni_pc_bh2"]

FINAL_SIGMA = 0.001
"""ComfyUI's replacement for a final sigma of 0 (``sample_unipc``)."""


@dataclass(frozen=True)
class _Update:
    """Coefficients of one update from sigma ``s_0`` to ``s_t`` in the k-diffusion scale.

    ``x_t = scale * x + sum(w * m for w, m in zip(pred, history))``; ``history`` is the list of
    the last ``order`` data predictions, newest last.  ``corr`` are the corrector weights over
    ``history + [m_t]`` (empty when the corrector is skipped).
    """

    scale: float
    pred: tuple[float, ...]
    corr: tuple[float, ...]


def _solve(a: list[list[float]], b: list[float]) -> list[float]:
    """Solve a small dense linear system in float64."""
    sol = torch.linalg.solve(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64))
    return [float(v) for v in sol]


def _update(lams: list[float], lam_t: float, order: int, variant: str, corrector: bool) -> _Update:
    """UniP-``order`` (+ UniC-``order``) weights; ``lams`` are the history's lambdas, newest last."""
    lam_0 = lams[-1]
    h = lam_t - lam_0  # > 0: lambda = -log(sigma) grows as sigma falls
    rks = [(lams[-(i + 1)] - lam_0) / h for i in range(1, order)]  # [order - 1], each < 0
    hh = -h  # data prediction
    h_phi_1 = math.expm1(hh)
    b_h = hh if variant == "bh1" else math.expm1(hh)
    # b_i = h * phi_{i+1}(h) * i! / B(h), with phi_k from the recursion phi_{k+1} = (phi_k - 1/k!) / h
    b, h_phi_k, fact = [], h_phi_1 / hh - 1.0, 1
    for i in range(1, order + 1):
        b.append(h_phi_k * fact / b_h)
        fact *= i + 1
        h_phi_k = h_phi_k / hh - 1.0 / fact
    r_all = [*rks, 1.0]
    rmat = [[r ** (i - 1) for r in r_all] for i in range(1, order + 1)]  # [order, order]
    if order == 1:
        rhos_p: list[float] = []
    elif order == 2:
        rhos_p = [0.5]
    else:
        rhos_p = _solve([row[:-1] for row in rmat[:-1]], b[:-1])
    # x_t = scale x - expm1(hh) m_0 - B(h) sum_k rho_k (m_k - m_0) / r_k ; history order: oldest first
    scale = math.exp(-h)  # = s_t / s_0
    hist_w = [0.0] * order  # weights over history [m_{order-1}, ..., m_1, m_0]
    hist_w[-1] = -h_phi_1
    for k, (rho, r) in enumerate(zip(rhos_p, rks, strict=True)):
        hist_w[-(k + 2)] -= b_h * rho / r
        hist_w[-1] += b_h * rho / r
    corr: tuple[float, ...] = ()
    if corrector:
        rhos_c = [0.5] if order == 1 else _solve(rmat, b)
        cw = [0.0] * (order + 1)  # over history + [m_t]
        cw[order - 1] = -h_phi_1 + b_h * rhos_c[-1]
        cw[order] = -b_h * rhos_c[-1]
        for k, (rho, r) in enumerate(zip(rhos_c[:-1], rks, strict=True)):
            cw[order - 1 - (k + 1)] -= b_h * rho / r
            cw[order - 1] += b_h * rho / r
        corr = tuple(cw)
    return _Update(scale=scale, pred=tuple(hist_w), corr=corr)


def _plan(sv: list[float], variant: str) -> list[_Update]:
    """The ``len(sv) - 1`` updates ComfyUI's multistep loop makes (empty for one step)."""
    n = len(sv) - 1
    p = min(3, n - 1)
    if p < 1:
        return []
    lams = [-math.log(s) for s in sv]  # lambda = log(alpha / sigma_vp) = -log(sigma)
    plan = []
    for j in range(1, n + 1):  # update to sigma_j
        order = j if j < p else min(p, n + 1 - j)
        plan.append(_update(lams[j - order : j], lams[j], order, variant, corrector=j < n))
    return plan


def _combine(scale: float, x: Tensor, weights: tuple[float, ...], ms: list[Tensor]) -> Tensor:
    """``scale * x + sum(w * m)``."""
    out = x * scale
    for w, m in zip(weights, ms, strict=True):
        out = out.add(m, alpha=w)
    return out


@torch.no_grad()
def sample_uni_pc(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: StepCallback | None = None,
                  noise_sampler: NoiseSampler | None = None, variant: str = "bh1") -> Tensor:
    """UniPC multistep sampler (ComfyUI ``uni_pc``; ``variant="bh2"`` is ``uni_pc_bh2``).

    Parameters
    ----------
    model:
        Denoiser ``model(x, sigma[B]) -> denoised``.
    x:
        ``[B, C, H, W]`` latent at ``sigmas[0]`` (k-diffusion scale).
    sigmas:
        Descending sigmas; a final 0 is treated as 0.001, as ComfyUI does.
    callback:
        Receives a ``StepInfo`` per step (``x`` and ``denoised`` at ``sigmas[i]``).
    noise_sampler:
        Unused (deterministic sampler); accepted for the common signature.
    variant:
        ``"bh1"`` (B(h) = h) or ``"bh2"`` (B(h) = e^h - 1).

    Returns
    -------
    Tensor
        The sample at the last sigma (0.001 when the schedule ends in 0).
    """
    if variant not in ("bh1", "bh2"):
        raise SamplingConfigError(f"UniPC variant must be 'bh1' or 'bh2', received {variant!r}")
    sv = sigmas.tolist()
    if len(sv) == 0:
        return x
    if sv[-1] == 0:
        sv[-1] = FINAL_SIGMA
    n = len(sv) - 1
    plan = _plan(sv, variant)
    if not plan:  # ComfyUI: no update, VP-scale in and out at different sigmas
        if n >= 1:
            _report(callback, 0, n, sigmas[0], sigmas[0], x, model(x, sigmas[0] * _ones(x)))
        return x * (math.sqrt(1.0 + sv[-1] ** 2) / math.sqrt(1.0 + sv[0] ** 2))
    s_in = _ones(x)
    sig = torch.tensor(sv, dtype=sigmas.dtype, device=sigmas.device)  # with the 0.001 end
    denoised = model(x, sig[0] * s_in)
    hist = [denoised]  # newest last, at most 3
    for i, up in enumerate(plan):
        _report(callback, i, n, sigmas[i], sigmas[i], x, denoised)
        order = len(up.pred)
        ms = hist[-order:]
        x_pred = _combine(up.scale, x, up.pred, ms)  # UniP
        if up.corr:
            denoised = model(x_pred, sig[i + 1] * s_in)
            x = _combine(up.scale, x, up.corr, [*ms, denoised])  # UniC, same evaluation reused
            hist = [*hist, denoised][-3:]
        else:
            x = x_pred
    return x


@torch.no_grad()
def sample_uni_pc_bh2(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: StepCallback | None = None,
                      noise_sampler: NoiseSampler | None = None) -> Tensor:
    """UniPC with B(h) = e^h - 1 (ComfyUI ``uni_pc_bh2``); see ``sample_uni_pc``."""
    return sample_uni_pc(model, x, sigmas, callback=callback, variant="bh2")
