"""Flux and flow-model nodes with ComfyUI's names, inputs and defaults: ``CLIPTextEncodeFlux``,
``FluxGuidance``, ``FluxDisableGuidance`` (``comfy_extras/nodes_flux.py``), ``EmptySD3LatentImage``
(``nodes_sd3.py``), ``ModelSamplingFlux``, ``ModelSamplingSD3``, ``ModelSamplingAuraFlow``
(``nodes_model_advanced.py``), ComfyUI at a125cd8."""

from __future__ import annotations

from typing import Any

import torch

from comfy_notebook.errors import NodeError
from comfy_notebook.runtime.values import ClipValue, ModelValue
from comfy_notebook.sampling.flow import ModelSamplingDiscreteFlow, flux_shift
from comfy_notebook.sampling.flow import ModelSamplingFlux as _MSFlux

MAX_RESOLUTION = 16384
Conditioning = list[list[Any]]


def _set(conditioning: Conditioning, **values: Any) -> Conditioning:
    """ComfyUI ``conditioning_set_values``: a copy of every entry with ``values`` set."""
    return [[c, {**opts, **values}] for c, opts in conditioning]


class CLIPTextEncodeFlux:
    """Encode a prompt for Flux: CLIP-L (pooled) and T5-XXL (context) may get different texts."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "clip": ("CLIP",),
            "clip_l": ("STRING", {"multiline": True, "dynamicPrompts": True}),
            "t5xxl": ("STRING", {"multiline": True, "dynamicPrompts": True}),
            "guidance": ("FLOAT", {"default": 3.5, "min": 0.0, "max": 100.0, "step": 0.1}),
        }}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"
    CATEGORY = "advanced/conditioning/flux"

    def encode(self, clip: ClipValue, clip_l: str, t5xxl: str, guidance: float) -> tuple[Conditioning]:
        if clip is None or set(clip.refs) != {"clip_l", "t5xxl"}:
            raise NodeError(
                "CLIPTextEncodeFlux needs a Flux CLIP (CLIP-L and T5-XXL)", input_name="clip",
                expected="the CLIP of DualCLIPLoader(type='flux')",
                received=None if clip is None else f"a CLIP with {sorted(clip.refs)}",
                fix="load clip_l and t5xxl with DualCLIPLoader, type flux")
        cond, pooled, _ = clip.encode({"clip_l": clip_l, "t5xxl": t5xxl})
        return ([[cond, {"pooled_output": pooled, "guidance": float(guidance)}]],)


class FluxGuidance:
    """Set the distilled guidance a Flux-dev conditioning carries (default 3.5)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "conditioning": ("CONDITIONING",),
            "guidance": ("FLOAT", {"default": 3.5, "min": 0.0, "max": 100.0, "step": 0.1}),
        }}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "append"
    CATEGORY = "advanced/conditioning/flux"

    def append(self, conditioning: Conditioning, guidance: float) -> tuple[Conditioning]:
        return (_set(conditioning, guidance=float(guidance)),)


class FluxDisableGuidance:
    """Give the model no guidance input at all (``guidance`` None)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"conditioning": ("CONDITIONING",)}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "append"
    CATEGORY = "advanced/conditioning/flux"

    def append(self, conditioning: Conditioning) -> tuple[Conditioning]:
        return (_set(conditioning, guidance=None),)


class EmptySD3LatentImage:
    """A batch of all-zero 16-channel latents ``[B, 16, height/8, width/8]`` (SD3, Flux)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "width": ("INT", {"default": 1024, "min": 16, "max": MAX_RESOLUTION, "step": 16}),
            "height": ("INT", {"default": 1024, "min": 16, "max": MAX_RESOLUTION, "step": 16}),
            "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096}),
        }}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "generate"
    CATEGORY = "latent/sd3"

    def generate(self, width: int, height: int, batch_size: int = 1) -> tuple[dict[str, Any]]:
        return ({"samples": torch.zeros([batch_size, 16, height // 8, width // 8])},)


class ModelSamplingFlux:
    """Flux's resolution-dependent shift: ``mu`` linear in the image's 2x2-patch count."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "model": ("MODEL",),
            "max_shift": ("FLOAT", {"default": 1.15, "min": 0.0, "max": 100.0, "step": 0.01}),
            "base_shift": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 100.0, "step": 0.01}),
            "width": ("INT", {"default": 1024, "min": 16, "max": MAX_RESOLUTION, "step": 8}),
            "height": ("INT", {"default": 1024, "min": 16, "max": MAX_RESOLUTION, "step": 8}),
        }}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "advanced/model"

    def patch(self, model: ModelValue, max_shift: float, base_shift: float, width: int,
              height: int) -> tuple[ModelValue]:
        shift = flux_shift(width, height, base_shift=base_shift, max_shift=max_shift)
        return (model.with_model_sampling(_MSFlux(shift=shift)),)


class ModelSamplingSD3:
    """Constant-shift discrete flow (SD3's ``shift`` 3, timestep = sigma x 1000)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"model": ("MODEL",),
                             "shift": ("FLOAT", {"default": 3.0, "min": 0.0, "max": 100.0, "step": 0.01})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "advanced/model"
    MULTIPLIER = 1000.0

    def patch(self, model: ModelValue, shift: float) -> tuple[ModelValue]:
        return (model.with_model_sampling(ModelSamplingDiscreteFlow(shift=float(shift), multiplier=self.MULTIPLIER)),)


class ModelSamplingAuraFlow(ModelSamplingSD3):
    """Constant-shift discrete flow with timestep = sigma (AuraFlow; ``shift`` 1.73)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"model": ("MODEL",),
                             "shift": ("FLOAT", {"default": 1.73, "min": 0.0, "max": 100.0, "step": 0.01})}}

    FUNCTION = "patch_aura"
    MULTIPLIER = 1.0

    def patch_aura(self, model: ModelValue, shift: float) -> tuple[ModelValue]:
        return self.patch(model, shift)


NODE_CLASS_MAPPINGS = {
    "CLIPTextEncodeFlux": CLIPTextEncodeFlux, "FluxGuidance": FluxGuidance,
    "FluxDisableGuidance": FluxDisableGuidance, "EmptySD3LatentImage": EmptySD3LatentImage,
    "ModelSamplingFlux": ModelSamplingFlux, "ModelSamplingSD3": ModelSamplingSD3,
    "ModelSamplingAuraFlow": ModelSamplingAuraFlow,
}
