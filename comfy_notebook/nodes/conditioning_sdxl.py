"""SDXL text encoding with size conditioning (ComfyUI ``comfy_extras/nodes_clip_sdxl.py``).

The values go into each conditioning entry's options under ComfyUI's keys (``width``,
``height``, ``crop_w``, ``crop_h``, ``target_width``, ``target_height``, ``aesthetic_score``,
``pooled_output``), where the model's family turns them into its extra input at sampling time,
so entries from these nodes and from ComfyUI-style custom nodes mix.
"""

from __future__ import annotations

import warnings
from typing import Any

from comfy_notebook.errors import NodeError
from comfy_notebook.runtime.values import ClipValue

MAX_RESOLUTION = 16384


def _encode(clip: ClipValue, texts: dict[str, str], options: dict[str, Any]) -> list[list[Any]]:
    if clip is None:
        raise NodeError("clip input is invalid: None", input_name="clip", expected="a CLIP", received=None,
                        fix="connect the CLIP output of an SDXL checkpoint loader")
    tokens = {n: clip.tokenize(texts.get(n, next(iter(texts.values()))), n) for n in clip.refs}
    rows = {n: len(t.chunks) for n, t in tokens.items()}
    if len(set(rows.values())) > 1:  # pad the shorter prompt with empty rows (as ComfyUI)
        longest = max(rows.values())
        for n, t in tokens.items():
            empty = clip.tokenize("", n).chunks[0]
            t.chunks.extend([list(empty) for _ in range(longest - len(t.chunks))])
    for name in sorted({m for t in tokens.values() for m in t.missing_embeddings}):
        warnings.warn(f"embedding:{name} not found in the embeddings folder; it was ignored", stacklevel=3)
    cond, pooled = clip.encode_tokens(tokens)
    return [[cond, {"pooled_output": pooled, **options}]]


class CLIPTextEncodeSDXL:
    """Encode CLIP-G and CLIP-L prompts with SDXL's size and crop conditioning."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        size = {"default": 1024, "min": 0, "max": MAX_RESOLUTION}
        return {"required": {
            "clip": ("CLIP",),
            "width": ("INT", dict(size)),
            "height": ("INT", dict(size)),
            "crop_w": ("INT", {"default": 0, "min": 0, "max": MAX_RESOLUTION}),
            "crop_h": ("INT", {"default": 0, "min": 0, "max": MAX_RESOLUTION}),
            "target_width": ("INT", dict(size)),
            "target_height": ("INT", dict(size)),
            "text_g": ("STRING", {"multiline": True, "dynamicPrompts": True}),
            "text_l": ("STRING", {"multiline": True, "dynamicPrompts": True}),
        }}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"
    CATEGORY = "advanced/conditioning"

    def encode(self, clip: ClipValue, width: int, height: int, crop_w: int, crop_h: int, target_width: int,
               target_height: int, text_g: str, text_l: str) -> tuple[list[list[Any]]]:
        options = {"width": width, "height": height, "crop_w": crop_w, "crop_h": crop_h,
                   "target_width": target_width, "target_height": target_height}
        return (_encode(clip, {"clip_g": text_g, "clip_l": text_l}, options),)


class CLIPTextEncodeSDXLRefiner:
    """Encode a prompt for the SDXL refiner with its aesthetic score and size conditioning."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "ascore": ("FLOAT", {"default": 6.0, "min": 0.0, "max": 1000.0, "step": 0.01}),
            "width": ("INT", {"default": 1024, "min": 0, "max": MAX_RESOLUTION}),
            "height": ("INT", {"default": 1024, "min": 0, "max": MAX_RESOLUTION}),
            "text": ("STRING", {"multiline": True, "dynamicPrompts": True}),
            "clip": ("CLIP",),
        }}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"
    CATEGORY = "advanced/conditioning"

    def encode(self, clip: ClipValue, ascore: float, width: int, height: int, text: str) -> tuple[list[list[Any]]]:
        options = {"aesthetic_score": ascore, "width": width, "height": height}
        return (_encode(clip, {"clip_g": text}, options),)


NODE_CLASS_MAPPINGS = {"CLIPTextEncodeSDXL": CLIPTextEncodeSDXL,
                       "CLIPTextEncodeSDXLRefiner": CLIPTextEncodeSDXLRefiner}
