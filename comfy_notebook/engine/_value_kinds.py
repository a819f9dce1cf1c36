"""Checks of constant values passed where a node expects a structured type (IMAGE, CLIP, ...).

ComfyUI's API JSON cannot carry a tensor or a model, so it never needs these checks; real mode
can pass anything, and a string where a CLIP goes would otherwise fail deep inside the node
with an unrelated message.  Duck-typed (``ndim`` / ``shape``): the engine does not import torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["STRUCTURED_TYPES", "tensor_problem", "value_kind_problem"]

STRUCTURED_TYPES = frozenset({
    "MODEL", "CLIP", "VAE", "CONDITIONING", "LATENT", "IMAGE", "MASK", "CLIP_VISION",
    "CLIP_VISION_OUTPUT", "CONTROL_NET", "STYLE_MODEL", "GLIGEN", "UPSCALE_MODEL", "SAMPLER",
    "SIGMAS", "NOISE", "GUIDER",
})
_SCALARS = (str, bytes, int, float, bool)


def _shape(value: Any) -> tuple[int, ...] | None:
    """The shape of a tensor-like value, else None."""
    shape = getattr(value, "shape", None)
    if shape is None or not hasattr(value, "ndim"):
        return None
    return tuple(int(d) for d in shape)


def _received(value: Any) -> str:
    """What arrived, in a few words."""
    shape = _shape(value)
    return f"a tensor of shape {shape}" if shape is not None else f"a {type(value).__name__}"


def tensor_problem(typ: str, value: Any, *, tensors_only: bool = False) -> tuple[str, str, str] | None:
    """``(expected, received, fix)`` when ``value`` is not a valid IMAGE / MASK / LATENT, else None.

    ``tensors_only``: judge only values that hold a tensor-like (anything with ``shape`` and
    ``ndim``), so node packs with their own IMAGE objects keep working.
    """
    shape = _shape(value)
    if tensors_only and shape is None and not (
        typ == "LATENT" and isinstance(value, Mapping) and _shape(value.get("samples")) is not None
    ):
        return None
    if typ == "IMAGE" and (shape is None or len(shape) != 4 or shape[-1] not in (1, 3, 4)):
        fix = ("add the batch dimension with t[None]" if shape is not None and len(shape) == 3 and shape[-1] in (1, 3, 4)
               else "images are channels-last: use t.permute(0, 2, 3, 1) on a [B,C,H,W] tensor"
               if shape is not None and len(shape) == 4 else "pass a [B,H,W,C] float tensor or a node's IMAGE output")
        return "a float tensor [B,H,W,C] with C = 3", _received(value), fix
    if typ == "MASK" and (shape is None or len(shape) not in (2, 3)):
        return "a float tensor [B,H,W] or [H,W]", _received(value), "pass a node's MASK output"
    if typ == "LATENT":
        if shape is not None:
            return "a dict {'samples': tensor [B,4,H/8,W/8]}", _received(value), "wrap it as {'samples': t}"
        if not isinstance(value, Mapping) or "samples" not in value:
            return "a dict {'samples': tensor [B,4,H/8,W/8]}", _received(value), "pass a node's LATENT output"
        inner = _shape(value["samples"])
        if inner is None or len(inner) not in (4, 5):
            return ("a dict whose 'samples' is a tensor [B,4,H/8,W/8]",
                    f"'samples' = {_received(value['samples'])}", "pass a node's LATENT output")
    return None


def value_kind_problem(typ: Any, value: Any) -> str | None:
    """Why a constant ``value`` cannot be a ``typ`` input, or None when it may be.

    Only structured types are checked: a scalar (string, number, bool, None) is never a model,
    conditioning or tensor; IMAGE, MASK and LATENT
    constants also get their shape checked.
    """
    if not isinstance(typ, str) or typ not in STRUCTURED_TYPES:
        return None
    if value is None or isinstance(value, _SCALARS):
        return (f"a {typ} is the output of a node (for example a loader or encoder), not a "
                f"{type(value).__name__}; check the argument order")
    if typ in ("IMAGE", "MASK", "LATENT"):
        problem = tensor_problem(typ, value)
        if problem is not None:
            expected, received, fix = problem
            return f"expected {expected}, received {received}; {fix}"
    return None
