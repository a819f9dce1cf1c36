"""Discrete-time noise schedules and ComfyUI's schedulers.

``DiscreteSchedule`` is the model sampling of a discrete-time (DDPM-trained) SD model: the
scaled-linear betas, the 1000 training sigmas and the timestep <-> sigma conversions, with
ComfyUI's conventions (``comfy/model_sampling.py: ModelSamplingDiscrete`` at a125cd8: the
timestep of a sigma is the *nearest* training index; the sigma of a fractional timestep
interpolates log-sigma).

Schedulers turn a step count into a descending sigma tensor ending in 0, under ComfyUI's
names (``SCHEDULERS``).  Karras et al. (2022), https://arxiv.org/abs/2206.00364.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from comfy_notebook.errors import ComfyNotebookError

__all__ = [
    "DISCARD_PENULTIMATE_SIGMA_SAMPLERS",
    "SCHEDULERS",
    "DiscreteSchedule",
    "SamplingConfigError",
    "calculate_sigmas",
    "get_sigmas_exponential",
    "get_sigmas_karras",
    "get_sigmas_laplace",
    "get_sigmas_polyexponential",
    "get_sigmas_vp",
    "ksampler_sigmas",
]

DISCARD_PENULTIMATE_SIGMA_SAMPLERS = frozenset({"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"})


class SamplingConfigError(ComfyNotebookError, ValueError):
    """A sampler, scheduler or sampling parameter is not valid."""


@dataclass(frozen=True)
class DiscreteSchedule:
    """Scaled-linear DDPM schedule of a discrete-time (DDPM-trained) diffusion model.

    Parameters
    ----------
    beta_start, beta_end:
        First and last beta; betas are linear in sqrt(beta) (``scaled_linear``).
    num_timesteps:
        Number of training timesteps.
    zsnr:
        Rescale to zero terminal SNR (Lin et al. 2023, https://arxiv.org/abs/2305.08891), as
        ComfyUI's ``rescale_zero_terminal_snr_sigmas`` (the last sigma becomes ~4519).
    """

    beta_start: float = 0.00085
    beta_end: float = 0.012
    num_timesteps: int = 1000
    zsnr: bool = False
    sigmas: Tensor = field(init=False, repr=False, compare=False)
    log_sigmas: Tensor = field(init=False, repr=False, compare=False)
    alphas_cumprod: Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = self.num_timesteps
        betas = torch.linspace(self.beta_start**0.5, self.beta_end**0.5, n, dtype=torch.float64) ** 2
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)  # [N] float64
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        if self.zsnr:
            sigmas = _zero_terminal_snr(sigmas)
            alphas_cumprod = 1.0 / (sigmas * sigmas + 1.0)
        object.__setattr__(self, "alphas_cumprod", alphas_cumprod.float())
        object.__setattr__(self, "sigmas", sigmas.float())
        object.__setattr__(self, "log_sigmas", sigmas.log().float())

    @property
    def sigma_min(self) -> Tensor:
        """Smallest training sigma (timestep 0), a 0-d tensor."""
        return self.sigmas[0]

    @property
    def sigma_max(self) -> Tensor:
        """Largest training sigma (last timestep), a 0-d tensor."""
        return self.sigmas[-1]

    def timestep(self, sigma: Tensor) -> Tensor:
        """Nearest training timestep (in log-sigma) of each sigma, same shape, int64."""
        return nearest_timestep(sigma, self.log_sigmas.to(sigma.device))

    def sigma(self, timestep: Tensor) -> Tensor:
        """Sigma of a (fractional) timestep, interpolating log-sigma linearly."""
        log_sigmas = self.log_sigmas.to(timestep.device)
        t = torch.clamp(timestep.float(), min=0, max=len(log_sigmas) - 1)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp()

    def percent_to_sigma(self, percent: float) -> float:
        """Sigma at a fraction of the sampling run (0 = start, 1 = end), as ComfyUI's."""
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return float(self.sigma(torch.tensor((1.0 - percent) * 999.0)))


def _zero_terminal_snr(sigmas: Tensor) -> Tensor:
    """Shift and scale sqrt(alphas_cumprod) so the last timestep has zero SNR (float64)."""
    abar_sqrt = (1.0 / (sigmas * sigmas + 1.0)).sqrt()
    first, last = abar_sqrt[0].clone(), abar_sqrt[-1].clone()
    abar_sqrt = (abar_sqrt - last) * (first / (first - last))
    abar = abar_sqrt**2
    abar[-1] = 4.8973451890853435e-08  # ComfyUI's value: keeps the last sigma finite
    return ((1 - abar) / abar) ** 0.5


def nearest_timestep(sigma: Tensor, log_sigmas: Tensor) -> Tensor:
    """Index of the nearest ``log_sigmas`` entry [N] to each ``sigma.log()``; same shape, int64."""
    dists = sigma.log() - log_sigmas[:, None]  # [N, numel]
    return dists.abs().argmin(dim=0).view(sigma.shape)


def _append_zero(x: Tensor) -> Tensor:
    return torch.cat([x, x.new_zeros([1])])


def get_sigmas_karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """Karras et al. (2022) schedule: uniform in sigma^(1/rho); ``n`` sigmas and a final 0."""
    ramp = torch.linspace(0, 1, n)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _append_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


def get_sigmas_exponential(n: int, sigma_min: float, sigma_max: float) -> Tensor:
    """Uniform in log-sigma; ``n`` sigmas and a final 0."""
    return _append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp())


def get_sigmas_polyexponential(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> Tensor:
    """Polynomial (power ``rho``) in log-sigma from sigma_max down to sigma_min; ``n`` sigmas and a final 0."""
    ramp = torch.linspace(1, 0, n) ** rho
    return _append_zero(torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min)))


def get_sigmas_vp(n: int, beta_d: float = 19.9, beta_min: float = 0.1, eps_s: float = 1e-3) -> Tensor:
    """Continuous VP schedule (Song et al. 2021) for t from 1 down to ``eps_s``; ``n`` sigmas and a final 0.

    ``sqrt(expm1(...))`` as ComfyUI (02159d8; k-diffusion writes ``exp(...) - 1``).
    """
    t = torch.linspace(1, eps_s, n)
    return _append_zero(torch.sqrt(torch.special.expm1(beta_d * t**2 / 2 + beta_min * t)))


def get_sigmas_laplace(n: int, sigma_min: float, sigma_max: float, mu: float = 0.0, beta: float = 0.5) -> Tensor:
    """Laplace schedule of Tiankai et al. (2024): ``n`` sigmas in [sigma_min, sigma_max], *no* final 0.

    log-sigma follows the inverse Laplace CDF around ``mu`` with scale ``beta`` (as ComfyUI, whose
    LaplaceScheduler therefore ends sampling at sigma_min).
    """
    x = torch.linspace(0, 1, n)
    lmb = mu - beta * torch.sign(0.5 - x) * torch.log(1 - 2 * torch.abs(0.5 - x) + 1e-5)
    return torch.clamp(torch.exp(lmb), min=sigma_min, max=sigma_max)


def _normal(s: DiscreteSchedule, steps: int, sgm: bool = False) -> Tensor:
    """Uniform in timestep between the timesteps of sigma_max and sigma_min."""
    start, end = s.timestep(s.sigma_max), s.timestep(s.sigma_min)
    append_zero = True
    if sgm:
        timesteps = torch.linspace(start, end, steps + 1)[:-1]
    else:
        if math.isclose(float(s.sigma(end)), 0, abs_tol=1e-5):
            steps += 1
            append_zero = False
        timesteps = torch.linspace(start, end, steps)
    sigs = [float(s.sigma(ts)) for ts in timesteps]
    return torch.tensor([*sigs, 0.0] if append_zero else sigs, dtype=torch.float32)


def _simple(s: DiscreteSchedule, steps: int) -> Tensor:
    """Every (len/steps)-th training sigma from the top."""
    ss = len(s.sigmas) / steps
    sigs = [float(s.sigmas[-(1 + int(x * ss))]) for x in range(steps)]
    return torch.tensor([*sigs, 0.0], dtype=torch.float32)


def _ddim_uniform(s: DiscreteSchedule, steps: int) -> Tensor:
    """DDIM's uniform timestep spacing: training sigmas 1, 1+k, 1+2k, ... reversed."""
    x = 1
    if math.isclose(float(s.sigmas[x]), 0, abs_tol=1e-5):
        steps += 1
        sigs: list[float] = []
    else:
        sigs = [0.0]
    ss = max(len(s.sigmas) // steps, 1)
    while x < len(s.sigmas):
        sigs.append(float(s.sigmas[x]))
        x += ss
    return torch.tensor(sigs[::-1], dtype=torch.float32)


def _beta(s: DiscreteSchedule, steps: int, alpha: float = 0.6, beta: float = 0.6) -> Tensor:
    """Timesteps at quantiles of a Beta(0.6, 0.6) distribution (arXiv:2407.12173)."""
    import numpy as np
    import scipy.stats

    total = len(s.sigmas) - 1
    ts = 1 - np.linspace(0, 1, steps, endpoint=False)
    ts = np.rint(scipy.stats.beta.ppf(ts, alpha, beta) * total)
    sigs: list[float] = []
    last_t = -1.0
    for t in ts:
        if t != last_t:
            sigs.append(float(s.sigmas[int(t)]))
        last_t = t
    return torch.tensor([*sigs, 0.0], dtype=torch.float32)


def _linear_quadratic(s: DiscreteSchedule, steps: int, threshold_noise: float = 0.025) -> Tensor:
    """Mochi's linear-then-quadratic schedule, scaled by sigma_max."""
    if steps == 1:
        sched = [1.0, 0.0]
    else:
        lin = steps // 2
        linear_part = [i * threshold_noise / lin for i in range(lin)]
        diff = lin - threshold_noise * steps
        quad = steps - lin
        quad_coef = diff / (lin * quad**2)
        lin_coef = threshold_noise / lin - 2 * diff / (quad**2)
        const = quad_coef * (lin**2)
        quad_part = [quad_coef * (i**2) + lin_coef * i + const for i in range(lin, steps)]
        sched = [1.0 - x for x in [*linear_part, *quad_part, 1.0]]
    return torch.tensor(sched, dtype=torch.float32) * s.sigma_max


def _kl_optimal(n: int, sigma_min: float, sigma_max: float) -> Tensor:
    """Uniform in arctan(sigma) (AUTOMATIC1111 PR 15608); ``n`` sigmas and a final 0."""
    idx = torch.arange(n, dtype=torch.float).div_(n - 1)
    sigmas = idx.new_zeros(n + 1)
    sigmas[:-1] = (idx * math.atan(sigma_min) + (1 - idx) * math.atan(sigma_max)).tan_()
    return sigmas


def _from_range(fn: Callable[..., Tensor]) -> Callable[[DiscreteSchedule, int], Tensor]:
    def scheduler(s: DiscreteSchedule, steps: int) -> Tensor:
        return fn(n=steps, sigma_min=float(s.sigma_min), sigma_max=float(s.sigma_max))

    scheduler.__name__ = fn.__name__
    return scheduler


SCHEDULERS: dict[str, Callable[[DiscreteSchedule, int], Tensor]] = {
    "simple": _simple,
    "sgm_uniform": lambda s, steps: _normal(s, steps, sgm=True),
    "karras": _from_range(get_sigmas_karras),
    "exponential": _from_range(get_sigmas_exponential),
    "ddim_uniform": _ddim_uniform,
    "beta": _beta,
    "normal": _normal,
    "linear_quadratic": _linear_quadratic,
    "kl_optimal": _from_range(_kl_optimal),
}


def calculate_sigmas(schedule: DiscreteSchedule, scheduler: str, steps: int) -> Tensor:
    """Sigmas of ``scheduler`` for ``steps`` steps: a float32 tensor of ``steps + 1`` values.

    Parameters
    ----------
    schedule:
        The model's discrete schedule.
    scheduler:
        One of ``SCHEDULERS`` (ComfyUI's names).
    steps:
        Number of sampling steps (>= 1).
    """
    if scheduler not in SCHEDULERS:
        raise SamplingConfigError(
            f"unknown scheduler {scheduler!r}; expected one of {sorted(SCHEDULERS)}. "
            "Fix: pass one of ComfyUI's scheduler names."
        )
    if steps < 1:
        raise SamplingConfigError(f"steps must be >= 1, received {steps}")
    return SCHEDULERS[scheduler](schedule, steps).float()


def ksampler_sigmas(
    schedule: DiscreteSchedule, scheduler: str, sampler_name: str, steps: int, denoise: float = 1.0
) -> Tensor:
    """The sigmas ComfyUI's KSampler uses (``KSampler.calculate_sigmas`` / ``set_steps``).

    With ``denoise < 1`` the schedule is computed for ``int(steps / denoise)`` steps and its last
    ``steps + 1`` sigmas are kept; ``denoise <= 0`` gives an empty tensor (nothing to do).
    Samplers in ``DISCARD_PENULTIMATE_SIGMA_SAMPLERS`` get one more step and lose the
    penultimate sigma.
    """

    def full(n: int) -> Tensor:
        discard = sampler_name in DISCARD_PENULTIMATE_SIGMA_SAMPLERS
        sigmas = calculate_sigmas(schedule, scheduler, n + 1 if discard else n)
        return torch.cat([sigmas[:-2], sigmas[-1:]]) if discard else sigmas

    if denoise > 0.9999:
        return full(steps)
    if denoise <= 0.0:
        return torch.zeros([0])
    return full(int(steps / denoise))[-(steps + 1) :]
