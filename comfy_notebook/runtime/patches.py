"""Weight patches (LoRA, weight diffs) and ModelRef, the cheap cloneable handle that carries them.

A ``ModelRef`` is ComfyUI's ModelPatcher idea without its module reference: it points at a
:class:`~comfy_notebook.runtime.manager.ManagedModel` (which owns the weights) and holds only its
small patch tensors.  Patches are applied when the manager puts the base on the device for this
ref, and removed when another clone of the same base takes the device.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Union

import torch
from torch import Tensor

from comfy_notebook.errors import ComfyNotebookError

if TYPE_CHECKING:
    from comfy_notebook.runtime.manager import ManagedModel

__all__ = ["DiffPatch", "LoraPatch", "ModelRef", "Patch", "PatchShapeError", "SlicePatch", "apply_patches",
           "patched_fp32"]

_uids = itertools.count(1)


class PatchShapeError(ComfyNotebookError, ValueError):
    """A patch does not fit the weight it targets."""


@dataclass(frozen=True, eq=False)
class LoraPatch:
    """``W + strength * (alpha / rank) * up @ down`` (conv LoRA: both flattened to 2-D).

    ``up``: [out, rank] or [out, rank, 1, 1]; ``down``: [rank, in] or [rank, in, kh, kw].
    ``alpha`` None means scale 1.
    """

    up: Tensor
    down: Tensor
    alpha: float | None = None
    strength: float = 1.0
    uid: int = field(default_factory=lambda: next(_uids), compare=False)

    def delta(self, shape: torch.Size, device: torch.device) -> Tensor:
        """The fp32 weight delta for a weight of ``shape`` on ``device``."""
        rank = self.down.shape[0]
        scale = 1.0 if self.alpha is None else float(self.alpha) / rank
        up = self.up.to(device=device, dtype=torch.float32).flatten(1)  # [out, rank]
        down = self.down.to(device=device, dtype=torch.float32).flatten(1)  # [rank, in*kh*kw]
        if up.shape[1] != rank:
            raise PatchShapeError(
                f"LoRA up {tuple(self.up.shape)} and down {tuple(self.down.shape)} disagree on the "
                "rank; expected up [out, r, ...] and down [r, in, ...]. Fix: check the LoRA file."
            )
        out = up @ down  # [out, in*kh*kw]
        if out.numel() != shape.numel():
            raise PatchShapeError(
                f"LoRA product has shape {tuple(out.shape)}, expected {shape.numel()} elements for "
                f"weight {tuple(shape)}. Fix: the LoRA was made for a different model."
            )
        return out.reshape(shape) * (self.strength * scale)


@dataclass(frozen=True, eq=False)
class DiffPatch:
    """``W + strength * diff`` (full weight difference, e.g. ``.diff`` keys)."""

    diff: Tensor
    strength: float = 1.0
    uid: int = field(default_factory=lambda: next(_uids), compare=False)

    def delta(self, shape: torch.Size, device: torch.device) -> Tensor:
        """The fp32 weight delta for a weight of ``shape`` on ``device``."""
        if self.diff.shape != shape:
            raise PatchShapeError(
                f"diff patch has shape {tuple(self.diff.shape)}, expected {tuple(shape)}. "
                "Fix: the patch was made for a different model."
            )
        return self.diff.to(device=device, dtype=torch.float32) * self.strength


@dataclass(frozen=True, eq=False)
class SlicePatch:
    """A patch of a slice of a fused weight: ``W[offset:offset+size] (along dim) += strength * inner``.

    Used where a LoRA was made for separate projections that our checkpoint-named model fuses
    (diffusers' Flux ``to_q``/``to_k``/``to_v`` -> ``qkv``; ComfyUI's ``(key, (dim, offset, size))``).
    """

    inner: LoraPatch | DiffPatch
    dim: int
    offset: int
    size: int
    strength: float = 1.0
    uid: int = field(default_factory=lambda: next(_uids), compare=False)

    def delta(self, shape: torch.Size, device: torch.device) -> Tensor:
        """The fp32 weight delta for a weight of ``shape`` on ``device`` (zero outside the slice)."""
        if self.offset < 0 or self.offset + self.size > shape[self.dim]:
            raise PatchShapeError(
                f"slice {self.offset}:{self.offset + self.size} of dim {self.dim} does not fit weight "
                f"{tuple(shape)}. Fix: the patch was made for a different model.")
        part_shape = torch.Size([*shape[:self.dim], self.size, *shape[self.dim + 1:]])
        out = torch.zeros(shape, device=device, dtype=torch.float32)
        out.narrow(self.dim, self.offset, self.size).copy_(self.inner.delta(part_shape, device) * self.strength)
        return out


Patch = Union[LoraPatch, DiffPatch, SlicePatch]  # noqa: UP007


def patched_fp32(weight: Tensor, patches: Iterable[Patch]) -> Tensor:
    """``weight`` with ``patches`` applied in order, as a new fp32 tensor.

    Each patch first scales the weight so far by its ``strength_model`` (1 unless set: the
    model merges' ``W = strength_model * W + strength * W2``, ComfyUI's ``calculate_weight``
    order), then adds its delta.
    """
    acc = weight.to(torch.float32, copy=True)  # [*shape] fp32
    for patch in patches:
        scale = getattr(patch, "strength_model", 1.0)
        if scale != 1.0:
            acc *= scale
        acc += patch.delta(weight.shape, weight.device)
    return acc


def apply_patches(weight: Tensor, patches: Iterable[Patch]) -> Tensor:
    """Return a new tensor: ``weight`` patched (see :func:`patched_fp32`), in weight's dtype."""
    return patched_fp32(weight, patches).to(weight.dtype)


class ModelRef:
    """A light handle onto a managed model plus a set of weight patches.

    Cloning is cheap: clones share the base model (and so its weights); only the patch tensors
    belong to the ref.  ``patches_id`` identifies the patch set, so that the manager knows when
    the weights on the device must be re-patched.
    """

    __slots__ = ("__weakref__", "_patches", "base", "holder", "patches_id")

    def __init__(
        self,
        base: ManagedModel,
        patches: Mapping[str, tuple[Patch, ...]] | None = None,
        *,
        holder: str | None = None,
    ) -> None:
        self.base = base
        self._patches = MappingProxyType(dict(patches or {}))
        self.patches_id: tuple = tuple(
            sorted((k, tuple(p.uid for p in v)) for k, v in self._patches.items())
        )
        self.holder = holder
        base._track(self)

    @property
    def patches(self) -> Mapping[str, tuple[Patch, ...]]:
        """Parameter name -> the patches applied to it, in order."""
        return self._patches

    def clone(self, *, holder: str | None = None) -> ModelRef:
        """A new ref onto the same base with the same patches."""
        return ModelRef(self.base, self._patches, holder=holder or self.holder)

    def with_patches(
        self, patches: Mapping[str, Patch | Iterable[Patch]], strength: float = 1.0
    ) -> ModelRef:
        """A new clone with ``patches`` added, each scaled by ``strength``.

        Parameter names must be names of the base module's parameters; others raise, so that
        nothing is silently ignored (use :func:`comfy_notebook.runtime.lora.lora_patches` to
        split a LoRA into known and unknown keys first).
        """
        known = self.base.parameter_names()
        bad = sorted(k for k in patches if k not in known)
        if bad:
            raise PatchShapeError(
                f"{len(bad)} patch key(s) are not parameters of model {self.base.name!r}: "
                f"{bad[:5]}{' ...' if len(bad) > 5 else ''}. Fix: map the keys to the model's "
                "parameter names (e.g. with lora_patches) before patching."
            )
        merged = {k: tuple(v) for k, v in self._patches.items()}
        for key, value in patches.items():
            items = (value,) if hasattr(value, "delta") else tuple(value)
            scaled = tuple(replace(p, strength=p.strength * strength, uid=next(_uids)) for p in items)
            merged[key] = merged.get(key, ()) + scaled
        return ModelRef(self.base, merged, holder=self.holder)

    @property
    def name(self) -> str:
        """The base model's name."""
        return self.base.name

    def __repr__(self) -> str:
        extra = f", {len(self._patches)} patched weights" if self._patches else ""
        return f"ModelRef({self.base.name!r}{extra})"

