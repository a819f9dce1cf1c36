"""Model merging nodes: ModelMerge{Simple,Blocks,Subtract,Add,SD1,SDXL}, CLIPMerge{Simple,
Subtract,Add} and CheckpointSave.

Names, inputs, defaults and formulas follow ComfyUI (Comfy-Org/ComfyUI@a125cd8,
``comfy_extras/nodes_model_merging.py`` and ``nodes_model_merging_model_specific.py``):

- Simple / Blocks / SD1 / SDXL: ``W = ratio * W1 + (1 - ratio) * W2`` (ratio 1 keeps model1);
- Subtract: ``W = multiplier * (W1 - W2)``; Add: ``W = W1 + W2``;
- per-block ratios apply to weights whose UNet name starts with the input's name (the longest
  matching name wins; others take the first ratio).

Merges are patches on the shared bases (:mod:`comfy_notebook.runtime.merge`); nothing is copied
until ``CheckpointSave`` writes the merged weights.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from typing import Any

from comfy_notebook.errors import NodeError
from comfy_notebook.families import SD1, SDXL
from comfy_notebook.nodes._services import folders, services
from comfy_notebook.runtime.merge import block_ratio, checkpoint_state_dict, merge_refs
from comfy_notebook.runtime.values import ClipValue, ModelValue, VAEValue

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]

CATEGORY = "advanced/model_merging"
_RATIO = ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01})
_MULTIPLIER = ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01})

# The per-block names are family facts (comfy_notebook/families: ``Family.merge_blocks``).
SD1_MERGE_BLOCKS = SD1.merge_blocks
SDXL_MERGE_BLOCKS = SDXL.merge_blocks


def _clip_skip(key: str) -> bool:
    return key.endswith((".position_ids", ".logit_scale"))


def _merge_model(model1: ModelValue, model2: ModelValue, strengths: Any) -> ModelValue:
    ref = merge_refs(model1.ref, model2.ref, strengths, what="MODEL")
    return replace(model1, ref=ref)


def _merge_clip(clip1: ClipValue, clip2: ClipValue, strengths: Any) -> ClipValue:
    """Each text encoder of clip1 merged with clip2's encoder of the same name (others kept)."""
    refs = {name: merge_refs(ref, clip2.refs[name], strengths, skip=_clip_skip, what=f"CLIP {name}")
            if name in clip2.refs else ref for name, ref in clip1.refs.items()}
    return replace(clip1, refs=refs)


class ModelMergeSimple:
    """``ratio * model1 + (1 - ratio) * model2`` (model1's other settings are kept)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"model1": ("MODEL",), "model2": ("MODEL",), "ratio": _RATIO}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "merge"
    CATEGORY = CATEGORY

    def merge(self, model1: ModelValue, model2: ModelValue, ratio: float) -> tuple[ModelValue]:
        return (_merge_model(model1, model2, lambda key: (1.0 - ratio, ratio)),)


class ModelMergeSubtract:
    """``multiplier * (model1 - model2)``: with an Add after it, moves a model by a difference."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"model1": ("MODEL",), "model2": ("MODEL",), "multiplier": _MULTIPLIER}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "merge"
    CATEGORY = CATEGORY

    def merge(self, model1: ModelValue, model2: ModelValue, multiplier: float) -> tuple[ModelValue]:
        return (_merge_model(model1, model2, lambda key: (-multiplier, multiplier)),)


class ModelMergeAdd:
    """``model1 + model2``."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"model1": ("MODEL",), "model2": ("MODEL",)}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "merge"
    CATEGORY = CATEGORY

    def merge(self, model1: ModelValue, model2: ModelValue) -> tuple[ModelValue]:
        return (_merge_model(model1, model2, lambda key: (1.0, 1.0)),)


class ModelMergeBlocks:
    """Per-block ``ratio * model1 + (1 - ratio) * model2``; inputs name UNet key prefixes."""

    BLOCKS: tuple[str, ...] = ("input", "middle", "out")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"model1": ("MODEL",), "model2": ("MODEL",),
                             **{name: _RATIO for name in cls.BLOCKS}}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "merge"
    CATEGORY = CATEGORY

    def merge(self, model1: ModelValue, model2: ModelValue, **ratios: float) -> tuple[ModelValue]:
        missing = [b for b in self.BLOCKS if b not in ratios]
        if missing:
            raise NodeError(f"missing ratio inputs {missing}", node_type=type(self).__name__,
                            input_name=missing[0], expected="a FLOAT 0..1", received="nothing",
                            fix="set every block ratio")
        ordered = {b: float(ratios[b]) for b in self.BLOCKS}
        default = ordered[self.BLOCKS[0]]  # ComfyUI: the first ratio input

        def strengths(key: str) -> tuple[float, float]:
            r = block_ratio(key, ordered, default)
            return 1.0 - r, r

        return (_merge_model(model1, model2, strengths),)


class ModelMergeSD1(ModelMergeBlocks):
    """Per-block merge of two SD1/SD2 UNets (ComfyUI's block names)."""

    BLOCKS = SD1_MERGE_BLOCKS
    CATEGORY = "advanced/model_merging/model_specific"


class ModelMergeSDXL(ModelMergeBlocks):
    """Per-block merge of two SDXL UNets (ComfyUI's block names)."""

    BLOCKS = SDXL_MERGE_BLOCKS
    CATEGORY = "advanced/model_merging/model_specific"


class CLIPMergeSimple:
    """``ratio * clip1 + (1 - ratio) * clip2`` (position ids and logit scale are clip1's)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"clip1": ("CLIP",), "clip2": ("CLIP",), "ratio": _RATIO}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "merge"
    CATEGORY = CATEGORY

    def merge(self, clip1: ClipValue, clip2: ClipValue, ratio: float) -> tuple[ClipValue]:
        return (_merge_clip(clip1, clip2, lambda key: (1.0 - ratio, ratio)),)


class CLIPMergeSubtract:
    """``multiplier * (clip1 - clip2)``."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"clip1": ("CLIP",), "clip2": ("CLIP",), "multiplier": _MULTIPLIER}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "merge"
    CATEGORY = CATEGORY

    def merge(self, clip1: ClipValue, clip2: ClipValue, multiplier: float) -> tuple[ClipValue]:
        return (_merge_clip(clip1, clip2, lambda key: (-multiplier, multiplier)),)


class CLIPMergeAdd:
    """``clip1 + clip2``."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"clip1": ("CLIP",), "clip2": ("CLIP",)}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "merge"
    CATEGORY = CATEGORY

    def merge(self, clip1: ClipValue, clip2: ClipValue) -> tuple[ClipValue]:
        return (_merge_clip(clip1, clip2, lambda key: (1.0, 1.0)),)


def save_checkpoint_file(path: str, model: ModelValue, clip: ClipValue | None, vae: VAEValue | None,
                         metadata: dict[str, str]) -> None:
    """Write MODEL/CLIP/VAE as one single-file checkpoint in the family's layout, as ComfyUI
    saves it (what CheckpointLoaderSimple reads back)."""
    import torch
    from safetensors.torch import save_file

    family = model.family
    layout = getattr(family, "checkpoint_layout", {})
    refs = {"unet": model.ref, **(dict(clip.refs) if clip is not None else {}),
            **({"vae": vae.ref} if vae is not None else {})}
    missing = sorted(name for name in refs if name not in layout)
    if missing:
        title = getattr(family, "title", "this model")
        raise NodeError(f"saving a {title} checkpoint is not supported yet (no single-file layout "
                        f"for {missing})", node_type="CheckpointSave", input_name="model",
                        expected="an SD1, SD2 or SDXL model with its own text encoders",
                        received=title, fix="keep the merge as a workflow instead of a file")
    extra = {}
    sampling = model.model_sampling
    if getattr(sampling, "prediction", "eps") == "v_prediction":  # ComfyUI's marker keys
        extra["v_pred"] = torch.tensor([])
        if getattr(getattr(sampling, "schedule", None), "zsnr", False):
            extra["ztsnr"] = torch.tensor([])
    sd = checkpoint_state_dict({name: (ref, *layout[name]) for name, ref in refs.items()}, extra)
    tmp = path + ".partial"
    save_file(sd, tmp, metadata=metadata)
    os.replace(tmp, path)  # never leave a half-written checkpoint under the final name


def checkpoint_metadata(model: ModelValue, title: str, prompt: dict[str, Any] | None,
                        extra_pnginfo: dict[str, Any] | None) -> dict[str, str]:
    """ComfyUI's metadata: a modelspec block for SDXL, the prediction key, prompt and workflow JSON."""
    metadata: dict[str, str] = {}
    arch = getattr(model.family, "modelspec_architecture", None)
    if arch is not None:
        metadata.update({"modelspec.architecture": arch, "modelspec.sai_model_spec": "1.0.0",
                         "modelspec.implementation": "sgm", "modelspec.title": title})
    prediction = getattr(model.model_sampling, "prediction", None) or model.family.prediction
    key = {"eps": "epsilon", "v": "v", "v_prediction": "v"}.get(prediction)
    if key is not None:
        metadata["modelspec.predict_key"] = key
    metadata["prompt"] = json.dumps(prompt) if prompt is not None else ""
    for name, value in (extra_pnginfo or {}).items():
        metadata[name] = json.dumps(value)
    return metadata


class CheckpointSave:
    """Save MODEL, CLIP and VAE (merged or patched) as a checkpoint under output/."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"model": ("MODEL",), "clip": ("CLIP",), "vae": ("VAE",),
                             "filename_prefix": ("STRING", {"default": "checkpoints/ComfyUI"})},
                "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    RETURN_TYPES: tuple[str, ...] = ()
    FUNCTION = "save"
    OUTPUT_NODE = True
    CATEGORY = CATEGORY

    def save(self, model: ModelValue, clip: ClipValue, vae: VAEValue,
             filename_prefix: str = "checkpoints/ComfyUI", prompt: dict[str, Any] | None = None,
             extra_pnginfo: dict[str, Any] | None = None) -> dict[str, Any]:
        full_dir, filename, counter, subfolder = folders(services()).save_path(filename_prefix)
        name = f"{filename}_{counter:05}_.safetensors"
        while (full_dir / name).exists():
            counter += 1
            name = f"{filename}_{counter:05}_.safetensors"
        metadata = checkpoint_metadata(model, f"{filename} {counter}", prompt, extra_pnginfo)
        save_checkpoint_file(str(full_dir / name), model, clip, vae, metadata)
        return {"ui": {"checkpoints": [{"filename": name, "subfolder": subfolder, "type": "output"}]}}


NODE_CLASS_MAPPINGS: dict[str, type] = {
    "ModelMergeSimple": ModelMergeSimple,
    "ModelMergeBlocks": ModelMergeBlocks,
    "ModelMergeSubtract": ModelMergeSubtract,
    "ModelMergeAdd": ModelMergeAdd,
    "ModelMergeSD1": ModelMergeSD1,
    "ModelMergeSDXL": ModelMergeSDXL,
    "CLIPMergeSimple": CLIPMergeSimple,
    "CLIPMergeSubtract": CLIPMergeSubtract,
    "CLIPMergeAdd": CLIPMergeAdd,
    "CheckpointSave": CheckpointSave,
}

NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {"CheckpointSave": "Save Checkpoint"}
