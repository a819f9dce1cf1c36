"""ComfyUI's sampler-object nodes: a SAMPLER with options (eta, s_noise, solver type, order, ...).

Inputs, defaults and the sampler each one selects follow ``comfy_extras/nodes_custom_sampler.py``
(comfyanonymous/ComfyUI c079b69; SamplerSASolver and SamplerER_SDE from Comfy-Org/ComfyUI 4be318a).  Each returns
a :class:`~comfy_notebook.sampling.SamplerSpec` whose options go to the sampler function as
keywords; ``noise_device`` picks the ``_gpu`` sampler (Brownian tree on the device) or the CPU one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from torch import Tensor

from comfy_notebook.nodes.image import common_upscale
from comfy_notebook.runtime.values import ModelValue
from comfy_notebook.sampling import SamplerSpec
from comfy_notebook.sampling.samplers_sa import tau_window

CATEGORY = "sampling/custom_sampling/samplers"


def _float(default: float, maximum: float = 100.0, minimum: float = 0.0) -> tuple[str, dict[str, Any]]:
    return ("FLOAT", {"default": default, "min": minimum, "max": maximum, "step": 0.01, "round": False})


def _int(default: int, minimum: int, maximum: int) -> tuple[str, dict[str, Any]]:
    return ("INT", {"default": default, "min": minimum, "max": maximum})


_NOISE_DEVICE = (["gpu", "cpu"],)


def _device(name: str, noise_device: str) -> str:
    """``name`` for CPU noise, ``name_gpu`` for noise drawn on the device (ComfyUI's choice)."""
    return name if noise_device == "cpu" else f"{name}_gpu"


class _SamplerNode:
    RETURN_TYPES = ("SAMPLER",)
    FUNCTION = "get_sampler"
    CATEGORY = CATEGORY


class SamplerEulerAncestral(_SamplerNode):
    """Euler ancestral with its noise amount (eta) and scale (s_noise)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"eta": _float(1.0), "s_noise": _float(1.0)}}

    def get_sampler(self, eta: float, s_noise: float) -> tuple[SamplerSpec]:
        return (SamplerSpec("euler_ancestral", {"eta": eta, "s_noise": s_noise}),)


class SamplerEulerAncestralCFGPP(_SamplerNode):
    """Euler ancestral CFG++ with eta and s_noise."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"eta": _float(1.0, 1.0), "s_noise": _float(1.0, 10.0)}}

    def get_sampler(self, eta: float, s_noise: float) -> tuple[SamplerSpec]:
        return (SamplerSpec("euler_ancestral_cfg_pp", {"eta": eta, "s_noise": s_noise}),)


class SamplerLMS(_SamplerNode):
    """Linear multistep with its order."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"order": _int(4, 1, 100)}}

    def get_sampler(self, order: int) -> tuple[SamplerSpec]:
        return (SamplerSpec("lms", {"order": order}),)


class SamplerDPMPP_3M_SDE(_SamplerNode):
    """DPM-Solver++(3M) SDE with eta, s_noise and where its Brownian noise is drawn."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"eta": _float(1.0), "s_noise": _float(1.0), "noise_device": _NOISE_DEVICE}}

    def get_sampler(self, eta: float, s_noise: float, noise_device: str) -> tuple[SamplerSpec]:
        return (SamplerSpec(_device("dpmpp_3m_sde", noise_device), {"eta": eta, "s_noise": s_noise}),)


class SamplerDPMPP_2M_SDE(_SamplerNode):
    """DPM-Solver++(2M) SDE with its solver type (midpoint / heun), eta, s_noise, noise device."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"solver_type": (["midpoint", "heun"],), "eta": _float(1.0), "s_noise": _float(1.0),
                             "noise_device": _NOISE_DEVICE}}

    def get_sampler(self, solver_type: str, eta: float, s_noise: float, noise_device: str) -> tuple[SamplerSpec]:
        options = {"eta": eta, "s_noise": s_noise, "solver_type": solver_type}
        return (SamplerSpec(_device("dpmpp_2m_sde", noise_device), options),)


class SamplerDPMPP_SDE(_SamplerNode):
    """DPM-Solver++ SDE with eta, s_noise, the midpoint ratio r and the noise device."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"eta": _float(1.0), "s_noise": _float(1.0), "r": _float(0.5),
                             "noise_device": _NOISE_DEVICE}}

    def get_sampler(self, eta: float, s_noise: float, r: float, noise_device: str) -> tuple[SamplerSpec]:
        return (SamplerSpec(_device("dpmpp_sde", noise_device), {"eta": eta, "s_noise": s_noise, "r": r}),)


class SamplerDPMPP_2S_Ancestral(_SamplerNode):
    """DPM-Solver++(2S) ancestral with eta and s_noise."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"eta": _float(1.0), "s_noise": _float(1.0)}}

    def get_sampler(self, eta: float, s_noise: float) -> tuple[SamplerSpec]:
        return (SamplerSpec("dpmpp_2s_ancestral", {"eta": eta, "s_noise": s_noise}),)


class SamplerDPMAdaptative(_SamplerNode):
    """Adaptive-step DPM-Solver with its error controller's settings."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "order": _int(3, 2, 3), "rtol": _float(0.05), "atol": _float(0.0078), "h_init": _float(0.05),
            "pcoeff": _float(0.0), "icoeff": _float(1.0), "dcoeff": _float(0.0), "accept_safety": _float(0.81),
            "eta": _float(0.0), "s_noise": _float(1.0)}}

    def get_sampler(self, order: int, rtol: float, atol: float, h_init: float, pcoeff: float, icoeff: float,
                    dcoeff: float, accept_safety: float, eta: float, s_noise: float) -> tuple[SamplerSpec]:
        options = {"order": order, "rtol": rtol, "atol": atol, "h_init": h_init, "pcoeff": pcoeff,
                   "icoeff": icoeff, "dcoeff": dcoeff, "accept_safety": accept_safety, "eta": eta,
                   "s_noise": s_noise}
        return (SamplerSpec("dpm_adaptive", options),)


def _er_sde_scaler(eta: float) -> Callable[[Tensor], Tensor]:
    def scale(v: Tensor) -> Tensor:
        return v * ((v**0.3).exp() + 10.0) ** eta

    return scale


def _reverse_time_scaler(eta: float) -> Callable[[Tensor], Tensor]:
    def scale(v: Tensor) -> Tensor:
        return v ** (eta + 1)

    return scale


def _ode_scaler(v: Tensor) -> Tensor:
    return v


class SamplerER_SDE(_SamplerNode):
    """ER-SDE solver: its noise-scale function (ER-SDE, reverse-time SDE or ODE), stages and eta."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"solver_type": (["ER-SDE", "Reverse-time SDE", "ODE"],), "max_stage": _int(3, 1, 3),
                             "eta": _float(1.0, 10.0), "s_noise": _float(1.0)}}

    def get_sampler(self, solver_type: str, max_stage: int, eta: float, s_noise: float) -> tuple[SamplerSpec]:
        if solver_type == "ODE" or eta == 0:  # a deterministic solver: no noise at all
            scaler, s_noise = _ode_scaler, 0.0
        elif solver_type == "Reverse-time SDE":
            scaler = _reverse_time_scaler(eta)
        else:
            scaler = _er_sde_scaler(eta)
        return (SamplerSpec("er_sde", {"s_noise": s_noise, "noise_scaler": scaler, "max_stage": max_stage}),)


class SamplerSASolver(_SamplerNode):
    """SA-Solver with its stochastic window (as fractions of the model's schedule) and orders."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        percent = {"min": 0.0, "max": 1.0, "step": 0.001}
        return {"required": {
            "model": ("MODEL",), "eta": _float(1.0, 10.0),
            "sde_start_percent": ("FLOAT", {"default": 0.2, **percent}),
            "sde_end_percent": ("FLOAT", {"default": 0.8, **percent}),
            "s_noise": _float(1.0), "predictor_order": _int(3, 1, 6), "corrector_order": _int(4, 0, 6),
            "use_pece": ("BOOLEAN", {"default": False}), "simple_order_2": ("BOOLEAN", {"default": False})}}

    def get_sampler(self, model: ModelValue, eta: float, sde_start_percent: float, sde_end_percent: float,
                    s_noise: float, predictor_order: int, corrector_order: int, use_pece: bool,
                    simple_order_2: bool) -> tuple[SamplerSpec]:
        schedule = model.schedule
        tau = tau_window(schedule.percent_to_sigma(sde_start_percent), schedule.percent_to_sigma(sde_end_percent),
                         eta=eta)
        return (SamplerSpec("sa_solver", {"tau_func": tau, "s_noise": s_noise, "predictor_order": predictor_order,
                                          "corrector_order": corrector_order, "use_pece": use_pece,
                                          "simple_order_2": simple_order_2}),)


class SamplerLCMUpscale(_SamplerNode):
    """LCM that upscales the latent by ``scale_ratio`` over its first ``scale_steps`` steps (-1: about half)."""

    UPSCALE_METHODS: ClassVar[list[str]] = ["bislerp", "nearest-exact", "bilinear", "area", "bicubic"]

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"scale_ratio": ("FLOAT", {"default": 1.0, "min": 0.1, "max": 20.0, "step": 0.01}),
                             "scale_steps": ("INT", {"default": -1, "min": -1, "max": 1000, "step": 1}),
                             "upscale_method": (cls.UPSCALE_METHODS,)}}

    def get_sampler(self, scale_ratio: float, scale_steps: int, upscale_method: str) -> tuple[SamplerSpec]:
        def upscale(x: Tensor, width: int, height: int) -> Tensor:
            return common_upscale(x, width, height, upscale_method, "disabled")

        return (SamplerSpec("lcm_upscale", {"total_upscale": scale_ratio, "upscale": upscale,
                                            "upscale_steps": None if scale_steps < 0 else scale_steps}),)


class SamplerEulerCFGpp(_SamplerNode):
    """Euler CFG++: "regular" is the ``euler_cfg_pp`` sampler, "alternative" ComfyUI's older form."""

    CATEGORY = "_for_testing"
    EXPERIMENTAL = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"version": (["regular", "alternative"],)}}

    def get_sampler(self, version: str) -> tuple[SamplerSpec]:
        return (SamplerSpec("euler_pp" if version == "alternative" else "euler_cfg_pp"),)


NODE_CLASS_MAPPINGS = {
    "SamplerEulerAncestral": SamplerEulerAncestral,
    "SamplerEulerAncestralCFGPP": SamplerEulerAncestralCFGPP,
    "SamplerLMS": SamplerLMS,
    "SamplerDPMPP_3M_SDE": SamplerDPMPP_3M_SDE,
    "SamplerDPMPP_2M_SDE": SamplerDPMPP_2M_SDE,
    "SamplerDPMPP_SDE": SamplerDPMPP_SDE,
    "SamplerDPMPP_2S_Ancestral": SamplerDPMPP_2S_Ancestral,
    "SamplerDPMAdaptative": SamplerDPMAdaptative,
    "SamplerSASolver": SamplerSASolver,
    "SamplerER_SDE": SamplerER_SDE,
    "SamplerLCMUpscale": SamplerLCMUpscale,
    "SamplerEulerCFGpp": SamplerEulerCFGpp,
}
NODE_DISPLAY_NAME_MAPPINGS = {"SamplerEulerAncestralCFGPP": "SamplerEulerAncestralCFG++",
                              "SamplerEulerCFGpp": "SamplerEulerCFG++"}
