"""Loaders of separate model files: ``UNETLoader``, ``CLIPLoader``, ``DualCLIPLoader``
(ComfyUI's names, inputs and type choices; ``nodes.py`` at comfyanonymous/ComfyUI@003617c).

The ``type`` lists are ComfyUI's; a type whose family this build does not have yet is refused
at run time with the supported combinations listed.
"""

from __future__ import annotations

from typing import Any

from comfy_notebook.errors import NodeError
from comfy_notebook.families import load_clip_value, load_unet_value
from comfy_notebook.nodes._services import (
    file_fingerprint,
    folders,
    listing,
    model_manager,
    services,
)

CLIP_TYPES = ["stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv", "pixart",
              "cosmos", "lumina2", "wan", "hidream", "chroma", "ace", "omnigen2", "qwen_image",
              "hunyuan_image", "flux2", "ovis"]
DUAL_CLIP_TYPES = ["sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image", "hunyuan_video_15",
                   "kandinsky5", "kandinsky5_image", "ltxv", "newbie", "ace"]
WEIGHT_DTYPES = ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"]


def _embedding_dirs() -> tuple[str, ...]:
    try:
        return tuple(str(p) for p in folders().paths("embeddings"))
    except Exception:
        return ()


def _stem(name: str) -> str:
    return str(name).rsplit(".", 1)[0]


class UNETLoader:
    """Load a diffusion model (UNet) file from models/diffusion_models."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"unet_name": (listing("diffusion_models"),),
                             "weight_dtype": (list(WEIGHT_DTYPES),)}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load_unet"
    CATEGORY = "advanced/loaders"

    @classmethod
    def IS_CHANGED(cls, unet_name: str, **_: Any) -> str:
        return file_fingerprint("diffusion_models", unet_name)

    def load_unet(self, unet_name: str, weight_dtype: str) -> tuple[Any]:
        if weight_dtype not in WEIGHT_DTYPES:
            raise NodeError(
                f"unknown weight_dtype {weight_dtype!r}", input_name="weight_dtype",
                expected=" / ".join(WEIGHT_DTYPES), received=weight_dtype, fix="pick one of ComfyUI's choices")
        svc = services()
        path = folders(svc).resolve("diffusion_models", unet_name)
        suffix = "" if weight_dtype == "default" else f"@{weight_dtype}"  # one managed model per storage dtype
        return (load_unet_value(model_manager(svc), path, name="unet:" + _stem(unet_name) + suffix,
                                weight_dtype=weight_dtype),)


def _clip(names: list[str], clip_type: str, device: str) -> Any:
    if device not in ("default", "cpu"):
        raise NodeError(f"unknown device {device!r}", input_name="device", expected="default or cpu",
                        received=device)
    svc = services()
    paths = [folders(svc).resolve("text_encoders", n) for n in names]
    return load_clip_value(model_manager(svc), paths, clip_type, names=["te:" + _stem(n) for n in names],
                           embedding_dirs=_embedding_dirs())


class CLIPLoader:
    """Load one text-encoder file from models/text_encoders as the CLIP of the ``type``'s model."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"clip_name": (listing("text_encoders"),), "type": (list(CLIP_TYPES),)},
                "optional": {"device": (["default", "cpu"], {"advanced": True})}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load_clip"
    CATEGORY = "advanced/loaders"

    @classmethod
    def IS_CHANGED(cls, clip_name: str, **_: Any) -> str:
        return file_fingerprint("text_encoders", clip_name)

    def load_clip(self, clip_name: str, type: str = "stable_diffusion", device: str = "default") -> tuple[Any]:
        return (_clip([clip_name], type, device),)


class DualCLIPLoader:
    """Load two text-encoder files (e.g. SDXL's clip_l and clip_g) as one CLIP."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"clip_name1": (listing("text_encoders"),), "clip_name2": (listing("text_encoders"),),
                             "type": (list(DUAL_CLIP_TYPES),)},
                "optional": {"device": (["default", "cpu"], {"advanced": True})}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load_clip"
    CATEGORY = "advanced/loaders"

    @classmethod
    def IS_CHANGED(cls, clip_name1: str, clip_name2: str, **_: Any) -> str:
        return file_fingerprint("text_encoders", clip_name1) + "|" + file_fingerprint("text_encoders", clip_name2)

    def load_clip(self, clip_name1: str, clip_name2: str, type: str, device: str = "default") -> tuple[Any]:
        return (_clip([clip_name1, clip_name2], type, device),)


NODE_CLASS_MAPPINGS = {"UNETLoader": UNETLoader, "CLIPLoader": CLIPLoader, "DualCLIPLoader": DualCLIPLoader}
NODE_DISPLAY_NAME_MAPPINGS = {"UNETLoader": "Load Diffusion Model", "CLIPLoader": "Load CLIP",
                              "DualCLIPLoader": "DualCLIPLoader"}
