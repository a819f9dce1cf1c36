"""Model sampling: how a network's output and time relate to sigmas (family-agnostic math).

A :class:`ModelSampling` is what ComfyUI calls ``model_sampling`` (``comfy/model_sampling.py`` at
a125cd8): a *parameterisation* (what the network predicts: noise, velocity, the clean latent,
...) combined with a *schedule* (the training sigmas and the sigma <-> timestep map).  Samplers
see only sigmas; the denoiser asks the model sampling for

- ``calculate_input(sigma, x)``: the network input (``x / sqrt(sigma^2 + sigma_data^2)`` for
  the diffusion parameterisations);
- ``timestep(sigma)``: the time value the network is conditioned on;
- ``calculate_denoised(sigma, output, x)``: the clean-latent estimate from the network output;
- ``noise_scaling(sigma, noise, latent, max_denoise)`` / ``inverse_noise_scaling(sigma, x)``:
  how the sampler's start latent is built from noise, and undone at the end.

Families pick the object and its parameters (``comfy_notebook.families``); flow-matching
parameterisations (ComfyUI ``CONST``) and schedules (flow shift) are further classes here with
the same methods.

Parameterisations follow Karras et al. (2022), https://arxiv.org/abs/2206.00364 (sigma_data
preconditioning) and Salimans & Ho (2022), https://arxiv.org/abs/2202.00512 (v prediction);
LCM's boundary condition is Luo et al. (2023), https://arxiv.org/abs/2310.04378.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch
from torch import Tensor

from comfy_notebook.sampling.schedules import (
    DiscreteSchedule,
    SamplingConfigError,
    nearest_timestep,
)

__all__ = [
    "EPS",
    "LCM",
    "PARAMETERIZATIONS",
    "X0",
    "DistilledSchedule",
    "ModelSampling",
    "Schedule",
    "VPrediction",
]


def _bcast(sigma: Tensor, like: Tensor) -> Tensor:
    """``sigma`` [B] viewed as [B, 1, ..., 1] to broadcast over ``like``."""
    return sigma.view(sigma.shape[:1] + (1,) * (like.ndim - 1))


class Schedule(Protocol):
    """What a model sampling needs from its schedule (``DiscreteSchedule`` and friends)."""

    sigmas: Tensor
    log_sigmas: Tensor

    @property
    def sigma_min(self) -> Tensor: ...

    @property
    def sigma_max(self) -> Tensor: ...

    def timestep(self, sigma: Tensor) -> Tensor: ...

    def sigma(self, timestep: Tensor) -> Tensor: ...

    def percent_to_sigma(self, percent: float) -> float: ...


class EPS:
    """Noise prediction (ComfyUI ``EPS``): ``denoised = x - eps * sigma``."""

    name = "eps"

    def __init__(self, sigma_data: float = 1.0) -> None:
        self.sigma_data = float(sigma_data)

    def calculate_input(self, sigma: Tensor, noise: Tensor) -> Tensor:
        """The network input: ``x / sqrt(sigma^2 + sigma_data^2)`` ([B, C, H, W])."""
        s = _bcast(sigma, noise)
        return (noise / (s**2 + self.sigma_data**2) ** 0.5).to(noise.dtype)

    def calculate_denoised(self, sigma: Tensor, model_output: Tensor, model_input: Tensor,
                           schedule: Schedule | None = None) -> Tensor:
        """The clean-latent estimate from the network output."""
        return model_input - model_output * _bcast(sigma, model_output)

    def noise_scaling(self, sigma: Tensor | float, noise: Tensor, latent_image: Tensor,
                      max_denoise: bool = False) -> Tensor:
        """The sampler's start latent: ``latent + noise * sigma`` (``sqrt(1 + sigma^2)`` at full denoise)."""
        s = float(sigma) if not isinstance(sigma, Tensor) or sigma.numel() == 1 else _bcast(sigma, noise)
        if max_denoise:
            scale = math.sqrt(1.0 + s**2) if isinstance(s, float) else (1.0 + s**2) ** 0.5
            return noise * scale + latent_image
        return noise * s + latent_image

    def inverse_noise_scaling(self, sigma: Tensor | float, latent: Tensor) -> Tensor:
        """Undo :meth:`noise_scaling` on the sampler's result (identity for diffusion models)."""
        return latent


class VPrediction(EPS):
    """Velocity prediction (ComfyUI ``V_PREDICTION``, Salimans & Ho 2022)."""

    name = "v_prediction"

    def calculate_denoised(self, sigma: Tensor, model_output: Tensor, model_input: Tensor,
                           schedule: Schedule | None = None) -> Tensor:
        s = _bcast(sigma, model_output)
        sigma_data2 = self.sigma_data**2
        return model_input * sigma_data2 / (s**2 + sigma_data2) - model_output * s * self.sigma_data / (s**2 + sigma_data2) ** 0.5


class X0(EPS):
    """The network predicts the clean latent itself (ComfyUI ``X0``)."""

    name = "x0"

    def calculate_denoised(self, sigma: Tensor, model_output: Tensor, model_input: Tensor,
                           schedule: Schedule | None = None) -> Tensor:
        return model_output


class LCM(EPS):
    """Latent consistency models: eps prediction with the consistency boundary condition."""

    name = "lcm"

    def calculate_denoised(self, sigma: Tensor, model_output: Tensor, model_input: Tensor,
                           schedule: Schedule | None = None) -> Tensor:
        if schedule is None:
            raise SamplingConfigError("LCM needs the schedule's timesteps; use it through ModelSampling")
        t = _bcast(schedule.timestep(sigma).float(), model_output)
        s = _bcast(sigma, model_output)
        x0 = model_input - model_output * s
        sigma_data = 0.5
        scaled = t * 10.0  # timestep scaling of the LCM scheduler
        c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
        c_out = scaled / (scaled**2 + sigma_data**2) ** 0.5
        return c_out * x0 + c_skip * model_input


PARAMETERIZATIONS: dict[str, type[EPS]] = {"eps": EPS, "v_prediction": VPrediction, "x0": X0, "lcm": LCM}


class DistilledSchedule:
    """Every ``num_timesteps / original_timesteps``-th sigma of a discrete schedule (LCM's 50)."""

    def __init__(self, base: DiscreteSchedule, original_timesteps: int = 50) -> None:
        self.base = base
        n = len(base.sigmas)
        self.skip = n // original_timesteps
        idx = torch.tensor([n - 1 - x * self.skip for x in range(original_timesteps)][::-1])
        self.sigmas = base.sigmas[idx]
        self.log_sigmas = self.sigmas.log()

    @property
    def sigma_min(self) -> Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> Tensor:
        return self.sigmas[-1]

    def timestep(self, sigma: Tensor) -> Tensor:
        idx = nearest_timestep(sigma, self.log_sigmas.to(sigma.device))
        return idx * self.skip + (self.skip - 1)

    def sigma(self, timestep: Tensor) -> Tensor:
        log_sigmas = self.log_sigmas.to(timestep.device)
        t = torch.clamp((timestep.float() - (self.skip - 1)) / self.skip, min=0, max=len(log_sigmas) - 1)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp()

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return float(self.sigma(torch.tensor((1.0 - percent) * 999.0)))


class ModelSampling:
    """A parameterisation over a schedule: everything the sampler core needs from a model.

    Parameters
    ----------
    schedule:
        The noise schedule (``sigmas``, ``timestep(sigma)``, ``sigma(timestep)``,
        ``percent_to_sigma``); default: the scaled-linear SD schedule.
    parameterization:
        An object with ``calculate_input`` / ``calculate_denoised`` / ``noise_scaling`` /
        ``inverse_noise_scaling`` (:class:`EPS`, :class:`VPrediction`, ...), or its name
        (``"eps"``, ``"v_prediction"``, ``"x0"``, ``"lcm"``; ``"v"`` is accepted for
        ``"v_prediction"``).

    Examples
    --------
    >>> ms = ModelSampling.discrete("v_prediction", zsnr=True)
    >>> float(ms.sigma_max) > 1000
    True
    """

    def __init__(self, schedule: Schedule | None = None, parameterization: Any = "eps") -> None:
        if isinstance(parameterization, str):
            key = "v_prediction" if parameterization == "v" else parameterization
            if key not in PARAMETERIZATIONS:
                raise SamplingConfigError(
                    f"unknown prediction type {parameterization!r}; expected one of "
                    f"{sorted(PARAMETERIZATIONS)}. Fix: pass one of those names.")
            parameterization = PARAMETERIZATIONS[key]()
        self.schedule: Schedule = schedule if schedule is not None else DiscreteSchedule()
        self.parameterization = parameterization
        self._log_sigmas: dict[torch.device, Tensor] = {}  # per device, so no copy per step

    @classmethod
    def discrete(cls, prediction: str = "eps", *, beta_start: float = 0.00085, beta_end: float = 0.012,
                 num_timesteps: int = 1000, zsnr: bool = False) -> ModelSampling:
        """ComfyUI's ``ModelSamplingDiscrete`` with a prediction type (``lcm``: the distilled schedule)."""
        schedule: Schedule = DiscreteSchedule(beta_start=beta_start, beta_end=beta_end,
                                              num_timesteps=num_timesteps, zsnr=zsnr)
        if prediction == "lcm":
            schedule = DistilledSchedule(schedule)  # type: ignore[arg-type]
        return cls(schedule, prediction)

    # schedule ----------------------------------------------------------------------------
    @property
    def prediction(self) -> str:
        """The parameterisation's name (``"eps"``, ``"v_prediction"``, ...)."""
        return str(self.parameterization.name)

    @property
    def sigmas(self) -> Tensor:
        """The training sigmas, ascending (what schedulers such as ``simple`` read)."""
        return self.schedule.sigmas

    @property
    def log_sigmas(self) -> Tensor:
        return self.schedule.log_sigmas

    @property
    def sigma_min(self) -> Tensor:
        return self.schedule.sigma_min

    @property
    def sigma_max(self) -> Tensor:
        return self.schedule.sigma_max

    def timestep(self, sigma: Tensor) -> Tensor:
        """The model's time value for each sigma (discrete: the nearest training index)."""
        return self.schedule.timestep(sigma)

    def sigma(self, timestep: Tensor) -> Tensor:
        """Sigma of a (fractional) timestep."""
        return self.schedule.sigma(timestep)

    def percent_to_sigma(self, percent: float) -> float:
        """Sigma at a fraction of the sampling run (0 = start, 1 = end), as ComfyUI's."""
        return self.schedule.percent_to_sigma(percent)

    def model_timestep(self, sigma: Tensor) -> Tensor:
        """``timestep(sigma)`` as float32 on ``sigma``'s device, with the table cached per device."""
        if isinstance(self.schedule, DiscreteSchedule):
            log_sigmas = self._log_sigmas.get(sigma.device)
            if log_sigmas is None:
                log_sigmas = self._log_sigmas[sigma.device] = self.schedule.log_sigmas.to(sigma.device)
            return nearest_timestep(sigma, log_sigmas).float()
        return self.schedule.timestep(sigma).float()

    # parameterisation --------------------------------------------------------------------
    def calculate_input(self, sigma: Tensor, noise: Tensor) -> Tensor:
        return self.parameterization.calculate_input(sigma, noise)  # type: ignore[no-any-return]

    def calculate_denoised(self, sigma: Tensor, model_output: Tensor, model_input: Tensor) -> Tensor:
        return self.parameterization.calculate_denoised(  # type: ignore[no-any-return]
            sigma, model_output, model_input, self.schedule)

    def noise_scaling(self, sigma: Tensor | float, noise: Tensor, latent_image: Tensor,
                      max_denoise: bool = False) -> Tensor:
        return self.parameterization.noise_scaling(sigma, noise, latent_image, max_denoise)  # type: ignore[no-any-return]

    def inverse_noise_scaling(self, sigma: Tensor | float, latent: Tensor) -> Tensor:
        return self.parameterization.inverse_noise_scaling(sigma, latent)  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"ModelSampling({self.prediction}, {type(self.schedule).__name__})"
