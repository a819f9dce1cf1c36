"""Style models: ``StyleModelLoader`` and ``StyleModelApply`` (ComfyUI's ``nodes.py`` and
``comfy/sd.py`` ``load_style_model``, comfyanonymous/ComfyUI@00728eb): the T2I-Adapter style
model turns a CLIP vision output's ``last_hidden_state`` into extra context tokens appended to
each conditioning entry.  The adapter itself is :mod:`comfy_notebook.models.style_adapter`;
it is small (about 40 M parameters) and runs on the CPU in float32 when the node runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from comfy_notebook.nodes._services import file_fingerprint, folders, listing, services

__all__ = ["NODE_CLASS_MAPPINGS", "StyleModelValue"]


@dataclass(eq=False)
class StyleModelValue:
    """A STYLE_MODEL: the adapter module and its file name."""

    model: Any
    name: str = ""

    def get_cond(self, clip_vision_output: Any) -> torch.Tensor:
        """Style tokens ``[B, tokens, context]`` of a CLIP_VISION_OUTPUT."""
        hidden = clip_vision_output["last_hidden_state"].float().cpu()
        with torch.inference_mode():
            return self.model(hidden)  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        c = self.model.config
        return f"<STYLE_MODEL {self.name!r}: {c.tokens} tokens of {c.context_dim} from {c.width}-wide image tokens>"


class StyleModelLoader:
    """Load a style model (models/style_models): the T2I-Adapter style adapter."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"style_model_name": (listing("style_models"),)}}

    RETURN_TYPES = ("STYLE_MODEL",)
    FUNCTION = "load_style_model"
    CATEGORY = "loaders"

    @classmethod
    def IS_CHANGED(cls, style_model_name: str, **_: Any) -> str:
        return file_fingerprint("style_models", style_model_name)

    def load_style_model(self, style_model_name: str) -> tuple[Any]:
        from comfy_notebook.errors import UnsupportedModelError
        from comfy_notebook.models.style_adapter import StyleAdapter, StyleAdapterConfig
        from comfy_notebook.runtime.loading import open_state_dict

        path = folders(services()).resolve("style_models", style_model_name)
        sd = open_state_dict(path)
        if "style_embedding" not in sd:
            what = "a Flux Redux model" if "redux_down.weight" in sd else "not a style model"
            raise UnsupportedModelError(
                f"{style_model_name} is {what}; the T2I-Adapter style model (style_embedding, "
                "transformer_layes.*) is supported. Fix: use t2iadapter_style_sd14v1 with SD1 checkpoints")
        with torch.device("meta"):
            model = StyleAdapter(StyleAdapterConfig.from_state_dict(sd))
        model.load_state_dict({k: sd[k].float().contiguous() for k in model.state_dict()}, strict=True, assign=True)
        return (StyleModelValue(model.eval().requires_grad_(False), str(style_model_name).rsplit(".", 1)[0]),)


class StyleModelApply:
    """Append style tokens from an image to each conditioning entry (``multiply`` scales them)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "conditioning": ("CONDITIONING",), "style_model": ("STYLE_MODEL",),
            "clip_vision_output": ("CLIP_VISION_OUTPUT",),
            "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.001}),
            "strength_type": (["multiply", "attn_bias"],),
        }}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "apply_stylemodel"
    CATEGORY = "conditioning/style_model"

    def apply_stylemodel(self, conditioning: list[Any], style_model: Any, clip_vision_output: Any,
                         strength: float, strength_type: str) -> tuple[list[Any]]:
        from comfy_notebook.errors import NodeError

        cond = style_model.get_cond(clip_vision_output).flatten(0, 1).unsqueeze(0)  # [1, B*tokens, D]
        if strength_type == "multiply":
            cond = cond * strength
        out = []
        for txt, opts in conditioning:
            if "attention_mask" in opts or (strength_type == "attn_bias" and strength != 1.0):
                raise NodeError(
                    "StyleModelApply with attn_bias (or on masked-attention conditioning) needs "
                    "attention masks, which these models do not take", input_name="strength_type",
                    expected="multiply, or attn_bias at strength 1.0", received=f"{strength_type} {strength}",
                    fix="use strength_type multiply")
            if txt.shape[-1] != cond.shape[-1]:
                raise NodeError("style tokens and the text conditioning differ in width", input_name="style_model",
                                expected=f"a style model with {txt.shape[-1]}-wide tokens",
                                received=f"{cond.shape[-1]}-wide tokens",
                                fix="use the style model made for this checkpoint's family (SD1: 768)")
            out.append([torch.cat([txt, cond.to(txt.device, txt.dtype)], dim=1), dict(opts)])
        return (out,)


NODE_CLASS_MAPPINGS: dict[str, type] = {"StyleModelLoader": StyleModelLoader, "StyleModelApply": StyleModelApply}
