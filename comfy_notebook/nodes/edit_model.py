"""Reference latents for edit models: ``ReferenceLatent`` and ``FluxKontextMultiReferenceLatentMethod``.

ComfyUI ``comfy_extras/nodes_edit_model.py`` and ``nodes_flux.py`` (Comfy-Org/ComfyUI@a125cd8),
re-implemented: ``ReferenceLatent`` appends a LATENT's samples to every entry's
``reference_latents`` (chain several for several references); the method node sets
``reference_latents_method`` (``"offset"``, ``"index"``, ``"uxo/uno"`` stored as ``"uxo"``), which
a model family reads when it builds the model inputs (Qwen-Image-Edit: see its family).
"""

from __future__ import annotations

from typing import Any

Conditioning = list[list[Any]]

__all__ = ["FluxKontextMultiReferenceLatentMethod", "ReferenceLatent"]


class ReferenceLatent:
    """Sets the guiding latent of an edit model; chain several for several references."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"conditioning": ("CONDITIONING",)}, "optional": {"latent": ("LATENT",)}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "append"
    CATEGORY = "advanced/conditioning/edit_models"

    def append(self, conditioning: Conditioning, latent: dict[str, Any] | None = None) -> tuple[Conditioning]:
        if latent is None:
            return (conditioning,)
        samples = latent["samples"]
        return ([[c, {**o, "reference_latents": [*o.get("reference_latents", []), samples]}]
                 for c, o in conditioning],)


class FluxKontextMultiReferenceLatentMethod:
    """How several reference latents are placed (RoPE positions): offset, index or uxo/uno."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"conditioning": ("CONDITIONING",),
                             "reference_latents_method": (["offset", "index", "uxo/uno"],)}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "append"
    CATEGORY = "advanced/conditioning/flux"
    EXPERIMENTAL = True

    def append(self, conditioning: Conditioning, reference_latents_method: str) -> tuple[Conditioning]:
        method = "uxo" if ("uxo" in reference_latents_method or "uso" in reference_latents_method) \
            else reference_latents_method
        return ([[c, {**o, "reference_latents_method": method}] for c, o in conditioning],)


NODE_CLASS_MAPPINGS = {"ReferenceLatent": ReferenceLatent,
                       "FluxKontextMultiReferenceLatentMethod": FluxKontextMultiReferenceLatentMethod}
