"""Qwen-Image-Edit's text-encode nodes: the prompt with its input images, and reference latents.

``TextEncodeQwenImageEdit`` (one image) and ``TextEncodeQwenImageEditPlus`` (up to three), with
ComfyUI's names, inputs and behaviour (``comfy_extras/nodes_qwen.py``,
comfyanonymous/ComfyUI@01ec967e):

- the image (each image) is resized with area interpolation to about 1024 x 1024 pixels (Edit)
  or 384 x 384 (Edit Plus, for the vision tower), aspect ratio kept, and read by the text
  encoder's vision tower where its ``<|image_pad|>`` is in the prompt;
- with a VAE, the image is also encoded into a *reference latent* (Edit: the 1024 x 1024 image;
  Edit Plus: resized again to about 1024 x 1024 with sides rounded to multiples of 8), appended
  to the conditioning's ``reference_latents`` (raw VAE latents; the model's family brings them
  into its latent space, as ComfyUI's ``extra_conds``);
- Edit Plus numbers its images by input slot (``Picture 1: ...``, ``Picture 3: ...``) before the
  prompt and uses its own template; Edit without an image is plain Qwen-Image text encoding.

The recipe (templates, dropped tokens, image tokens) is :mod:`comfy_notebook.families.qwen_image_text`.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from comfy_notebook.errors import NodeError
from comfy_notebook.families import qwen_image_text as recipe
from comfy_notebook.nodes.image import common_upscale
from comfy_notebook.runtime.values import ClipValue

Conditioning = list[list[Any]]


def _resized(image: torch.Tensor, pixels: int, multiple: int = 1) -> torch.Tensor:
    """IMAGE ``[B, H, W, C]`` resized (area) to about ``pixels`` pixels, sides rounded (to ``multiple``)."""
    samples = image.movedim(-1, 1)
    h, w = samples.shape[2], samples.shape[3]
    scale = math.sqrt(pixels / (w * h))
    width = round(w * scale / multiple) * multiple
    height = round(h * scale / multiple) * multiple
    return common_upscale(samples, width, height, "area", "disabled").movedim(1, -1)


def _check_clip(clip: Any) -> ClipValue:
    if clip is None:
        raise NodeError("clip input is invalid: None", input_name="clip", expected="a CLIP",
                        received=None, fix="connect the CLIP output of a CLIPLoader")
    refs = getattr(clip, "refs", {})
    if recipe.ENCODER_NAME not in refs:
        raise NodeError(
            "this node needs Qwen-Image's text encoder (Qwen2.5-VL-7B)", input_name="clip",
            expected=f"a CLIP with the {recipe.ENCODER_NAME} encoder", received=f"a CLIP with {sorted(refs)}",
            fix="load text_encoders/qwen_2.5_vl_7b*.safetensors with CLIPLoader type 'qwen_image'")
    return clip  # type: ignore[no-any-return]


def _encode(clip: ClipValue, text: str, images: list[torch.Tensor], template: str | None) -> Conditioning:
    tokens = recipe.qwen_image_tokens(text, images, template)
    cond, pooled = clip.encode_tokens({recipe.ENCODER_NAME: tokens})
    return [[cond, {"pooled_output": pooled}]]


def _with_reference_latents(conditioning: Conditioning, latents: list[torch.Tensor]) -> Conditioning:
    """ComfyUI's ``conditioning_set_values(..., {"reference_latents": latents}, append=True)``."""
    out = []
    for cond, opts in conditioning:
        opts = dict(opts)
        opts["reference_latents"] = [*opts.get("reference_latents", []), *latents]
        out.append([cond, opts])
    return out


_CATEGORY = "advanced/conditioning"


class TextEncodeQwenImageEdit:
    """A Qwen-Image-Edit prompt with its input image (vision tokens) and reference latent."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "clip": ("CLIP",),
                "prompt": ("STRING", {"multiline": True, "dynamicPrompts": True}),
            },
            "optional": {"vae": ("VAE",), "image": ("IMAGE",)},
        }

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"
    CATEGORY = _CATEGORY

    def encode(self, clip: ClipValue, prompt: str, vae: Any = None, image: torch.Tensor | None = None
               ) -> tuple[Conditioning]:
        clip = _check_clip(clip)
        images: list[torch.Tensor] = []
        ref = None
        if image is not None:
            resized = _resized(image, recipe.EDIT_VAE_PIXELS)[..., :3]
            images = [resized]
            if vae is not None:
                ref = vae.encode(resized)
        conditioning = _encode(clip, prompt, images, None)
        if ref is not None:
            conditioning = _with_reference_latents(conditioning, [ref])
        return (conditioning,)


class TextEncodeQwenImageEditPlus:
    """A Qwen-Image-Edit (2509+) prompt with up to three images, numbered by input slot."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "clip": ("CLIP",),
                "prompt": ("STRING", {"multiline": True, "dynamicPrompts": True}),
            },
            "optional": {"vae": ("VAE",), "image1": ("IMAGE",), "image2": ("IMAGE",), "image3": ("IMAGE",)},
        }

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"
    CATEGORY = _CATEGORY

    def encode(self, clip: ClipValue, prompt: str, vae: Any = None, image1: torch.Tensor | None = None,
               image2: torch.Tensor | None = None, image3: torch.Tensor | None = None) -> tuple[Conditioning]:
        clip = _check_clip(clip)
        images_vl: list[torch.Tensor] = []
        refs: list[torch.Tensor] = []
        image_prompt = ""
        for i, image in enumerate((image1, image2, image3)):
            if image is None:
                continue
            images_vl.append(_resized(image, recipe.EDIT_PLUS_VL_PIXELS)[..., :3])
            if vae is not None:
                refs.append(vae.encode(_resized(image, recipe.EDIT_PLUS_VAE_PIXELS, multiple=8)[..., :3]))
            image_prompt += recipe.picture_prompt(i + 1)
        conditioning = _encode(clip, image_prompt + prompt, images_vl, recipe.EDIT_PLUS_TEMPLATE)
        if refs:
            conditioning = _with_reference_latents(conditioning, refs)
        return (conditioning,)


NODE_CLASS_MAPPINGS = {
    "TextEncodeQwenImageEdit": TextEncodeQwenImageEdit,
    "TextEncodeQwenImageEditPlus": TextEncodeQwenImageEditPlus,
}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
