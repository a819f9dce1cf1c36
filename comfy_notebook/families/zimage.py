"""Z-Image (Turbo and base): files, Qwen3-4B text-encoding recipe, latent format, model sampling.

ComfyUI facts (comfyanonymous/ComfyUI@00855133 ``comfy/text_encoders/z_image.py``;
``comfy/supported_models.py`` ``ZImage(Lumina2)``, ``comfy/model_base.py`` ``Lumina2``,
``comfy/ldm/lumina/model.py`` ``NextDiT``, ``comfy/sd.py`` ``detect_te_model`` and
``load_text_encoder_state_dicts``; the example at comfyanonymous/ComfyUI_examples@f9431bb
``z_image/``):

- files: ``diffusion_models/z_image_turbo_bf16.safetensors`` (the Lumina-2-style NextDiT of
  width 3840; keys without prefix, see ``models/zimage.py``), ``text_encoders/qwen_3_4b*.safetensors``
  (Qwen3-4B, Hugging Face keys ``model.*``), ``vae/ae.safetensors`` (the Flux VAE);
- latent: Flux's (16 channels, ``(z - 0.1159) * 0.3611``);
- model sampling: discrete flow, ``shift`` 3.0, ``multiplier`` 1.0 (timestep = sigma);
  ``ModelSamplingAuraFlow`` replaces the shift.  ComfyUI's NextDiT feeds ``1 - timestep`` to
  the transformer and returns its output negated: the transformer's ``t`` is 1 at the clean
  image and its output is minus the flow velocity (diffusers' pipeline does the same);
- text: the prompt in the chat template ``<|im_start|>user\\n{}<|im_end|>\\n<|im_start|>assistant\\n``,
  Qwen's tokenizer, no start/end tokens, no padding, no weight syntax; the hidden state of the
  second-to-last decoder layer (index -2, no final norm) is the caption; no pooled output;
- ``CLIPLoader``: ComfyUI tells the encoder from the file (``model.layers.0.self_attn.q_norm``
  and a 2560-wide ``post_attention_layernorm``: Qwen3-4B) and builds Z-Image's for every
  ``type`` but ``flux``/``flux2`` (Flux.2 Klein's); the example uses ``lumina2``;
- memory: ``memory_usage_factor`` 2.8; inference dtypes bf16 then fp32.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from comfy_notebook.families._survey import Survey
from comfy_notebook.families.base import Component, Detected, Family, TextEncoderSpec
from comfy_notebook.families.flux import FLUX_LATENT
from comfy_notebook.models.qwen3 import Qwen3Config, Qwen3Encoder
from comfy_notebook.models.zimage import ZImage, ZImageConfig
from comfy_notebook.sampling.flow import ModelSamplingDiscreteFlow

__all__ = [
    "CHAT_TEMPLATE",
    "SHIFT",
    "ZIMAGE",
    "ZImageDiffusion",
    "ZImageFamily",
    "detect_zimage",
    "qwen3_component",
    "qwen3_kind",
]

SHIFT = 3.0
CHAT_TEMPLATE = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
PAD_TOKEN = 151643  # <|endoftext|>
_PREFIXES = ("", "model.diffusion_model.")
# widths of the other released Qwen3 sizes (0.6B, 1.7B/2B, 8B): other models' encoders
_OTHER_QWEN3_WIDTHS = {1024: "qwen3_06b", 2048: "qwen3_2b", 4096: "qwen3_8b"}


def detect_zimage(sd: Mapping[str, Any]) -> tuple[ZImageConfig, str] | None:
    """``(config, key prefix)`` when ``sd`` holds a Z-Image transformer, else None.

    Z-Image's NextDiT has the learned pad tokens (``x_pad_token``, ``cap_pad_token``) that
    Lumina 2's lacks; the fused ``qkv`` and ``cap_embedder`` mark the NextDiT.
    """
    for p in _PREFIXES:
        if (f"{p}x_pad_token" in sd and f"{p}cap_embedder.1.weight" in sd
                and f"{p}layers.0.attention.qkv.weight" in sd):
            return ZImageConfig.from_state_dict(sd, p), p
    return None


def qwen3_kind(sd: Mapping[str, Any], prefix: str = "") -> str | None:
    """``"qwen3_4b"`` for a Qwen3-4B text encoder (any width but the other Qwen3 sizes'),
    the other sizes' names, or None when ``sd`` holds no Qwen3 (as ComfyUI's ``detect_te_model``)."""
    norm = f"{prefix}model.layers.0.post_attention_layernorm.weight"
    if norm not in sd or f"{prefix}model.layers.0.self_attn.q_norm.weight" not in sd:
        return None
    return _OTHER_QWEN3_WIDTHS.get(int(sd[norm].shape[0]), "qwen3_4b")


def qwen3_component(sd: Mapping[str, Any], prefix: str = "") -> Component:
    """The Qwen3-4B text-encoder component of a ``text_encoders/qwen_3_4b*`` file (fp8 stays fp8)."""
    return Component("qwen3_4b", "clip", prefix, Qwen3Config.from_state_dict(sd, prefix + "model."),
                     "hf", architecture=Qwen3Encoder, dtypes=(torch.bfloat16, torch.float32))


class ZImageDiffusion(ZImage):
    """The Z-Image transformer under ComfyUI's calling convention (``comfy/ldm/lumina/model.py``).

    ``forward(x [B, 16, h, w], timestep [B] = sigma, context [B, L, 2560]) -> -velocity``: the
    latent is padded to whole patches (circular, as ``pad_to_patch_size``) and cropped back, the
    transformer gets ``1 - sigma`` and its output is negated, so the flow model sampling's
    ``denoised = x - sigma * out`` holds.  Extra ComfyUI inputs (``attention_mask``,
    ``num_tokens``) are accepted and unused: conditioning rows here are never padded.
    """

    takes_linear = True  # the loader may pass a cast-on-forward linear layer (fp8 weights)

    @staticmethod
    def ignored_keys(key: str) -> bool:
        """File keys without a parameter: ``norm_final`` (built by ComfyUI's NextDiT, never used)."""
        return key == "norm_final.weight"

    def forward(self, x: Tensor, timestep: Tensor, context: Tensor,  # type: ignore[override]
                attention_mask: Tensor | None = None, num_tokens: Any = None, **_: Any) -> Tensor:
        p = self.config.patch_size
        h, w = x.shape[-2:]
        ph, pw = (-h) % p, (-w) % p
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="circular")
        out = super().forward(x, 1.0 - timestep, context)
        return -out[..., :h, :w]


# -- the family (the families seam) ---------------------------------------------------------------
_QWEN3_4B = TextEncoderSpec("qwen3_4b", layer=-2, final_norm=False, pad_token=PAD_TOKEN,
                            tokenizer="qwen", template=CHAT_TEMPLATE)


class ZImageFamily(Family):
    """Z-Image: the NextDiT from diffusion_models/, Qwen3-4B from text_encoders/, the Flux VAE."""

    name = "zimage"
    title = "Z-Image"
    latent_format = FLUX_LATENT
    text_encoders = (_QWEN3_4B,)
    # ComfyUI builds Z-Image's encoder for a Qwen3-4B file under any type but flux/flux2;
    # "lumina2" is the example's, "stable_diffusion" the loader's default
    clip_types = MappingProxyType({"lumina2": ("qwen3_4b",), "stable_diffusion": ("qwen3_4b",)})
    memory_factor = 2.8 * 2  # ComfyUI's memory_usage_factor 2.8 (SD1's is 1.0; ours 2.0)

    def matches(self, survey: Survey) -> bool:
        return detect_zimage(survey.sd) is not None

    def detect(self, survey: Survey) -> Detected:
        found = detect_zimage(survey.sd)
        assert found is not None
        config, prefix = found
        comps = {"unet": Component("unet", "unet", prefix, config, "zimage", architecture=ZImageDiffusion,
                                   dtypes=(torch.bfloat16, torch.float32))}
        if survey.vae_prefix is not None:
            comps["vae"] = survey.vae()
        if qwen3_kind(survey.sd, "text_encoders.qwen3_4b.transformer.") == "qwen3_4b":
            comps["qwen3_4b"] = qwen3_component(survey.sd, "text_encoders.qwen3_4b.transformer.")
        return Detected(self, comps)

    def text_encoder_component(self, survey: Survey) -> Component | None:
        if qwen3_kind(survey.sd) != "qwen3_4b":
            return None
        return qwen3_component(survey.sd)

    def model_sampling(self, prediction: str | None = None, zsnr: bool = False) -> Any:
        """Discrete flow, shift 3.0, multiplier 1.0 (``supported_models.ZImage.sampling_settings``)."""
        return ModelSamplingDiscreteFlow(shift=SHIFT, multiplier=1.0)


ZIMAGE = ZImageFamily()
