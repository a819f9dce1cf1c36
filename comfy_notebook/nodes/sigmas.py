"""ComfyUI's schedulers and sigma operations of custom sampling: nodes that make or cut SIGMAS.

Names, inputs and defaults follow ``comfy_extras/nodes_custom_sampler.py`` (comfyanonymous/ComfyUI
c079b69; LaplaceScheduler from Comfy-Org/ComfyUI 4be318a).  SIGMAS is a 1-D float tensor of
noise levels; the schedulers that take a MODEL read its model sampling (sigma table, timestep
<-> sigma), so they follow the model's family and any ModelSampling* patch.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from comfy_notebook.nodes.sampling import scheduler_names
from comfy_notebook.runtime.values import ModelValue
from comfy_notebook.sampling import (
    SamplingConfigError,
    basic_sigmas,
    beta_sigmas,
    extend_intermediate_sigmas,
    flip_sigmas,
    sd_turbo_sigmas,
    set_first_sigma,
    split_sigmas,
    split_sigmas_denoise,
)
from comfy_notebook.sampling.schedules import (
    get_sigmas_exponential,
    get_sigmas_karras,
    get_sigmas_laplace,
    get_sigmas_polyexponential,
    get_sigmas_vp,
)

CATEGORY = "sampling/custom_sampling"
_SIGMA = {"min": 0.0, "max": 5000.0, "step": 0.01, "round": False}


def check_sigmas(sigmas: Any) -> Tensor:
    if not isinstance(sigmas, Tensor) or sigmas.ndim != 1:
        shape = tuple(sigmas.shape) if isinstance(sigmas, Tensor) else type(sigmas).__name__
        raise SamplingConfigError(f"sigmas must be a 1-D tensor (SIGMAS), received {shape}. "
                                  "Fix: connect a scheduler node such as BasicScheduler.")
    return sigmas


class _Scheduler:
    RETURN_TYPES = ("SIGMAS",)
    FUNCTION = "get_sigmas"
    CATEGORY = f"{CATEGORY}/schedulers"


def _steps(default: int = 20, maximum: int = 10000) -> tuple[str, dict[str, Any]]:
    return ("INT", {"default": default, "min": 1, "max": maximum})


class BasicScheduler(_Scheduler):
    """The model's sigmas for one of ComfyUI's schedulers (with img2img ``denoise``)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"model": ("MODEL",), "scheduler": (scheduler_names(),), "steps": _steps(),
                             "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01})}}

    def get_sigmas(self, model: ModelValue, scheduler: str, steps: int, denoise: float) -> tuple[Tensor]:
        return (basic_sigmas(model.schedule, scheduler, steps, denoise),)


class KarrasScheduler(_Scheduler):
    """Karras et al. (2022) sigmas between sigma_max and sigma_min."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"steps": _steps(), "sigma_max": ("FLOAT", {"default": 14.614642, **_SIGMA}),
                             "sigma_min": ("FLOAT", {"default": 0.0291675, **_SIGMA}),
                             "rho": ("FLOAT", {"default": 7.0, "min": 0.0, "max": 100.0, "step": 0.01,
                                               "round": False})}}

    def get_sigmas(self, steps: int, sigma_max: float, sigma_min: float, rho: float) -> tuple[Tensor]:
        return (get_sigmas_karras(steps, sigma_min, sigma_max, rho),)


class ExponentialScheduler(_Scheduler):
    """Sigmas uniform in log-sigma."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"steps": _steps(), "sigma_max": ("FLOAT", {"default": 14.614642, **_SIGMA}),
                             "sigma_min": ("FLOAT", {"default": 0.0291675, **_SIGMA})}}

    def get_sigmas(self, steps: int, sigma_max: float, sigma_min: float) -> tuple[Tensor]:
        return (get_sigmas_exponential(steps, sigma_min, sigma_max),)


class PolyexponentialScheduler(_Scheduler):
    """Sigmas polynomial (power ``rho``) in log-sigma."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"steps": _steps(), "sigma_max": ("FLOAT", {"default": 14.614642, **_SIGMA}),
                             "sigma_min": ("FLOAT", {"default": 0.0291675, **_SIGMA}),
                             "rho": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.01,
                                               "round": False})}}

    def get_sigmas(self, steps: int, sigma_max: float, sigma_min: float, rho: float) -> tuple[Tensor]:
        return (get_sigmas_polyexponential(steps, sigma_min, sigma_max, rho),)


class LaplaceScheduler(_Scheduler):
    """Sigmas at quantiles of a Laplace distribution in log-sigma (no final 0)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        step = {"step": 0.1, "round": False}
        return {"required": {"steps": _steps(), "sigma_max": ("FLOAT", {"default": 14.614642, **_SIGMA}),
                             "sigma_min": ("FLOAT", {"default": 0.0291675, **_SIGMA}),
                             "mu": ("FLOAT", {"default": 0.0, "min": -10.0, "max": 10.0, **step}),
                             "beta": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 10.0, **step})}}

    def get_sigmas(self, steps: int, sigma_max: float, sigma_min: float, mu: float, beta: float) -> tuple[Tensor]:
        return (get_sigmas_laplace(steps, sigma_min, sigma_max, mu, beta),)


class VPScheduler(_Scheduler):
    """The continuous VP (variance-preserving) schedule of Song et al. (2021)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"steps": _steps(), "beta_d": ("FLOAT", {"default": 19.9, **_SIGMA}),
                             "beta_min": ("FLOAT", {"default": 0.1, **_SIGMA}),
                             "eps_s": ("FLOAT", {"default": 0.001, "min": 0.0, "max": 1.0, "step": 0.0001,
                                                 "round": False})}}

    def get_sigmas(self, steps: int, beta_d: float, beta_min: float, eps_s: float) -> tuple[Tensor]:
        return (get_sigmas_vp(steps, beta_d, beta_min, eps_s),)


class BetaSamplingScheduler(_Scheduler):
    """The model's sigmas at quantiles of a Beta(alpha, beta) distribution (arXiv:2407.12173)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        shape = {"min": 0.0, "max": 50.0, "step": 0.01, "round": False}
        return {"required": {"model": ("MODEL",), "steps": _steps(), "alpha": ("FLOAT", {"default": 0.6, **shape}),
                             "beta": ("FLOAT", {"default": 0.6, **shape})}}

    def get_sigmas(self, model: ModelValue, steps: int, alpha: float, beta: float) -> tuple[Tensor]:
        return (beta_sigmas(model.schedule, steps, alpha, beta),)


class SDTurboScheduler(_Scheduler):
    """SD-Turbo / SDXL-Turbo: the sigmas of timesteps 999, 899, ... (1 to 10 steps)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"model": ("MODEL",), "steps": _steps(1, 10),
                             "denoise": ("FLOAT", {"default": 1.0, "min": 0, "max": 1.0, "step": 0.01})}}

    def get_sigmas(self, model: ModelValue, steps: int, denoise: float) -> tuple[Tensor]:
        return (sd_turbo_sigmas(model.schedule, steps, denoise),)


# -- sigma operations ----------------------------------------------------------------------------
class SplitSigmas:
    """Split at a step: high sigmas (steps before it) and low sigmas (from it on)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"sigmas": ("SIGMAS",), "step": ("INT", {"default": 0, "min": 0, "max": 10000})}}

    RETURN_TYPES = ("SIGMAS", "SIGMAS")
    RETURN_NAMES = ("high_sigmas", "low_sigmas")
    FUNCTION = "get_sigmas"
    CATEGORY = f"{CATEGORY}/sigmas"

    def get_sigmas(self, sigmas: Tensor, step: int) -> tuple[Tensor, Tensor]:
        return split_sigmas(check_sigmas(sigmas), step)


class SplitSigmasDenoise:
    """Split so that the low sigmas cover the last ``denoise`` fraction of the steps."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"sigmas": ("SIGMAS",),
                             "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01})}}

    RETURN_TYPES = ("SIGMAS", "SIGMAS")
    RETURN_NAMES = ("high_sigmas", "low_sigmas")
    FUNCTION = "get_sigmas"
    CATEGORY = f"{CATEGORY}/sigmas"

    def get_sigmas(self, sigmas: Tensor, denoise: float) -> tuple[Tensor, Tensor]:
        return split_sigmas_denoise(check_sigmas(sigmas), denoise)


class FlipSigmas:
    """Reverse the sigmas (ascending: unsampling); a leading 0 becomes 0.0001."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"sigmas": ("SIGMAS",)}}

    RETURN_TYPES = ("SIGMAS",)
    FUNCTION = "get_sigmas"
    CATEGORY = f"{CATEGORY}/sigmas"

    def get_sigmas(self, sigmas: Tensor) -> tuple[Tensor]:
        return (flip_sigmas(check_sigmas(sigmas)),)


class SetFirstSigma:
    """Replace the first sigma (e.g. a higher start for unsampled latents)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"sigmas": ("SIGMAS",), "sigma": ("FLOAT", {"default": 136.0, "min": 0.0, "max": 20000.0,
                                                                        "step": 0.001, "round": False})}}

    RETURN_TYPES = ("SIGMAS",)
    FUNCTION = "set_first_sigma"
    CATEGORY = f"{CATEGORY}/sigmas"

    def set_first_sigma(self, sigmas: Tensor, sigma: float) -> tuple[Tensor]:
        return (set_first_sigma(check_sigmas(sigmas), sigma),)


class ExtendIntermediateSigmas:
    """Subdivide the steps that start between ``end_at_sigma`` and ``start_at_sigma`` (-1: no limit)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        bound = {"min": 0.0, "max": 20000.0, "step": 0.01, "round": False}
        return {"required": {
            "sigmas": ("SIGMAS",), "steps": ("INT", {"default": 2, "min": 1, "max": 100}),
            "start_at_sigma": ("FLOAT", {**bound, "default": -1.0, "min": -1.0}),
            "end_at_sigma": ("FLOAT", {**bound, "default": 12.0}),
            "spacing": (["linear", "cosine", "sine"],)}}

    RETURN_TYPES = ("SIGMAS",)
    FUNCTION = "extend"
    CATEGORY = f"{CATEGORY}/sigmas"

    def extend(self, sigmas: Tensor, steps: int, start_at_sigma: float, end_at_sigma: float,
               spacing: str) -> tuple[Tensor]:
        return (extend_intermediate_sigmas(check_sigmas(sigmas), steps, start_at_sigma, end_at_sigma, spacing),)


class SamplingPercentToSigma:
    """The model's sigma at a fraction of the sampling (0: start, 1: end), as a FLOAT."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "model": ("MODEL", {}),
            "sampling_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.0001}),
            "return_actual_sigma": ("BOOLEAN", {"default": False, "tooltip": (
                "Return the actual sigma value instead of the value used for interval checks.\n"
                "This only affects results at 0.0 and 1.0.")})}}

    RETURN_TYPES = ("FLOAT",)
    RETURN_NAMES = ("sigma_value",)
    FUNCTION = "get_sigma"
    CATEGORY = f"{CATEGORY}/sigmas"

    def get_sigma(self, model: ModelValue, sampling_percent: float, return_actual_sigma: bool) -> tuple[float]:
        ms = model.model_sampling
        value = float(ms.percent_to_sigma(sampling_percent))
        if return_actual_sigma:  # the interval checks use 999999999.9 / 0.0 at the ends
            if sampling_percent == 0.0:
                value = float(ms.sigma_max)
            elif sampling_percent == 1.0:
                value = float(ms.sigma_min)
        return (value,)


NODE_CLASS_MAPPINGS = {
    "BasicScheduler": BasicScheduler,
    "KarrasScheduler": KarrasScheduler,
    "ExponentialScheduler": ExponentialScheduler,
    "PolyexponentialScheduler": PolyexponentialScheduler,
    "LaplaceScheduler": LaplaceScheduler,
    "VPScheduler": VPScheduler,
    "BetaSamplingScheduler": BetaSamplingScheduler,
    "SDTurboScheduler": SDTurboScheduler,
    "SplitSigmas": SplitSigmas,
    "SplitSigmasDenoise": SplitSigmasDenoise,
    "FlipSigmas": FlipSigmas,
    "SetFirstSigma": SetFirstSigma,
    "ExtendIntermediateSigmas": ExtendIntermediateSigmas,
    "SamplingPercentToSigma": SamplingPercentToSigma,
}
