"""ComfyUI's custom-sampling nodes: samplers, guiders, noise and sigmas as separate values.

Names, inputs, defaults and outputs follow ``comfy_extras/nodes_custom_sampler.py``
(comfyanonymous/ComfyUI c079b69 for the V1 layout; Comfy-Org/ComfyUI 4be318a for
DualCFGGuider's ``style``).  The values:

- SAMPLER: :class:`~comfy_notebook.sampling.SamplerSpec` (name + options);
- SIGMAS: a 1-D float tensor;
- NOISE: :class:`~comfy_notebook.sampling.RandomNoise` / ``EmptyNoise`` (any object with
  ``generate_noise(latent)`` and ``seed``, as ComfyUI's);
- GUIDER: :class:`Guider`, a MODEL with a :class:`~comfy_notebook.sampling.Guidance`.

``SamplerCustom`` with ``KSamplerSelect`` and ``BasicScheduler`` runs the same core as KSampler
(:func:`~comfy_notebook.sampling.sample_sigmas`), so equal settings give the same latent.  The
schedulers and sigma operations are in :mod:`.sigmas`, the sampler-option nodes
(``SamplerEulerAncestral``, ...) in :mod:`.sampler_options`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from comfy_notebook.nodes.sampling import MAX_SEED, sample_on_model, sampler_names
from comfy_notebook.nodes.sigmas import check_sigmas as _check_sigmas
from comfy_notebook.runtime.values import ModelValue
from comfy_notebook.sampling import (
    EmptyNoise,
    Guidance,
    SamplerSpec,
    SamplingConfigError,
    add_noise,
    fix_empty_latent_channels,
    sample_sigmas,
)
from comfy_notebook.sampling import RandomNoise as SeededNoise

CATEGORY = "sampling/custom_sampling"
_CFG = {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}


@dataclass(frozen=True, eq=False)
class Guider:
    """GUIDER: the model to sample with and how its conditioning combines."""

    model: ModelValue
    guidance: Guidance = field(repr=False)

    def __repr__(self) -> str:
        g = self.guidance
        kind = "basic" if g.negative is None else ("dual CFG" if g.middle is not None else f"CFG {g.cfg}")
        return f"<GUIDER {kind} over {self.model.summary()}>"


def _check(value: Any, expected: type | tuple[type, ...], name: str, fix: str) -> None:
    if not isinstance(value, expected):
        raise SamplingConfigError(f"{name} must be a {getattr(expected, '__name__', expected)}, received "
                                  f"{type(value).__name__}. Fix: {fix}")


def custom_sample(noise: Any, guider: Guider, sampler: SamplerSpec, sigmas: Tensor, latent_image: dict[str, Any],
                  *, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run ``guider`` with ``sampler`` along ``sigmas`` from ``noise``: (output, denoised_output)."""
    _check(guider, Guider, "guider", "connect BasicGuider, CFGGuider or DualCFGGuider.")
    _check(sampler, SamplerSpec, "sampler", "connect KSamplerSelect or a Sampler... node.")
    sigmas = _check_sigmas(sigmas)
    if not callable(getattr(noise, "generate_noise", None)):
        raise SamplingConfigError(f"noise must be a NOISE (with generate_noise), received {type(noise).__name__}. "
                                  "Fix: connect RandomNoise or DisableNoise.")
    latent = dict(latent_image)
    latent["samples"] = fix_empty_latent_channels(latent["samples"], guider.model.latent_format.channels)
    initial = noise.generate_noise(latent)

    def body(apply_model: Any, **facts: Any) -> tuple[Tensor, Tensor | None]:
        return sample_sigmas(apply_model, latent=latent, noise=initial, sigmas=sigmas, guidance=guider.guidance,
                             sampler=sampler, seed=int(seed), **facts)

    if len(sigmas) == 0:  # nothing to do: the latent as it came (no model load)
        return latent, latent
    g = guider.guidance
    samples, denoised = sample_on_model(guider.model, latent, body, evaluates_negative=g.evaluates_negative,
                                        conditionings=[c for c in (g.positive, g.negative, g.middle) if c])
    out = {**latent, "samples": samples}
    return out, ({**latent, "samples": denoised} if denoised is not None else out)


class SamplerCustom:
    """Sample with a SAMPLER along SIGMAS, CFG over positive and negative conditioning."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "model": ("MODEL",),
            "add_noise": ("BOOLEAN", {"default": True}),
            "noise_seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True}),
            "cfg": ("FLOAT", dict(_CFG)),
            "positive": ("CONDITIONING",),
            "negative": ("CONDITIONING",),
            "sampler": ("SAMPLER",),
            "sigmas": ("SIGMAS",),
            "latent_image": ("LATENT",),
        }}

    RETURN_TYPES = ("LATENT", "LATENT")
    RETURN_NAMES = ("output", "denoised_output")
    FUNCTION = "sample"
    CATEGORY = CATEGORY

    def sample(self, model: ModelValue, add_noise: bool, noise_seed: int, cfg: float, positive: list[Any],
               negative: list[Any], sampler: SamplerSpec, sigmas: Tensor,
               latent_image: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        noise = SeededNoise(int(noise_seed)) if add_noise else EmptyNoise()
        guider = Guider(model, Guidance.cfg_guided(positive, negative, cfg))
        return custom_sample(noise, guider, sampler, sigmas, latent_image, seed=noise_seed)


class SamplerCustomAdvanced:
    """Sample with separate NOISE, GUIDER, SAMPLER and SIGMAS values."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"noise": ("NOISE",), "guider": ("GUIDER",), "sampler": ("SAMPLER",),
                             "sigmas": ("SIGMAS",), "latent_image": ("LATENT",)}}

    RETURN_TYPES = ("LATENT", "LATENT")
    RETURN_NAMES = ("output", "denoised_output")
    FUNCTION = "sample"
    CATEGORY = CATEGORY

    def sample(self, noise: Any, guider: Guider, sampler: SamplerSpec, sigmas: Tensor,
               latent_image: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        return custom_sample(noise, guider, sampler, sigmas, latent_image, seed=int(getattr(noise, "seed", 0)))


# -- guiders -------------------------------------------------------------------------------------
class BasicGuider:
    """Guide with one conditioning, no CFG (Flux-style models)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"model": ("MODEL",), "conditioning": ("CONDITIONING",)}}

    RETURN_TYPES = ("GUIDER",)
    FUNCTION = "get_guider"
    CATEGORY = f"{CATEGORY}/guiders"

    def get_guider(self, model: ModelValue, conditioning: list[Any]) -> tuple[Guider]:
        return (Guider(model, Guidance.basic(conditioning)),)


class CFGGuider:
    """Classifier-free guidance over positive and negative conditioning."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"model": ("MODEL",), "positive": ("CONDITIONING",), "negative": ("CONDITIONING",),
                             "cfg": ("FLOAT", dict(_CFG))}}

    RETURN_TYPES = ("GUIDER",)
    FUNCTION = "get_guider"
    CATEGORY = f"{CATEGORY}/guiders"

    def get_guider(self, model: ModelValue, positive: list[Any], negative: list[Any], cfg: float) -> tuple[Guider]:
        return (Guider(model, Guidance.cfg_guided(positive, negative, cfg)),)


class DualCFGGuider:
    """Two CFG scales: cond1 against cond2, and cond2 against the negative."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"model": ("MODEL",), "cond1": ("CONDITIONING",), "cond2": ("CONDITIONING",),
                             "negative": ("CONDITIONING",), "cfg_conds": ("FLOAT", dict(_CFG)),
                             "cfg_cond2_negative": ("FLOAT", dict(_CFG)), "style": (["regular", "nested"],)}}

    RETURN_TYPES = ("GUIDER",)
    FUNCTION = "get_guider"
    CATEGORY = f"{CATEGORY}/guiders"

    def get_guider(self, model: ModelValue, cond1: list[Any], cond2: list[Any], negative: list[Any],
                   cfg_conds: float, cfg_cond2_negative: float, style: str = "regular") -> tuple[Guider]:
        return (Guider(model, Guidance.dual(cond1, cond2, negative, cfg_conds, cfg_cond2_negative,
                                            nested=style == "nested")),)


# -- noise ---------------------------------------------------------------------------------------
class DisableNoise:
    """No initial noise (sample from the latent as it is; seed 0 for per-step noise)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {}}

    RETURN_TYPES = ("NOISE",)
    FUNCTION = "get_noise"
    CATEGORY = f"{CATEGORY}/noise"

    def get_noise(self) -> tuple[EmptyNoise]:
        return (EmptyNoise(),)


class RandomNoise:
    """ComfyUI's seeded initial noise (the same draw KSampler makes)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"noise_seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED,
                                                    "control_after_generate": True})}}

    RETURN_TYPES = ("NOISE",)
    FUNCTION = "get_noise"
    CATEGORY = f"{CATEGORY}/noise"

    def get_noise(self, noise_seed: int) -> tuple[SeededNoise]:
        return (SeededNoise(int(noise_seed)),)


class AddNoise:
    """Noise a latent to the span of SIGMAS with the model's noise scaling (for unsampling tests)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"model": ("MODEL",), "noise": ("NOISE",), "sigmas": ("SIGMAS",),
                             "latent_image": ("LATENT",)}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "add_noise"
    CATEGORY = "_for_testing/custom_sampling/noise"

    def add_noise(self, model: ModelValue, noise: Any, sigmas: Tensor,
                  latent_image: dict[str, Any]) -> tuple[dict[str, Any]]:
        sigmas = _check_sigmas(sigmas)
        if len(sigmas) == 0:
            return (latent_image,)
        noisy = add_noise(latent_image["samples"], noise.generate_noise(latent_image), sigmas,
                          model_sampling=model.model_sampling, latent_format=model.latent_format)
        return ({**latent_image, "samples": noisy},)


# -- samplers and schedulers ---------------------------------------------------------------------
class KSamplerSelect:
    """A SAMPLER by name, with its default options."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"sampler_name": (sampler_names(),)}}

    RETURN_TYPES = ("SAMPLER",)
    FUNCTION = "get_sampler"
    CATEGORY = f"{CATEGORY}/samplers"

    def get_sampler(self, sampler_name: str) -> tuple[SamplerSpec]:
        return (SamplerSpec(sampler_name),)


_NODES: Mapping[str, type] = {
    "SamplerCustom": SamplerCustom,
    "KSamplerSelect": KSamplerSelect,
    "CFGGuider": CFGGuider,
    "DualCFGGuider": DualCFGGuider,
    "BasicGuider": BasicGuider,
    "RandomNoise": RandomNoise,
    "DisableNoise": DisableNoise,
    "AddNoise": AddNoise,
    "SamplerCustomAdvanced": SamplerCustomAdvanced,
}
NODE_CLASS_MAPPINGS = dict(_NODES)
NODE_DISPLAY_NAME_MAPPINGS = {"BasicGuider": "Basic Guider", "CFGGuider": "CFG Guider",
                              "DualCFGGuider": "Dual CFG Guider"}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "Guider", "custom_sample"]
