"""CLIP vision nodes: ``CLIPVisionLoader``, ``CLIPVisionEncode``, ``unCLIPCheckpointLoader`` and
``unCLIPConditioning``.

Names, inputs and outputs follow ComfyUI's ``nodes.py`` (Comfy-Org/ComfyUI@a125cd8); the tower
and its preprocessing are :mod:`comfy_notebook.models.clip_vision` and
:mod:`comfy_notebook.runtime.clip_vision`.
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


class CLIPVisionLoader:
    """Load a CLIP image encoder (ViT-L/14, ViT-H/14, ViT-bigG/14) from models/clip_vision."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"clip_name": (listing("clip_vision"),)}}

    RETURN_TYPES = ("CLIP_VISION",)
    FUNCTION = "load_clip"
    CATEGORY = "loaders"

    @classmethod
    def IS_CHANGED(cls, clip_name: str, **_: Any) -> str:
        return file_fingerprint("clip_vision", clip_name)

    def load_clip(self, clip_name: str) -> tuple[Any]:
        from comfy_notebook.runtime.clip_vision import load_clip_vision_value

        svc = services()
        path = folders(svc).resolve("clip_vision", clip_name)
        return (load_clip_vision_value(model_manager(svc), path, name=str(clip_name).rsplit(".", 1)[0]),)


class CLIPVisionEncode:
    """Encode an image: ``crop="center"`` crops to a square first, ``"none"`` squashes it."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"clip_vision": ("CLIP_VISION",), "image": ("IMAGE",),
                             "crop": (["center", "none"],)}}

    RETURN_TYPES = ("CLIP_VISION_OUTPUT",)
    FUNCTION = "encode"
    CATEGORY = "conditioning"

    def encode(self, clip_vision: Any, image: torch.Tensor, crop: str) -> tuple[Any]:
        return (clip_vision.encode_image(image, crop=crop == "center"),)


class unCLIPCheckpointLoader:
    """Load an unCLIP checkpoint (SD 2.1 unCLIP-L/-H): MODEL, CLIP, VAE and its image tower."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"ckpt_name": (listing("checkpoints"),)}}

    RETURN_TYPES = ("MODEL", "CLIP", "VAE", "CLIP_VISION")
    FUNCTION = "load_checkpoint"
    CATEGORY = "loaders"

    @classmethod
    def IS_CHANGED(cls, ckpt_name: str, **_: Any) -> str:
        return file_fingerprint("checkpoints", ckpt_name)

    def load_checkpoint(self, ckpt_name: str) -> tuple[Any, Any, Any, Any]:
        from comfy_notebook.errors import ModelLoadError
        from comfy_notebook.families import load_checkpoint_values
        from comfy_notebook.runtime.clip_vision import load_clip_vision_value

        svc = services()
        path = folders(svc).resolve("checkpoints", ckpt_name)
        name = str(ckpt_name).rsplit(".", 1)[0]
        from comfy_notebook.nodes.loaders import _embedding_dirs

        model, clip, vae = load_checkpoint_values(model_manager(svc), path, name=name,
                                                  embedding_dirs=_embedding_dirs())
        prefix = getattr(model.family, "clip_vision_prefix", None)
        if prefix is None:
            raise ModelLoadError(
                f"{ckpt_name} is a {model.family.title} checkpoint without a CLIP vision tower "
                "(unCLIP checkpoints carry one under embedder.model.visual.). Fix: load it with "
                "CheckpointLoaderSimple, and a separate tower with CLIPVisionLoader")
        vision = load_clip_vision_value(model_manager(svc), path, name=name, prefix=prefix)
        return model, clip, vae, vision


class unCLIPConditioning:
    """Append an image embedding to every conditioning entry (``unclip_conditioning``).

    Only unCLIP models read it (their ``adm`` input); other models ignore it, as in ComfyUI.
    Strength 0 returns the conditioning unchanged.
    """

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "conditioning": ("CONDITIONING",), "clip_vision_output": ("CLIP_VISION_OUTPUT",),
            "strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01}),
            "noise_augmentation": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01}),
        }}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "apply_adm"
    CATEGORY = "conditioning"

    def apply_adm(self, conditioning: list[Any], clip_vision_output: Any, strength: float,
                  noise_augmentation: float) -> tuple[list[Any]]:
        if strength == 0:
            return (conditioning,)
        entry = {"clip_vision_output": clip_vision_output, "strength": strength,
                 "noise_augmentation": noise_augmentation}
        return ([[cond, {**opts, "unclip_conditioning": [*opts.get("unclip_conditioning", []), entry]}]
                 for cond, opts in conditioning],)


NODE_CLASS_MAPPINGS: dict[str, type] = {
    "CLIPVisionLoader": CLIPVisionLoader,
    "CLIPVisionEncode": CLIPVisionEncode,
    "unCLIPCheckpointLoader": unCLIPCheckpointLoader,
    "unCLIPConditioning": unCLIPConditioning,
}

NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {
    "CLIPVisionLoader": "Load CLIP Vision",
    "CLIPVisionEncode": "CLIP Vision Encode",
    "unCLIPCheckpointLoader": "unCLIPCheckpointLoader",
}
