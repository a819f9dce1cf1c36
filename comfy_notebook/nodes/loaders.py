"""Loader nodes: checkpoints, separate VAEs and LoRAs (ComfyUI's names, inputs and outputs)."""

from __future__ import annotations

import warnings
from typing import Any

from comfy_notebook.families import load_checkpoint_values, load_vae_value
from comfy_notebook.nodes._services import (
    file_fingerprint,
    folders,
    listing,
    model_manager,
    services,
)
from comfy_notebook.runtime.values import ClipValue, ModelValue


def _embedding_dirs() -> tuple[str, ...]:
    try:
        return tuple(str(p) for p in folders().paths("embeddings"))
    except Exception:
        return ()


class CheckpointLoaderSimple:
    """Load a single-file checkpoint (LDM layout) as MODEL, CLIP and VAE."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"ckpt_name": (listing("checkpoints"), {
            "tooltip": "The checkpoint (model) to load, from models/checkpoints."})}}

    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    OUTPUT_TOOLTIPS = (
        "The model used for denoising latents.",
        "The CLIP model used for encoding text prompts.",
        "The VAE model used for encoding and decoding images to and from latent space.",
    )
    FUNCTION = "load_checkpoint"
    CATEGORY = "loaders"
    DESCRIPTION = "Loads a diffusion model checkpoint; diffusion models denoise latents."

    @classmethod
    def IS_CHANGED(cls, ckpt_name: str) -> str:
        return file_fingerprint("checkpoints", ckpt_name)

    def load_checkpoint(self, ckpt_name: str) -> tuple[Any, Any, Any]:
        svc = services()
        path = folders(svc).resolve("checkpoints", ckpt_name)
        return load_checkpoint_values(model_manager(svc), path, name=str(ckpt_name).rsplit(".", 1)[0],
                                      embedding_dirs=_embedding_dirs())


class VAELoader:
    """Load a separate VAE file (e.g. vae-ft-mse-840000-ema-pruned.safetensors)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"vae_name": (listing("vae"),)}}

    RETURN_TYPES = ("VAE",)
    FUNCTION = "load_vae"
    CATEGORY = "loaders"

    @classmethod
    def IS_CHANGED(cls, vae_name: str) -> str:
        return file_fingerprint("vae", vae_name)

    def load_vae(self, vae_name: str) -> tuple[Any]:
        svc = services()
        path = folders(svc).resolve("vae", vae_name)
        return (load_vae_value(model_manager(svc), path, name="vae:" + str(vae_name).rsplit(".", 1)[0]),)


# LoRA key prefixes of text-encoder weights (kohya, diffusers/PEFT, LDM checkpoint names, ComfyUI)
_TEXT_ENCODER_PREFIXES = ("lora_te", "text_encoder", "te_", "cond_stage_model.", "text_encoders.",
                          "clip_l.", "clip_g.", "clip_h.", "conditioner.")


def _unet_layout(model: ModelValue | None) -> Any:
    """The block layout of ``model``'s UNet (read from its file's shapes), or None.

    kohya / diffusers LoRA names count blocks per level, so they map onto LDM names only with
    the model's real layout (a checkpoint with fewer levels or res blocks would otherwise get
    patches on the wrong blocks).
    """
    source = model.ref.base.source if model is not None else None
    if not source:
        return None
    from comfy_notebook.runtime.lora import UNetLayout

    return UNetLayout.from_config(model.unet_config) if model.unet_config is not None else None


def _check_fit(lora_name: str, part: str, shapes: dict[str, Any], patches: dict[str, Any]) -> None:
    """Refuse, at load time, a LoRA whose weights do not fit the model (no compute: meta device)."""
    import torch

    from comfy_notebook.errors import NodeError
    from comfy_notebook.runtime.patches import PatchShapeError

    for key, value in patches.items():
        try:
            for patch in (value if isinstance(value, tuple) else (value,)):
                patch.delta(shapes[key], torch.device("meta"))
        except PatchShapeError as exc:
            raise NodeError(
                f"LoRA {lora_name} does not fit this {part} at weight '{key}' ({exc.args[0].split('. Fix')[0]})",
                input_name="lora_name", expected="a LoRA made for this checkpoint's model family",
                received=lora_name, fix="use a LoRA trained for this model's family",
            ) from None


def _lora(model: ModelValue | None, clip: ClipValue | None, lora_name: str,
          strength_model: float, strength_clip: float) -> tuple[Any, Any]:
    from comfy_notebook.errors import NodeError
    from comfy_notebook.families import lora_mismatch
    from comfy_notebook.runtime.lora import load_lora_file, lora_patches

    path = folders().resolve("loras", lora_name)
    lora_sd = load_lora_file(path)
    family = model.family if model is not None else clip.family if clip is not None else None
    other = lora_mismatch(lora_sd, family)
    if other is not None:
        raise NodeError(
            f"LoRA {lora_name} is made for {other.title} (an {other.title} LoRA); the model is {family.title}",
            input_name="lora_name", expected=f"a LoRA trained for {family.title}", received=lora_name,
            fix=f"pick a {family.title} LoRA, or load a {other.title} checkpoint for this LoRA")
    unet_keys = model.ref.base.parameter_names() if model is not None else set()
    encoders = None
    if clip is not None:
        encoders = clip.family.lora_text_encoders({e: r.base.parameter_names() for e, r in clip.refs.items()})
    own = getattr(model.family, "unet_lora_patches", None) if model is not None else None
    unet_patches, clip_patches, unknown = lora_patches(lora_sd, unet_keys=set() if own else unet_keys,
                                                       unet_layout=None if own else _unet_layout(model),
                                                       text_encoders=encoders)
    if own is not None:  # the family maps its diffusion model's LoRA key styles itself (e.g. fused qkv)
        unet_patches, unet_unknown = own(lora_sd, model.unet_config, unet_keys)
        unknown = sorted(set(unknown) & set(unet_unknown))
    if clip is None:  # LoraLoaderModelOnly: text-encoder keys are expected and not "unknown"
        unknown = [k for k in unknown if not k.startswith(_TEXT_ENCODER_PREFIXES)]
    if unknown:
        warnings.warn(
            f"LoRA {lora_name}: {len(unknown)} key(s) matched no weight and were not applied: "
            f"{unknown[:8]}{' ...' if len(unknown) > 8 else ''}",
            stacklevel=3,
        )
    if model is not None:
        _check_fit(lora_name, "MODEL", model.ref.base.parameter_shapes(), unet_patches)
    if clip is not None:
        for enc, patches in clip_patches.items():
            _check_fit(lora_name, "CLIP", clip.refs[enc].base.parameter_shapes(), patches)
    new_model = model.with_patches(unet_patches, strength_model) if model is not None and strength_model else model
    new_clip = clip.with_patches(clip_patches, strength_clip) if clip is not None and strength_clip else clip
    return new_model, new_clip


class LoraLoader:
    """Apply a LoRA to MODEL and CLIP as weight patches (the base weights are shared)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "model": ("MODEL", {"tooltip": "The diffusion model the LoRA will be applied to."}),
            "clip": ("CLIP", {"tooltip": "The CLIP model the LoRA will be applied to."}),
            "lora_name": (listing("loras"), {"tooltip": "The name of the LoRA."}),
            "strength_model": ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}),
            "strength_clip": ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}),
        }}

    RETURN_TYPES = ("MODEL", "CLIP")
    FUNCTION = "load_lora"
    CATEGORY = "loaders"
    DESCRIPTION = "LoRAs modify diffusion and CLIP models, altering how latents are denoised."

    @classmethod
    def IS_CHANGED(cls, lora_name: str, **_: Any) -> str:
        return file_fingerprint("loras", lora_name)

    def load_lora(self, model: ModelValue, clip: ClipValue, lora_name: str,
                  strength_model: float, strength_clip: float) -> tuple[Any, Any]:
        if strength_model == 0 and strength_clip == 0:
            return (model, clip)
        return _lora(model, clip, lora_name, strength_model, strength_clip)


class LoraLoaderModelOnly:
    """Apply a LoRA to MODEL only."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "model": ("MODEL",),
            "lora_name": (listing("loras"),),
            "strength_model": ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}),
        }}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load_lora_model_only"
    CATEGORY = "loaders"

    @classmethod
    def IS_CHANGED(cls, lora_name: str, **_: Any) -> str:
        return file_fingerprint("loras", lora_name)

    def load_lora_model_only(self, model: ModelValue, lora_name: str, strength_model: float) -> tuple[Any]:
        if strength_model == 0:
            return (model,)
        return (_lora(model, None, lora_name, strength_model, 0.0)[0],)


NODE_CLASS_MAPPINGS = {
    "CheckpointLoaderSimple": CheckpointLoaderSimple,
    "VAELoader": VAELoader,
    "LoraLoader": LoraLoader,
    "LoraLoaderModelOnly": LoraLoaderModelOnly,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "CheckpointLoaderSimple": "Load Checkpoint",
    "VAELoader": "Load VAE",
    "LoraLoader": "Load LoRA",
    "LoraLoaderModelOnly": "LoraLoaderModelOnly",
}
