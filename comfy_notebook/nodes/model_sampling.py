"""``ModelSamplingDiscrete``: sample a MODEL with another parameterisation (ComfyUI
``comfy_extras/nodes_model_advanced.py``)."""

from __future__ import annotations

from typing import Any

from comfy_notebook.runtime.values import ModelValue

SAMPLING_TYPES = ["eps", "v_prediction", "lcm", "x0"]


class ModelSamplingDiscrete:
    """Override the model's prediction type (and zero-terminal-SNR rescaling) on its DDPM schedule."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "model": ("MODEL",),
            "sampling": (list(SAMPLING_TYPES),),
            "zsnr": ("BOOLEAN", {"default": False}),
        }}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "advanced/model"

    def patch(self, model: ModelValue, sampling: str, zsnr: bool) -> tuple[ModelValue]:
        return (model.with_model_sampling(model.family.model_sampling(sampling, zsnr=bool(zsnr))),)


NODE_CLASS_MAPPINGS = {"ModelSamplingDiscrete": ModelSamplingDiscrete}
