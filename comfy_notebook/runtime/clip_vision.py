"""CLIP_VISION values: a handle onto a CLIP image tower owned by the model manager.

Loading reads a ``models/clip_vision`` file in the transformers key layout (what ComfyUI's
``clip_vision`` files hold, e.g. ``CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors``,
``clip_vision_g.safetensors``); encoding follows ComfyUI's ``clip_preprocess`` and
``ClipVisionModel.encode_image`` (Comfy-Org/ComfyUI@a125cd8 ``comfy/clip_vision.py``): resize
the shorter side to the tower's size (bicubic, antialiased) and centre-crop, or squash to a
square; round to 8-bit levels; normalise with CLIP's mean and std.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from comfy_notebook.errors import ModelLoadError, UnsupportedModelError
from comfy_notebook.runtime.manager import ModelManager
from comfy_notebook.runtime.patches import ModelRef

__all__ = ["CLIP_MEAN", "CLIP_STD", "ClipVisionOutput", "ClipVisionValue", "clip_preprocess",
           "load_clip_vision_value", "tower_state_dict"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_lock = threading.Lock()


def clip_preprocess(image: Tensor, size: int = 224, crop: bool = True) -> Tensor:
    """IMAGE ``[B, H, W, C]`` in 0..1 -> normalised pixels ``[B, 3, size, size]``."""
    image = image[..., :3].movedim(-1, 1)  # [B, 3, H, W]
    mean = torch.tensor(CLIP_MEAN, dtype=image.dtype, device=image.device).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=image.dtype, device=image.device).view(3, 1, 1)
    if image.shape[2] != size or image.shape[3] != size:
        if crop:
            scale = size / min(image.shape[2], image.shape[3])
            target = (round(scale * image.shape[2]), round(scale * image.shape[3]))
        else:
            target = (size, size)
        image = F.interpolate(image, size=target, mode="bicubic", antialias=True)
        top, left = (image.shape[2] - size) // 2, (image.shape[3] - size) // 2
        image = image[:, :, top:top + size, left:left + size]
    image = torch.clip(255.0 * image, 0, 255).round() / 255.0  # 8-bit levels, as ComfyUI
    return (image - mean) / std


class ClipVisionOutput:
    """CLIP_VISION_OUTPUT: ``image_embeds``, ``last_hidden_state``, ``penultimate_hidden_states``.

    Readable as attributes or items (``out["image_embeds"]``), as ComfyUI's ``Output`` is.
    """

    def __init__(self, **values: Tensor) -> None:
        self.__dict__.update(values)

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def __setitem__(self, key: str, value: Any) -> None:
        setattr(self, key, value)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in self.__dict__.items() if isinstance(v, Tensor))
        return f"<CLIP_VISION_OUTPUT {shapes}>"


@dataclass(frozen=True, eq=False)
class ClipVisionValue:
    """A CLIP_VISION: a handle onto a managed CLIP image tower."""

    ref: ModelRef
    manager: ModelManager = field(repr=False)
    image_size: int = 224

    def encode_image(self, image: Tensor, *, crop: bool = True) -> ClipVisionOutput:
        """IMAGE ``[B, H, W, C]`` -> :class:`ClipVisionOutput` (float32 on the CPU)."""
        def run(model: Any) -> Any:
            dtype = model.visual_projection.weight.dtype
            pixels = clip_preprocess(image.to(self.manager.device), self.image_size, crop)
            with torch.inference_mode():
                return model(pixels.to(dtype))

        out = self.manager.run(self.ref, run)
        return ClipVisionOutput(last_hidden_state=out.last_hidden_state.float().cpu(),
                                image_embeds=out.image_embeds.float().cpu(),
                                penultimate_hidden_states=out.penultimate_hidden_states.float().cpu())

    def __repr__(self) -> str:
        base = self.ref.base
        return f"<CLIP_VISION '{base.name}' {self.image_size}px on {base.where}>"


def tower_state_dict(sd: Mapping[str, Any], prefix: str = "", source: str = "") -> Mapping[str, Any]:
    """The image tower of ``sd`` under transformers names (ComfyUI's ``clip_vision.load``).

    A ``models/clip_vision`` file in the transformers layout is used as it is; an OpenAI CLIP /
    OpenCLIP image tower (``visual.transformer.resblocks.*``, or ``prefix`` + ``transformer.*``
    as in the unCLIP checkpoints' ``embedder.model.visual.``) is renamed through
    :class:`~comfy_notebook.models.convert.OpenCLIPVisionView`.
    """
    from comfy_notebook.models.convert import OpenCLIPVisionView

    if not prefix and "visual.transformer.resblocks.0.attn.in_proj_weight" in sd:
        prefix = "visual."
    if prefix + "transformer.resblocks.0.attn.in_proj_weight" in sd:
        return OpenCLIPVisionView(sd, prefix)
    if not prefix and "vision_model.embeddings.patch_embedding.weight" in sd:
        return sd
    where = f" under {prefix!r}" if prefix else ""
    raise UnsupportedModelError(
        f"{source or 'the file'} holds no CLIP vision tower{where} (no "
        "vision_model.embeddings.patch_embedding.weight, no visual.transformer.resblocks.*). "
        "Fix: choose a file from models/clip_vision (e.g. CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors).")


def _build(path: str, prefix: str = "") -> Any:
    from comfy_notebook.models.clip_vision import CLIPVisionConfig, CLIPVisionModel
    from comfy_notebook.runtime.loading import open_state_dict

    sd = tower_state_dict(open_state_dict(path), prefix, path)
    config = CLIPVisionConfig.from_state_dict(sd)
    with torch.device("meta"):
        model = CLIPVisionModel(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    if missing:
        raise ModelLoadError(f"{path}: {len(missing)} CLIP vision keys missing, e.g. {missing[:4]}. "
                             "Fix: the file is incomplete or not a CLIP vision model.")
    tensors = {k: sd[k].float().contiguous() for k in expected}
    model.load_state_dict(tensors, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def load_clip_vision_value(manager: ModelManager, path: str | os.PathLike[str], *,
                           name: str | None = None, prefix: str = "") -> ClipVisionValue:
    """``CLIPVisionLoader``: register the tower with ``manager`` (reused when already known).

    ``prefix``: where the tower lives in a larger file (``unCLIPCheckpointLoader``).
    """
    source = os.fspath(path)
    key = "clip_vision:" + (name or os.path.splitext(os.path.basename(source))[0])
    with _lock:
        if key in manager:
            managed = manager[key]
        else:
            managed = manager.register(key, lambda: _build(source, prefix), kind="clip",
                                       source=source, module=_build(source, prefix))
    size = int(managed.parameter_shapes()["vision_model.embeddings.position_embedding.weight"][0])
    patch = int(managed.parameter_shapes()["vision_model.embeddings.patch_embedding.weight"][-1])
    return ClipVisionValue(managed.ref(holder=key), manager, round((size - 1) ** 0.5) * patch)
