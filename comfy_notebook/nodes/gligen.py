"""GLIGEN nodes: ``GLIGENLoader`` and ``GLIGENTextBoxApply`` (ComfyUI's ``nodes.py``,
comfyanonymous/ComfyUI@00728eb); the model is :mod:`comfy_notebook.models.gligen`, its use
while sampling :mod:`comfy_notebook.runtime.gligen`."""

from __future__ import annotations

from typing import Any

from comfy_notebook.nodes._services import (
    file_fingerprint,
    folders,
    listing,
    model_manager,
    services,
)

__all__ = ["NODE_CLASS_MAPPINGS"]


class GLIGENLoader:
    """Load a GLIGEN model (models/gligen)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"gligen_name": (listing("gligen"),)}}

    RETURN_TYPES = ("GLIGEN",)
    FUNCTION = "load_gligen"
    CATEGORY = "loaders"

    @classmethod
    def IS_CHANGED(cls, gligen_name: str, **_: Any) -> str:
        return file_fingerprint("gligen", gligen_name)

    def load_gligen(self, gligen_name: str) -> tuple[Any]:
        from comfy_notebook.runtime.gligen import load_gligen_value

        svc = services()
        path = folders(svc).resolve("gligen", gligen_name)
        return (load_gligen_value(path, name=str(gligen_name).rsplit(".", 1)[0], manager=model_manager(svc)),)


class GLIGENTextBoxApply:
    """Ground a phrase in a box: the model draws ``text`` inside (x, y, width, height) (pixels)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        box = {"min": 8, "max": 16384, "step": 8}
        at = {"default": 0, "min": 0, "max": 16384, "step": 8}
        return {"required": {
            "conditioning_to": ("CONDITIONING",), "clip": ("CLIP",), "gligen_textbox_model": ("GLIGEN",),
            "text": ("STRING", {"multiline": True, "dynamicPrompts": True}),
            "width": ("INT", {"default": 64, **box}), "height": ("INT", {"default": 64, **box}),
            "x": ("INT", at), "y": ("INT", at),
        }}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "append"
    CATEGORY = "conditioning/gligen"

    def append(self, conditioning_to: list[Any], clip: Any, gligen_textbox_model: Any, text: str,
               width: int, height: int, x: int, y: int) -> tuple[list[Any]]:
        from comfy_notebook.errors import NodeError

        _, pooled, _ = clip.encode(text)  # the unprojected pooled output (SD1's CLIP-L has no projection)
        if pooled is None:
            raise NodeError("this CLIP gives no pooled text embedding for GLIGEN", input_name="clip",
                            expected="an SD1 CLIP (CLIP-L)", received=repr(clip),
                            fix="use the checkpoint's CLIP that the GLIGEN model was trained with")
        box = (pooled, height // 8, width // 8, y // 8, x // 8)
        out = []
        for cond, opts in conditioning_to:
            prev = list(opts["gligen"][2]) if "gligen" in opts else []
            out.append([cond, {**opts, "gligen": ("position", gligen_textbox_model, [*prev, box])}])
        return (out,)


NODE_CLASS_MAPPINGS: dict[str, type] = {"GLIGENLoader": GLIGENLoader, "GLIGENTextBoxApply": GLIGENTextBoxApply}
