"""Model families: the only place that names one (see ``base.Family`` for the seam).

``FAMILIES`` is the ordered registry (the first family whose ``matches`` accepts a file
detects it); :func:`detect` is the one dispatch from a state dict to a :class:`Detected`;
:func:`get` finds a family by name.  Add a family: write its module, put its instance in
``FAMILIES`` before any family whose ``matches`` would also accept its files.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from comfy_notebook.errors import UnsupportedModelError
from comfy_notebook.families._load import (
    LoadedCheckpoint,
    load_checkpoint,
    load_checkpoint_values,
    load_clip_value,
    load_text_encoder,
    load_unet_value,
    load_vae,
    load_vae_value,
)
from comfy_notebook.families._survey import Survey, survey
from comfy_notebook.families.base import (
    HALF_DTYPES,
    VAE_DTYPES,
    Component,
    Detected,
    Family,
    LatentFormat,
    TextEncoderSpec,
)
from comfy_notebook.families.flux import FLUX, t5_component
from comfy_notebook.families.qwen_image import QWEN_IMAGE
from comfy_notebook.families.sd1 import SD1
from comfy_notebook.families.sd2 import SD2
from comfy_notebook.families.sd2_unclip import SD2_UNCLIP
from comfy_notebook.families.sdxl import SDXL, SDXL_REFINER
from comfy_notebook.families.wan import WAN21_LATENT, wan_vae_component, wan_vae_prefix
from comfy_notebook.families.zimage import ZIMAGE
from comfy_notebook.models.detect import describe, is_known_extra

__all__ = [
    "FAMILIES",
    "FLUX",
    "HALF_DTYPES",
    "QWEN_IMAGE",
    "SD1",
    "SD2",
    "SD2_UNCLIP",
    "SDXL",
    "SDXL_REFINER",
    "VAE_DTYPES",
    "WAN21_LATENT",
    "ZIMAGE",
    "Component",
    "Detected",
    "Family",
    "LatentFormat",
    "LoadedCheckpoint",
    "Survey",
    "TextEncoderSpec",
    "detect",
    "family_for_text_encoders",
    "get",
    "latent_format_for",
    "load_checkpoint",
    "load_checkpoint_values",
    "load_clip_value",
    "load_text_encoder",
    "load_unet_value",
    "load_vae",
    "load_vae_value",
    "lora_family",
    "lora_mismatch",
]

#: Detection order: most specific first.
FAMILIES: tuple[Family, ...] = (FLUX, ZIMAGE, QWEN_IMAGE, SD2_UNCLIP, SDXL_REFINER, SDXL, SD2, SD1)

# text-encoder files: width of a top-level transformers CLIP -> encoder name
_TEXT_ENCODER_WIDTHS = {768: "clip_l", 1024: "clip_h", 1280: "clip_g"}


def get(name: str) -> Family:
    """The family called ``name`` (``"sd1"``, ``"sdxl"``, ...)."""
    for f in FAMILIES:
        if f.name == name:
            return f
    raise KeyError(f"unknown model family {name!r}; known: {[f.name for f in FAMILIES]}")


def _text_encoder_file(s: Survey) -> Component | None:
    """A top-level transformers CLIP (``text_model.*``): which encoder it is, from its shapes."""
    if s.top_text_width is None:
        return None
    name = _TEXT_ENCODER_WIDTHS.get(s.top_text_width)
    if name is None:  # tiny test encoders: a projection marks CLIP-G, else CLIP-L
        name = "clip_g" if "text_projection.weight" in s.sd else "clip_l"
    activation = "quick_gelu" if name == "clip_l" else "gelu"
    return s.text_encoder(name, "", "hf", activation)


def detect(state_dict: Mapping[str, Any], *, source: str = "") -> Detected:
    """Detect the family and the components of a file from its keys and shapes.

    Parameters
    ----------
    state_dict:
        Key -> tensor (or anything with a ``.shape``): a full single-file checkpoint, a UNet
        file, a separate VAE or a text-encoder file.
    source:
        Where the keys came from (a path), used in messages.

    Returns
    -------
    Detected
        ``family`` is None for a separate VAE or text-encoder file.

    Raises
    ------
    UnsupportedModelError
        No known layout matches; the message names what was found.
    """
    s = survey(state_dict, source)
    extras = tuple(k for k in s.keys if is_known_extra(k))
    for family in FAMILIES:
        if family.matches(s):
            found = family.detect(s)
            if found.components:
                return Detected(found.family, found.components, found.sampling, extras, source)
    comps: dict[str, Component] = {}
    wan = wan_vae_prefix(s.sd)
    if s.vae_prefix is not None:
        comps["vae"] = s.vae()
    elif wan is not None:  # the Wan-2.1 VAE of Qwen-Image (vae/qwen_image_vae.safetensors)
        comps["vae"] = wan_vae_component(s.sd, wan)
    te = _text_encoder_file(s) or next(
        (c for f in FAMILIES if (c := f.text_encoder_component(s)) is not None), None)
    if te is not None:
        comps[te.name] = te
    elif "encoder.block.0.layer.1.DenseReluDense.wi_1.weight" in s.sd and "shared.weight" in s.sd:
        comps["t5xxl"] = t5_component(s.sd)  # T5 v1.1 (gated GELU): Flux's and SD3's T5-XXL
    if comps:
        return Detected(None, comps, {}, extras, source)
    where = f" in {source}" if source else ""
    hint = ""
    if any(k.startswith(("down_blocks.", "unet.down_blocks.", "encoder.down_blocks.")) for k in s.keys):
        hint = " (this looks like a diffusers-format file; use the original single-file layout)"
    raise UnsupportedModelError(
        f"unknown model file{where}: no UNet (input_blocks.*), VAE (encoder/decoder.*) or text "
        f"encoder (text_model.*, OpenCLIP transformer.resblocks.*) of a known family "
        f"({', '.join(f.title for f in FAMILIES)}) found{hint}; found {describe(s.keys)}")


def family_for_text_encoders(clip_type: str, names: tuple[str, ...]) -> Family:
    """The family whose CLIP is made of encoders ``names`` under loader ``type`` ``clip_type``."""
    wanted = tuple(sorted(names))
    for f in FAMILIES:
        got = f.clip_types.get(clip_type)
        if got is not None and tuple(sorted(got)) == wanted:
            return f
    known = {t: [f.clip_types[t] for f in FAMILIES if t in f.clip_types]
             for t in sorted({t for f in FAMILIES for t in f.clip_types})}
    raise UnsupportedModelError(
        f"text encoders {list(names)} with type {clip_type!r} make no supported model's CLIP; "
        f"supported combinations: {known}. Fix: pick the files and type of one of these")


def latent_format_for(channels: int, family: str | None = None) -> LatentFormat | None:
    """The latent format of ``family`` or, without one, the first registered with ``channels`` channels.

    A LATENT carries no family, so views that preview one without its model use this default.
    """
    if family is not None:
        return get(family).latent_format
    for f in reversed(FAMILIES):  # the oldest family first: SD1's factors for plain 4-channel latents
        if f.latent_format.channels == channels:
            return f.latent_format
    return None


def lora_family(lora_sd: Mapping[str, Any]) -> Family | None:
    """The family a LoRA was trained for, when its keys or shapes say so (else None).

    Marker prefixes (kohya's ``lora_te1_``/``lora_te2_``, diffusers' ``text_encoder_2.``) name
    SDXL; otherwise the width of a cross-attention key projection's input (``attn2.to_k``
    down-projection) is compared with each family's released context width.
    """
    for f in FAMILIES:
        if f.lora_markers and any(k.startswith(f.lora_markers) for k in lora_sd):
            return f
    for key, t in lora_sd.items():
        if "attn2" in key and "to_k" in key and key.endswith(("lora_down.weight", "lora_A.weight")):
            width = int(t.shape[-1])
            return next((f for f in FAMILIES if f.context_dim == width), None)
    return None


def lora_mismatch(lora_sd: Mapping[str, Any], family: Family | None) -> Family | None:
    """The LoRA's family when it is known and is not ``family`` (SDXL LoRAs also fit the refiner's
    text-encoder prefixes, so base and refiner count as one), else None."""
    found = lora_family(lora_sd)
    if found is None or family is None or found is family:
        return None
    kin = {f.name for f in FAMILIES if isinstance(f, type(found)) or isinstance(found, type(f))}
    return None if family.name in kin else found
