"""Upscale-model nodes: ``UpscaleModelLoader`` and ``ImageUpscaleWithModel``.

Names, inputs and results follow ComfyUI's ``comfy_extras/nodes_upscale_model.py``
(Comfy-Org/ComfyUI@a125cd8); the models are spandrel's, held by the session's model manager
(:mod:`comfy_notebook.runtime.upscale`).
"""

from __future__ import annotations

from typing import Any

import torch

from comfy_notebook.nodes._services import (
    file_fingerprint,
    folders,
    listing,
    model_manager,
    services,
)

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]


class UpscaleModelLoader:
    """Load an upscale model (ESRGAN, RealESRGAN, SwinIR, HAT, DAT, ...) from models/upscale_models."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"model_name": (listing("upscale_models"),)}}

    RETURN_TYPES = ("UPSCALE_MODEL",)
    FUNCTION = "load_model"
    CATEGORY = "loaders"

    @classmethod
    def IS_CHANGED(cls, model_name: str, **_: Any) -> str:
        return file_fingerprint("upscale_models", model_name)

    def load_model(self, model_name: str) -> tuple[Any]:
        from comfy_notebook.runtime.upscale import load_upscale_model_value

        svc = services()
        path = folders(svc).resolve("upscale_models", model_name)
        return (load_upscale_model_value(model_manager(svc), path,
                                         name=str(model_name).rsplit(".", 1)[0]),)


class ImageUpscaleWithModel:
    """Upscale an image with a model, in 512-pixel tiles (halved on out-of-memory, down to 128)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"upscale_model": ("UPSCALE_MODEL",), "image": ("IMAGE",)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "upscale"
    CATEGORY = "image/upscaling"

    def upscale(self, upscale_model: Any, image: torch.Tensor) -> tuple[torch.Tensor]:
        from comfy_notebook.engine import current_context

        ctx = current_context()  # one progress step per tile; an interrupt stops between tiles
        return (upscale_model.upscale(image, progress=lambda done, total: ctx.progress(done, total)),)


NODE_CLASS_MAPPINGS: dict[str, type] = {
    "UpscaleModelLoader": UpscaleModelLoader,
    "ImageUpscaleWithModel": ImageUpscaleWithModel,
}

NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {
    "UpscaleModelLoader": "Load Upscale Model",
    "ImageUpscaleWithModel": "Upscale Image (using Model)",
}
