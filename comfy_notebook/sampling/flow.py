"""Model sampling of flow-matching models (Flux, SD3, AuraFlow): sigmas in [0, 1], velocity output.

ComfyUI ``comfy/model_sampling.py`` at a125cd8, re-implemented:

- ``CONST`` parameterisation (rectified flow): the noisy latent is
  ``x_sigma = sigma * noise + (1 - sigma) * x0`` and the model predicts the velocity
  ``v = noise - x0``, so ``denoised = x - sigma * v``; the model input is not rescaled.
- ``ModelSamplingDiscreteFlow`` (SD3, AuraFlow, Flux schnell): ``sigma(t) = shift * s / (1 +
  (shift - 1) * s)`` with ``s = t / multiplier``, training sigmas at ``s = 1/1000 ... 1``, and
  ``timestep(sigma) = sigma * multiplier`` (SD3: shift 3, multiplier 1000; AuraFlow: shift 1.73,
  multiplier 1; Flux schnell: shift 1, multiplier 1).
- ``ModelSamplingFlux`` (Flux dev): ``sigma(t) = e^mu / (e^mu + (1/t - 1))`` with ``mu = shift``
  (default 1.15), training sigmas at ``t = 1/10000 ... 1``, ``timestep(sigma) = sigma``.  The
  ``ModelSamplingFlux`` node sets ``shift`` from the image size, linear in the number of 2x2
  latent patches between 256 (base_shift 0.5) and 4096 (max_shift 1.15).

Both objects offer what the schedulers read from a ``DiscreteSchedule`` (``sigmas``,
``sigma_min``, ``sigma_max``, ``timestep``, ``sigma``, ``percent_to_sigma``), so every scheduler
of ``sampling/schedules.py`` runs on them as in ComfyUI.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "FlowDenoiser",
    "ModelSamplingDiscreteFlow",
    "ModelSamplingFlux",
    "flux_shift",
    "flux_time_shift",
    "time_snr_shift",
]


def time_snr_shift(shift: float, t: Any) -> Any:
    """SD3's timestep shift ``shift * t / (1 + (shift - 1) * t)`` (identity for shift 1)."""
    if shift == 1.0:
        return t
    return shift * t / (1 + (shift - 1) * t)


def flux_time_shift(mu: float, sigma: float, t: Any) -> Any:
    """Flux's resolution-dependent shift ``e^mu / (e^mu + (1/t - 1)^sigma)``."""
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** sigma)


def flux_shift(width: int, height: int, base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """The ``mu`` ComfyUI's ``ModelSamplingFlux`` node gives an image of ``width`` x ``height`` pixels."""
    mm = (max_shift - base_shift) / (4096 - 256)
    b = base_shift - mm * 256
    return (width * height / (8 * 8 * 2 * 2)) * mm + b


def _view(sigma: Tensor | float, ndim: int) -> Tensor | float:
    """A per-sample sigma [B] as [B, 1, ..., 1]; scalars (0-d, one element, float) as they are."""
    if not isinstance(sigma, Tensor) or sigma.numel() == 1:
        return sigma if not isinstance(sigma, Tensor) else sigma.reshape(())
    return sigma.reshape(sigma.shape[:1] + (1,) * (ndim - 1))


class _Const:
    """Rectified-flow (``CONST``) parameterisation shared by the flow model samplings."""

    prediction = "const"

    def calculate_input(self, sigma: Tensor, noise: Tensor) -> Tensor:
        return noise

    def calculate_denoised(self, sigma: Tensor, model_output: Tensor, model_input: Tensor,
                           schedule: Any = None) -> Tensor:
        return model_input - model_output * _view(sigma, model_output.ndim)

    def noise_scaling(self, sigma: Tensor, noise: Tensor, latent_image: Tensor, max_denoise: bool = False) -> Tensor:
        s = _view(sigma, noise.ndim)
        return s * noise + (1.0 - s) * latent_image

    def inverse_noise_scaling(self, sigma: Tensor, latent: Tensor) -> Tensor:
        return latent / (1.0 - _view(sigma, latent.ndim))

    sigmas: Tensor

    # The rest of ``sampling.model_sampling.ModelSampling``'s surface, so a flow model sampling
    # is usable wherever one is (it is its own schedule and parameterisation).
    @property
    def name(self) -> str:
        return "const"

    @property
    def schedule(self) -> _Const:
        return self

    @property
    def parameterization(self) -> _Const:
        return self

    @property
    def log_sigmas(self) -> Tensor:
        return self.sigmas.log()

    def model_timestep(self, sigma: Tensor) -> Tensor:
        """``timestep(sigma)`` as float32 (the value the network is conditioned on)."""
        return self.timestep(sigma).float()

    def timestep(self, sigma: Tensor) -> Tensor:
        raise NotImplementedError

    @property
    def sigma_min(self) -> Tensor:
        """Smallest training sigma, a 0-d tensor."""
        return self.sigmas[0]

    @property
    def sigma_max(self) -> Tensor:
        """Largest training sigma (1.0), a 0-d tensor."""
        return self.sigmas[-1]


@dataclass(frozen=True)
class ModelSamplingDiscreteFlow(_Const):
    """Shifted discrete flow (SD3: ``shift=3``; AuraFlow: ``shift=1.73, multiplier=1``; Flux schnell: 1, 1)."""

    shift: float = 1.0
    multiplier: float = 1000.0
    timesteps: int = 1000
    sigmas: Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        t = torch.arange(1, self.timesteps + 1, 1) / self.timesteps * self.multiplier
        object.__setattr__(self, "sigmas", self.sigma(t).float())

    def timestep(self, sigma: Tensor) -> Tensor:
        return sigma * self.multiplier

    def sigma(self, timestep: Tensor) -> Tensor:
        return time_snr_shift(self.shift, timestep / self.multiplier)

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return float(time_snr_shift(self.shift, 1.0 - percent))


@dataclass(frozen=True)
class ModelSamplingFlux(_Const):
    """Flux dev's model sampling; ``shift`` is ``mu`` (1.15 by default, see :func:`flux_shift`)."""

    shift: float = 1.15
    timesteps: int = 10000
    sigmas: Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        t = torch.arange(1, self.timesteps + 1, 1) / self.timesteps
        object.__setattr__(self, "sigmas", self.sigma(t).float())

    def timestep(self, sigma: Tensor) -> Tensor:
        return sigma

    def sigma(self, timestep: Tensor) -> Tensor:
        return flux_time_shift(self.shift, 1.0, timestep)

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return float(flux_time_shift(self.shift, 1.0, 1.0 - percent))


class FlowDenoiser:
    """``denoised = D(x, sigma, context, **kw)`` for a velocity model under a flow model sampling.

    ``apply_model(x, timestep[B], context, **kw) -> velocity`` (e.g. Flux with ``y`` and
    ``guidance`` keywords); the input is passed unscaled and the timestep is
    ``model_sampling.timestep(sigma)``, as ComfyUI's ``BaseModel._apply_model``.
    """

    def __init__(self, apply_model: Any, model_sampling: _Const) -> None:
        self.apply_model, self.model_sampling = apply_model, model_sampling

    def __call__(self, x: Tensor, sigma: Tensor, context: Tensor, **kw: Any) -> Tensor:
        ms = self.model_sampling
        x_in = ms.calculate_input(sigma, x)
        out = self.apply_model(x_in, ms.timestep(sigma).float(), context, **kw).to(x.dtype)
        return ms.calculate_denoised(sigma, out, x)
