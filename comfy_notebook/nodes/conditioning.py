"""Text encoding and conditioning nodes (ComfyUI's names, inputs and behaviour).

CONDITIONING is ComfyUI's list ``[[cond [1, T, D], {"pooled_output": [1, D], ...}], ...]``;
the option keys set here (``area``, ``strength``, ``mask``, ``start_percent`` ...) are the
ones :mod:`comfy_notebook.sampling.denoisers` reads.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from comfy_notebook.errors import NodeError
from comfy_notebook.runtime.values import ClipValue

EMBEDDING_PREFIX = "embedding:"

MAX_RESOLUTION = 16384

Conditioning = list[list[Any]]


def _set_values(conditioning: Conditioning, values: dict[str, Any]) -> Conditioning:
    """A copy of ``conditioning`` with ``values`` merged into every entry's options."""
    return [[cond, {**opts, **values}] for cond, opts in conditioning]


def embedding_fingerprint(text: Any) -> Any:
    """``[(name, [file identity of each file its lookup tries])]`` for the embeddings ``text``
    names (a linked text, unknown here: every file of the embeddings folders); ``None`` when a
    text names no embedding.  Identities are memoised per file stat: no file is re-read while
    it is unchanged."""
    if isinstance(text, str) and EMBEDDING_PREFIX not in text:
        return None
    from comfy_notebook.folders import folders_service
    from comfy_notebook.folders.identity import file_identity
    from comfy_notebook.models.prompt import embedding_candidates, embedding_names
    from comfy_notebook.nodes._services import services

    try:
        folders = folders_service(services())
        dirs = folders.paths("embeddings")
        names = embedding_names(text) if isinstance(text, str) else folders.list("embeddings")
    except Exception:
        return None  # no embeddings folder: the lookup finds nothing either
    return [(name, [file_identity(p) for p in embedding_candidates(dirs, name)]) for name in names]


class CLIPTextEncode:
    """Encode a text prompt (ComfyUI's weight syntax, ``embedding:name``) into CONDITIONING."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "text": ("STRING", {"multiline": True, "dynamicPrompts": True,
                                "tooltip": "The text to be encoded."}),
            "clip": ("CLIP", {"tooltip": "The CLIP model used for encoding the text."}),
        }}

    RETURN_TYPES = ("CONDITIONING",)
    OUTPUT_TOOLTIPS = ("A conditioning containing the embedded text used to guide the diffusion model.",)
    FUNCTION = "encode"
    CATEGORY = "conditioning"
    DESCRIPTION = "Encodes a text prompt using a CLIP model into an embedding that guides the diffusion model."

    # Real mode may key this node itself (its IS_CHANGED reads only the text and stats files).
    FAST_IS_CHANGED = True

    @classmethod
    def IS_CHANGED(cls, text: Any = None, clip: Any = None) -> Any:
        """The identity of every embedding file the text names: a file replaced under the same
        name changes the key.  ``None`` (the key of a node without IS_CHANGED) when the text
        names none, so plain prompts keep their keys and real mode its fast path."""
        return embedding_fingerprint(text)

    def encode(self, clip: ClipValue, text: str) -> tuple[Conditioning]:
        if clip is None:
            raise NodeError(
                "clip input is invalid: None", input_name="clip", expected="a CLIP",
                received=None, fix="connect the CLIP output of a checkpoint loader that has a text encoder")
        cond, pooled, missing = clip.encode(text)
        for name in missing:
            warnings.warn(f"embedding:{name} not found in the embeddings folder; it was ignored",
                          stacklevel=2)
        return ([[cond, {"pooled_output": pooled}]],)


class CLIPSetLastLayer:
    """Read an earlier CLIP layer (clip skip): -1 is the last layer, -2 the penultimate."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "clip": ("CLIP",),
            "stop_at_clip_layer": ("INT", {"default": -1, "min": -24, "max": -1, "step": 1}),
        }}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "set_last_layer"
    CATEGORY = "conditioning"

    def set_last_layer(self, clip: ClipValue, stop_at_clip_layer: int) -> tuple[ClipValue]:
        return (clip.with_layer(stop_at_clip_layer),)


class ConditioningCombine:
    """Both conditionings, evaluated separately and averaged by the sampler."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"conditioning_1": ("CONDITIONING",), "conditioning_2": ("CONDITIONING",)}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "combine"
    CATEGORY = "conditioning"

    def combine(self, conditioning_1: Conditioning, conditioning_2: Conditioning) -> tuple[Conditioning]:
        return (list(conditioning_1) + list(conditioning_2),)


class ConditioningAverage:
    """Blend two conditionings token by token: ``to * s + from * (1 - s)``."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "conditioning_to": ("CONDITIONING",),
            "conditioning_from": ("CONDITIONING",),
            "conditioning_to_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}),
        }}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "addWeighted"
    CATEGORY = "conditioning"

    def addWeighted(self, conditioning_to: Conditioning, conditioning_from: Conditioning,
                    conditioning_to_strength: float) -> tuple[Conditioning]:
        if len(conditioning_from) > 1:
            warnings.warn("ConditioningAverage: conditioning_from has more than one entry; only the "
                          "first is used", stacklevel=2)
        cond_from = conditioning_from[0][0]
        pooled_from = conditioning_from[0][1].get("pooled_output")
        s = conditioning_to_strength
        out = []
        for cond_to, opts in conditioning_to:
            t0 = cond_from[:, : cond_to.shape[1]]
            if t0.shape[1] < cond_to.shape[1]:  # pad the shorter one with zeros
                pad = torch.zeros((1, cond_to.shape[1] - t0.shape[1], cond_to.shape[2]), dtype=t0.dtype)
                t0 = torch.cat([t0, pad], dim=1)
            new = dict(opts)
            pooled_to = opts.get("pooled_output")
            if pooled_to is not None and pooled_from is not None:
                new["pooled_output"] = pooled_to * s + pooled_from * (1.0 - s)
            elif pooled_from is not None:
                new["pooled_output"] = pooled_from
            out.append([cond_to * s + t0 * (1.0 - s), new])
        return (out,)


class ConditioningConcat:
    """Append ``conditioning_from``'s tokens to every entry of ``conditioning_to``."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"conditioning_to": ("CONDITIONING",), "conditioning_from": ("CONDITIONING",)}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "concat"
    CATEGORY = "conditioning"

    def concat(self, conditioning_to: Conditioning, conditioning_from: Conditioning) -> tuple[Conditioning]:
        if len(conditioning_from) > 1:
            warnings.warn("ConditioningConcat: conditioning_from has more than one entry; only the "
                          "first is used", stacklevel=2)
        cond_from = conditioning_from[0][0]
        return ([[torch.cat((cond, cond_from), dim=1), dict(opts)] for cond, opts in conditioning_to],)


class ConditioningSetArea:
    """Restrict a conditioning to a rectangle (pixels, multiples of 8)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "conditioning": ("CONDITIONING",),
            "width": ("INT", {"default": 64, "min": 64, "max": MAX_RESOLUTION, "step": 8}),
            "height": ("INT", {"default": 64, "min": 64, "max": MAX_RESOLUTION, "step": 8}),
            "x": ("INT", {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 8}),
            "y": ("INT", {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 8}),
            "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01}),
        }}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "append"
    CATEGORY = "conditioning"

    def append(self, conditioning: Conditioning, width: int, height: int, x: int, y: int,
               strength: float) -> tuple[Conditioning]:
        area = (height // 8, width // 8, y // 8, x // 8)  # latent units: h, w, y, x
        return (_set_values(conditioning, {"area": area, "strength": strength,
                                           "set_area_to_bounds": False}),)


class ConditioningSetAreaPercentage:
    """Restrict a conditioning to a rectangle given as fractions of the image."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        frac = {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}
        pos = {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01}
        return {"required": {
            "conditioning": ("CONDITIONING",),
            "width": ("FLOAT", dict(frac)), "height": ("FLOAT", dict(frac)),
            "x": ("FLOAT", dict(pos)), "y": ("FLOAT", dict(pos)),
            "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01}),
        }}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "append"
    CATEGORY = "conditioning"

    def append(self, conditioning: Conditioning, width: float, height: float, x: float, y: float,
               strength: float) -> tuple[Conditioning]:
        area = ("percentage", height, width, y, x)
        return (_set_values(conditioning, {"area": area, "strength": strength,
                                           "set_area_to_bounds": False}),)


class ConditioningSetAreaStrength:
    """Set the ``strength`` of every entry (how much an area conditioning weighs where it overlaps)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "conditioning": ("CONDITIONING",),
            "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01}),
        }}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "append"
    CATEGORY = "conditioning"

    def append(self, conditioning: Conditioning, strength: float) -> tuple[Conditioning]:
        return (_set_values(conditioning, {"strength": strength}),)


class ConditioningSetMask:
    """Restrict a conditioning to a MASK (optionally to the mask's bounding box)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "conditioning": ("CONDITIONING",),
            "mask": ("MASK",),
            "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01}),
            "set_cond_area": (["default", "mask bounds"],),
        }}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "append"
    CATEGORY = "conditioning"

    def append(self, conditioning: Conditioning, mask: torch.Tensor, set_cond_area: str,
               strength: float) -> tuple[Conditioning]:
        if mask.ndim < 3:
            mask = mask.unsqueeze(0)
        return (_set_values(conditioning, {"mask": mask, "set_area_to_bounds": set_cond_area != "default",
                                           "mask_strength": strength}),)


class ConditioningZeroOut:
    """Zeros of the same shapes (cond and pooled output)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"conditioning": ("CONDITIONING",)}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "zero_out"
    CATEGORY = "advanced/conditioning"

    def zero_out(self, conditioning: Conditioning) -> tuple[Conditioning]:
        out = []
        for cond, opts in conditioning:
            new = dict(opts)
            if new.get("pooled_output") is not None:
                new["pooled_output"] = torch.zeros_like(new["pooled_output"])
            out.append([torch.zeros_like(cond), new])
        return (out,)


class ConditioningSetTimestepRange:
    """Apply a conditioning only between two fractions of the sampling run (0 = start)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "conditioning": ("CONDITIONING",),
            "start": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001}),
            "end": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001}),
        }}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "set_range"
    CATEGORY = "advanced/conditioning"

    def set_range(self, conditioning: Conditioning, start: float, end: float) -> tuple[Conditioning]:
        return (_set_values(conditioning, {"start_percent": start, "end_percent": end}),)


NODE_CLASS_MAPPINGS = {
    "CLIPTextEncode": CLIPTextEncode,
    "CLIPSetLastLayer": CLIPSetLastLayer,
    "ConditioningCombine": ConditioningCombine,
    "ConditioningAverage": ConditioningAverage,
    "ConditioningConcat": ConditioningConcat,
    "ConditioningSetArea": ConditioningSetArea,
    "ConditioningSetAreaPercentage": ConditioningSetAreaPercentage,
    "ConditioningSetAreaStrength": ConditioningSetAreaStrength,
    "ConditioningSetMask": ConditioningSetMask,
    "ConditioningZeroOut": ConditioningZeroOut,
    "ConditioningSetTimestepRange": ConditioningSetTimestepRange,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "CLIPTextEncode": "CLIP Text Encode (Prompt)",
    "CLIPSetLastLayer": "CLIP Set Last Layer",
    "ConditioningCombine": "Conditioning (Combine)",
    "ConditioningAverage": "Conditioning (Average)",
    "ConditioningConcat": "Conditioning (Concat)",
    "ConditioningSetArea": "Conditioning (Set Area)",
    "ConditioningSetAreaPercentage": "Conditioning (Set Area with Percentage)",
    "ConditioningSetMask": "Conditioning (Set Mask)",
}
