"""Qwen-Image's text-encoding recipe: Qwen2.5-VL-7B, its chat templates, what is dropped, images.

The family half of Qwen-Image's conditioning; ``families/qwen_image.py`` (the Qwen-Image family)
lists :data:`QWEN25_7B` as its text encoder and claims the files :func:`qwen25vl_component`
recognises.  Stable names other modules use: :data:`QWEN25_7B`, :data:`ENCODER_NAME`,
:data:`CLIP_TYPES`, :data:`TEMPLATE`, :data:`EDIT_TEMPLATE`, :data:`EDIT_PLUS_TEMPLATE`,
:func:`picture_prompt`, :func:`template_end`, :func:`prompt_text`, :func:`qwen_image_tokens`,
:func:`qwen25vl_kind`, :func:`qwen25vl_component`, and the Edit nodes' image sizes
(:data:`EDIT_VAE_PIXELS`, :data:`EDIT_PLUS_VL_PIXELS`).

ComfyUI facts (comfyanonymous/ComfyUI: ``comfy/text_encoders/qwen_image.py`` @72e42846,
``comfy/text_encoders/llama.py`` and ``qwen_vl.py`` @0ac74268, ``comfy/sd.py``
``detect_te_model`` / ``load_text_encoder_state_dicts``, ``comfy_extras/nodes_qwen.py`` @01ec967e;
Comfy-Org/ComfyUI@a125cd84 for the same files a release earlier):

- the prompt goes into a chat template (:data:`TEMPLATE`; with images and no template of the
  caller's, :data:`EDIT_TEMPLATE`, whose user turn starts with one image's vision tokens) — unless
  it already starts with ``<|im_start|>`` or ``<|start_header_id|>``, which is taken as written;
- Qwen's tokenizer, one row, no start/end tokens, no padding, no weight syntax;
- each ``<|image_pad|>`` (151655), in order, stands for one image's vision-tower tokens (as many
  pads as images are replaced; images without a pad are ignored);
- the conditioning is the *final normed* hidden state of the language model (ComfyUI's
  ``layer="last"``) with the template's front dropped: everything before the second
  ``<|im_start|>`` and, when ``user\\n`` follows it, those two tokens too (:func:`template_end`);
  no pooled output;
- ``CLIPLoader`` recognises a Qwen2.5-VL-7B file by its 512-wide ``k_proj`` bias (3B: 256) and
  builds Qwen-Image's encoder under every ``type`` but ``hunyuan_image``; the example uses
  ``qwen_image``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from comfy_notebook.families.base import Component, TextEncoderSpec
from comfy_notebook.models.qwen25vl import IMAGE_PAD_ID, Qwen25VLConfig, Qwen25VLEncoder

__all__ = [
    "CLIP_TYPES",
    "EDIT_PLUS_TEMPLATE",
    "EDIT_PLUS_VAE_PIXELS",
    "EDIT_PLUS_VL_PIXELS",
    "EDIT_TEMPLATE",
    "EDIT_VAE_PIXELS",
    "ENCODER_NAME",
    "IMAGE_PAD_ID",
    "QWEN25_7B",
    "TEMPLATE",
    "picture_prompt",
    "prompt_text",
    "qwen25vl_component",
    "qwen25vl_kind",
    "qwen_image_tokens",
    "template_end",
]

#: the encoder's component name (ComfyUI's ``qwen25_7b`` token key)
ENCODER_NAME = "qwen25_7b"
PAD_TOKEN = 151643  # <|endoftext|>
IM_START = 151644  # <|im_start|>
USER = 872  # "user"
NEWLINE = 198  # "\n"

TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, "
    "text, spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}"
    "<|im_end|>\n<|im_start|>assistant\n")
_EDIT_SYSTEM = (
    "<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, "
    "objects, background), then explain how the user's text instruction should alter or modify the "
    "image. Generate a new image that meets the user's requirements while maintaining consistency "
    "with the original input where appropriate.<|im_end|>\n<|im_start|>user\n")
#: the template when images come with the prompt (``TextEncodeQwenImageEdit``): one image first
EDIT_TEMPLATE = _EDIT_SYSTEM + "<|vision_start|><|image_pad|><|vision_end|>{}<|im_end|>\n<|im_start|>assistant\n"
#: ``TextEncodeQwenImageEditPlus``'s template: the images are in the prompt (:func:`picture_prompt`)
EDIT_PLUS_TEMPLATE = _EDIT_SYSTEM + "{}<|im_end|>\n<|im_start|>assistant\n"

#: ``TextEncodeQwenImageEdit``: the image is resized (area) to about this many pixels for both
#: the vision tower and the VAE's reference latent
EDIT_VAE_PIXELS = 1024 * 1024
#: ``TextEncodeQwenImageEditPlus``: about this many pixels for the vision tower...
EDIT_PLUS_VL_PIXELS = 384 * 384
#: ... and this many, each side a multiple of 8, for the VAE's reference latent
EDIT_PLUS_VAE_PIXELS = 1024 * 1024

#: ``CLIPLoader`` types that build this encoder from a Qwen2.5-VL-7B file: the examples'
#: ``qwen_image`` and the loader's default ``stable_diffusion`` (ComfyUI builds it for every type
#: but ``hunyuan_image``; the other types name other families here)
CLIP_TYPES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"qwen_image": (ENCODER_NAME,), "stable_diffusion": (ENCODER_NAME,)})

_RAW_PREFIXES = ("<|im_start|>", "<|start_header_id|>")


def picture_prompt(index: int) -> str:
    """The text ``TextEncodeQwenImageEditPlus`` puts before the prompt for image ``index`` (1-based)."""
    return f"Picture {index}: <|vision_start|><|image_pad|><|vision_end|>"


def prompt_text(text: str, images: int = 0, template: str | None = None) -> str:
    """The full text tokenized for ``text``: in ``template`` (default :data:`TEMPLATE`, or
    :data:`EDIT_TEMPLATE` when ``images`` > 0), or as written when it starts with a chat header."""
    if text.startswith(_RAW_PREFIXES):
        return text
    if template is None:
        template = EDIT_TEMPLATE if images else TEMPLATE
    return template.format(text)


def template_end(ids: Sequence[int]) -> int:
    """How many tokens ComfyUI drops from the front of the hidden states of ``ids``.

    Everything before the second ``<|im_start|>`` (the user turn; the only one if there is one),
    and that header too (``<|im_start|>user\n``, three tokens) when ``user`` and a newline follow
    it.  Without any ``<|im_start|>`` ComfyUI's index stays -1: a row starting with ``user\n``
    loses those two tokens, any other keeps only its last token.
    """
    end, seen = -1, 0
    for i, tok in enumerate(ids):
        if tok == IM_START and seen < 2:
            end, seen = i, seen + 1
    if len(ids) > end + 3 and ids[end + 1] == USER and ids[end + 2] == NEWLINE:
        end += 3
    return end if end >= 0 else len(ids) + end


QWEN25_7B = TextEncoderSpec(ENCODER_NAME, layer=None, final_norm=True, pad_token=PAD_TOKEN,
                            tokenizer="qwen", template=prompt_text, drop_front=template_end)
"""Qwen-Image's text encoder: the final normed state of Qwen2.5-VL-7B, template front dropped."""


def qwen_image_tokens(text: str, images: Sequence[Tensor] = (), template: str | None = None) -> Any:
    """One prompt for :data:`QWEN25_7B` with ``images`` (IMAGE tensors) for its image pads.

    ComfyUI's ``QwenImageTokenizer.tokenize_with_weights(text, images=..., llama_template=...)``:
    an ``LLMTokens`` row whose ``model_kwargs`` carry the images to the encoder's forward.
    """
    from comfy_notebook.models.llm_prompt import LLMTokens, get_llm_tokenizer, tokenize_llm_prompt

    row = tokenize_llm_prompt(get_llm_tokenizer("qwen"), prompt_text(text, len(images), template), None)
    pads = sum(1 for t in row.ids if t == IMAGE_PAD_ID)
    used = tuple(images[:pads])
    return LLMTokens(row.ids, {"images": used} if used else {})


def qwen25vl_kind(sd: Mapping[str, Any], prefix: str = "") -> str | None:
    """``"qwen25_7b"`` for a Qwen2.5-VL-7B language model in ``sd``, ``"qwen25_3b"`` for the 3B
    (OmniGen2's), None for anything else.

    As ComfyUI's ``detect_te_model``: a ``k_proj`` bias (Qwen2.5; Qwen3 has none, Gemma has
    ``post_feedforward_layernorm``) whose width, 256, names the 3B; any other width is read as
    the 7B (512 at real size; the tiny test files are narrower).
    """
    if f"{prefix}model.layers.0.post_feedforward_layernorm.weight" in sd:
        return None  # Gemma
    key = f"{prefix}model.layers.0.self_attn.k_proj.bias"
    if key not in sd or f"{prefix}model.layers.0.self_attn.q_norm.weight" in sd:
        return None
    return "qwen25_3b" if int(sd[key].shape[0]) == 256 else "qwen25_7b"


def qwen25vl_component(sd: Mapping[str, Any], prefix: str = "") -> Component:
    """The encoder component of a ``text_encoders/qwen_2.5_vl_7b*`` file (bf16, fp8 or scaled fp8;
    fp8 weights stay fp8; a file without ``visual.`` keys gives a text-only encoder)."""
    return Component(ENCODER_NAME, "clip", prefix, Qwen25VLConfig.from_state_dict(sd, prefix), "hf",
                     architecture=Qwen25VLEncoder, dtypes=(torch.bfloat16, torch.float32))
