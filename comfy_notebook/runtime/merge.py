"""Model merging as weight patches on shared bases, and saving a (merged) checkpoint.

A merge never copies a model: ``ModelMergeSimple(model1, model2, r)`` is model1's
:class:`~comfy_notebook.runtime.patches.ModelRef` plus, for every weight model2 shares, a
:class:`ModelWeightPatch` meaning ``W = r * W1 + (1 - r) * W2`` — ComfyUI's
``add_patches({k: model2 weight}, 1 - r, r)`` (Comfy-Org/ComfyUI@a125cd8,
``comfy_extras/nodes_model_merging.py``, ``comfy/model_patcher.py``, ``comfy/lora.py
calculate_weight``).  The patch reads model2's host weight (with model2's own patches, e.g. a
LoRA) only when the manager patches model1 onto the device, so merges are as cheap to make and
cache as LoRA clones, and changing a ratio never reloads either base.  A full copy of the merged
weights exists only while :func:`checkpoint_state_dict` writes a file.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from comfy_notebook.runtime.patches import ModelRef, patched_fp32

__all__ = [
    "ModelWeightPatch",
    "block_ratio",
    "checkpoint_state_dict",
    "effective_weights",
    "merge_refs",
]

_uids = itertools.count(1 << 40)  # apart from patches.py's counter; only uniqueness matters


@dataclass(frozen=True, eq=False)
class ModelWeightPatch:
    """``W <- strength_model * W + strength * W_source`` with ``W_source`` read from another model.

    ``source`` is the other model's ref (its own patches included, in fp32, as ComfyUI's nested
    patch lists); weights whose shapes differ are not added (ComfyUI warns and skips them) but
    still scaled by ``strength_model``, as ComfyUI does.
    """

    source: ModelRef
    key: str
    strength: float = 1.0
    strength_model: float = 1.0
    uid: int = field(default_factory=lambda: next(_uids), compare=False)

    def source_weight(self, device: torch.device) -> Tensor:
        """The source model's effective weight for ``key`` in fp32 on ``device``."""
        w = self.source.base.host_weight(self.key).to(device)
        return patched_fp32(w, self.source.patches.get(self.key, ()))

    def delta(self, shape: torch.Size, device: torch.device) -> Tensor:
        """The fp32 term added after the ``strength_model`` scaling."""
        if self.strength == 0.0:
            return torch.zeros(shape, dtype=torch.float32, device=device)
        w = self.source_weight(device)
        if w.shape != shape:
            return torch.zeros(shape, dtype=torch.float32, device=device)
        return w * self.strength


def merge_refs(target: ModelRef, source: ModelRef,
               strengths: Callable[[str], tuple[float, float]], *,
               skip: Callable[[str], bool] = lambda key: False, what: str = "model") -> ModelRef:
    """A clone of ``target`` with a :class:`ModelWeightPatch` for every weight it shares with ``source``.

    ``strengths(key) -> (strength, strength_model)``.  Weights present in both models with
    different shapes are reported in one warning (as ComfyUI logs them) and merged as
    ComfyUI merges them: only scaled.
    """
    t_shapes = target.base.parameter_shapes()
    s_shapes = source.base.parameter_shapes()
    patches: dict[str, tuple[ModelWeightPatch, ...]] = {}
    mismatched = []
    for key in s_shapes:
        if key not in t_shapes or skip(key):
            continue
        if s_shapes[key] != t_shapes[key]:
            mismatched.append(f"{key} {tuple(t_shapes[key])} != {tuple(s_shapes[key])}")
        strength, strength_model = strengths(key)
        patches[key] = (ModelWeightPatch(source, key, strength, strength_model),)
    if mismatched:
        warnings.warn(
            f"merging {what} {source.name!r} into {target.name!r}: {len(mismatched)} weight(s) "
            f"differ in shape and were not merged (only scaled, as ComfyUI does): "
            f"{'; '.join(mismatched[:5])}{' ...' if len(mismatched) > 5 else ''}",
            stacklevel=2)
    return target.with_patches(patches, 1.0)


def block_ratio(key: str, ratios: Mapping[str, float], default: float) -> float:
    """The ratio of the longest prefix in ``ratios`` that ``key`` starts with (ComfyUI's rule)."""
    best, size = default, 0
    for prefix, ratio in ratios.items():
        if key.startswith(prefix) and len(prefix) > size:
            best, size = ratio, len(prefix)
    return best


def effective_weights(ref: ModelRef, keys: Iterable[str] | None = None) -> dict[str, Tensor]:
    """Parameter name -> the weight ``ref`` computes with (patches applied), in the base dtype.

    Host tensors; unpatched weights are the master copies themselves (no copy).
    """
    base = ref.base
    out = {}
    for key in sorted(base.parameter_names() if keys is None else keys):
        w = base.host_weight(key)
        patches = ref.patches.get(key)
        out[key] = patched_fp32(w, patches).to(w.dtype) if patches else w
    return out


def checkpoint_state_dict(parts: Mapping[str, tuple[ModelRef, str] | tuple[ModelRef, str, str]],
                          extra: Mapping[str, Tensor] | None = None) -> dict[str, Any]:
    """The single-file checkpoint of ``parts``: prefix + key -> effective weight.

    ``parts`` maps a part name to ``(ref, key prefix[, layout])``, e.g. ``{"unet": (ref,
    "model.diffusion_model.")}``; layout ``"openclip"`` writes a text encoder back in OpenCLIP's
    names (fused q/k/v, ``text_projection`` as ``[D, P]``), as some families' files store it.  Tensors
    are made contiguous for safetensors.
    """
    sd: dict[str, Any] = {}
    for ref, prefix, *layout in parts.values():
        weights = effective_weights(ref)
        if layout and layout[0] == "openclip":
            from comfy_notebook.models.convert import hf_to_openclip

            weights = hf_to_openclip(weights)
        for key, w in weights.items():
            sd[prefix + key] = w.contiguous()
    sd.update(extra or {})
    return sd
