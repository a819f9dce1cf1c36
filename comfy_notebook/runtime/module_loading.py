"""Load one model (Flux transformer, T5 encoder, ...) from a separate weights file, fp8-aware.

The recipe of ``runtime/loading.py`` (build on ``meta``, memory-mapped file, strict keys,
``load_state_dict(assign=True)``) for architectures whose constructor takes a ``linear`` factory,
plus ComfyUI's weight-dtype policy: weights stay in the file's dtype when it is the compute dtype
(no copy at all on CPU), are cast once to the compute dtype otherwise, and stay (or are cast
tensor by tensor to) fp8 when the file is fp8 or ``weight_dtype`` asks for it; fp8 models run
through cast-on-forward linear layers (``runtime/fp8.py``).

Files that mix dtypes (ComfyUI's "scaled fp8" text encoders: fp8 linear weights, bf16 embeddings,
norms and vision tower, a float32 ``scale_weight`` scalar per linear) are stored tensor by tensor
under the default ``weight_dtype``: fp8 tensors stay fp8, scalars (fp8 scales) stay float32,
the rest goes to the compute dtype.

"Scaled fp8" files (a ``scaled_fp8`` marker key; ComfyUI ``model_detection.py`` / ``sd.py`` /
``ops.py`` at a125cd8) load as ComfyUI loads them: every linear layer is a ``ScaledFP8Linear``
whose weight and bias are kept in the marker's fp8 dtype (float32 marker: e4m3fn) with the
file's float32 ``scale_weight`` / ``scale_input`` (ones where absent), the other tensors in the
compute dtype; ``weight_dtype`` is ignored.  The fp8 matmul is used on fp8-capable devices
unless the marker has two elements (ComfyUI's "no fp8 optimisations" flag).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from comfy_notebook.errors import ModelLoadError
from comfy_notebook.runtime.fp8 import (
    ScaledFP8Linear,
    fp8_matmul_supported,
    is_fp8,
    linear_factory,
    scaled_linear_factory,
    storage_dtype,
)
from comfy_notebook.runtime.loading import _read_fast, open_state_dict

__all__ = ["file_weight_dtype", "load_module", "load_module_file"]


def file_weight_dtype(sd: Mapping[str, Tensor], keys: Iterable[str]) -> torch.dtype:
    """The dtype of the file's largest floating tensor among ``keys`` (its weights' dtype)."""
    best: tuple[int, torch.dtype] = (-1, torch.float32)
    for k in keys:
        t = sd[k]
        if t.is_floating_point() and t.numel() > best[0]:
            best = (t.numel(), t.dtype)
    return best[1]


def _listing(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return (shown + f", ... ({len(keys) - limit} more)") if len(keys) > limit else (shown or "none")


def _target(t: Tensor, store: torch.dtype, compute: torch.dtype, weight_dtype: str) -> torch.dtype:
    """The dtype one file tensor is kept in (see the module docstring; integers keep theirs)."""
    if not t.is_floating_point():
        return t.dtype
    if t.dim() == 0:  # a scale of a scaled fp8 file: fp8 or bf16 would round it
        return torch.float32
    if weight_dtype == "default":
        return t.dtype if is_fp8(t.dtype) else compute
    return store


def _stored(t: Tensor, store: torch.dtype, dev: torch.device) -> Tensor:
    """``t`` on ``dev`` in the storage dtype (floating tensors) or its own (integer, bool)."""
    target = store if t.is_floating_point() else t.dtype
    if is_fp8(t.dtype) and not is_fp8(target):
        t = t.to(torch.float32)  # fp8 -> fp16 has no direct CPU kernel everywhere
    return t.to(device=dev, dtype=target)


def load_module(
    model_cls: Callable[..., nn.Module],
    config: Any,
    sd: Mapping[str, Tensor],
    *,
    prefix: str = "",
    weight_dtype: str = "default",
    compute_dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    ignore: Callable[[str], bool] | None = None,
    what: str = "model",
    fp8_matmul: bool = True,
) -> nn.Module:
    """Build ``model_cls(config, linear=...)`` on meta and assign the file's tensors.

    Parameters
    ----------
    model_cls, config:
        The architecture and its sizes (read from the file's shapes by the caller).
    sd:
        The file's tensors (``open_state_dict``: memory-mapped, lazy).
    prefix:
        Key prefix of this model in the file (``"model.diffusion_model."`` in a full checkpoint).
    weight_dtype:
        ComfyUI's UNETLoader choice: ``default`` / ``fp8_e4m3fn`` / ``fp8_e4m3fn_fast`` / ``fp8_e5m2``.
    compute_dtype:
        Dtype of activations (default float32 on CPU, bfloat16 elsewhere).
    ignore:
        Keys (without prefix) present in the file but not in the module (e.g. a tied copy).
    fp8_matmul:
        Whether a scaled fp8 file may use the fp8 matmul (ComfyUI: diffusion models yes, text
        encoders no).

    The returned module has ``compute_dtype`` and ``storage_dtype`` attributes.
    """
    dev = torch.device(device)
    compute = compute_dtype or (torch.float32 if dev.type == "cpu" else torch.bfloat16)
    found = {k[len(prefix):]: k for k in sd if k.startswith(prefix)}
    if ignore is not None:
        found = {k: v for k, v in found.items() if not ignore(k)}
    marker = found.pop("scaled_fp8", None)
    scaled = None if marker is None else sd[marker]
    if scaled is not None:
        store = torch.float8_e4m3fn if scaled.dtype == torch.float32 else scaled.dtype
        linear = scaled_linear_factory(fast=fp8_matmul and scaled.numel() != 2 and fp8_matmul_supported(dev))
    else:
        store = storage_dtype(weight_dtype, file_weight_dtype(sd, found.values()), compute)
        kept_fp8 = (weight_dtype == "default" and not is_fp8(store)
                    and any(is_fp8(sd[f].dtype) for f in found.values()))
        linear = linear_factory(torch.float8_e4m3fn if kept_fp8 else store, compute,
                                fast=weight_dtype == "fp8_e4m3fn_fast", device=dev)
    with torch.device("meta"):
        model = model_cls(config, linear=linear)
    expected = model.state_dict()
    defaults: dict[str, Tensor] = {}
    in_linear: set[str] = set()
    if scaled is not None:  # scales absent from the file are ones; linear weights stay fp8
        for name, mod in model.named_modules():
            if isinstance(mod, ScaledFP8Linear):
                dot = f"{name}." if name else ""
                in_linear.update(f"{dot}{p}" for p, _ in mod.named_parameters(recurse=False))
                for buf in ("scale_weight", "scale_input"):
                    if f"{dot}{buf}" not in found:
                        defaults[f"{dot}{buf}"] = torch.ones((), dtype=torch.float32, device=dev)
    missing = sorted(set(expected) - set(found) - set(defaults))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        raise ModelLoadError(
            f"{what}: the file's keys do not match the architecture read from its shapes ({config}). "
            f"Missing ({len(missing)}): {_listing(missing)}; unexpected ({len(unexpected)}): "
            f"{_listing(unexpected)}. Fix: check that the file is the model the loader expects"
        )
    for k, like in expected.items():
        if k in defaults:
            continue
        shape = tuple(sd[found[k]].shape)
        if shape != tuple(like.shape):
            raise ModelLoadError(f"{what}: {k} has shape {shape} in the file, expected {tuple(like.shape)}")
    if scaled is not None:  # per tensor: fp8 linear layers, float32 scales, the rest in the compute dtype
        tensors = {}
        for k in expected:
            if k in defaults:
                tensors[k] = defaults[k]
                continue
            kind = store if k in in_linear else (torch.float32 if k.endswith(("scale_weight", "scale_input"))
                                                 else compute)
            tensors[k] = _stored(sd[found[k]], kind, dev)
    else:
        groups: dict[torch.dtype, dict[str, Tensor]] = {}
        for k, like in expected.items():
            groups.setdefault(_target(sd[found[k]], store, compute, weight_dtype), {})[k] = like
        tensors = {}
        for target, part in groups.items():
            # on CUDA: pinned, pipelined reads cast into the storage dtype on the device (runtime/fastread)
            got = _read_fast(sd, {k: found[k] for k in part}, part, target, dev)
            if got is None:  # the CPU (mmap: no copy when the dtype already fits), pickles, no room
                got = {k: _stored(sd[found[k]], target, dev) for k in part}
            tensors.update(got)
    model.load_state_dict(tensors, strict=True, assign=True)
    model.compute_dtype = compute  # type: ignore[assignment]
    model.storage_dtype = store  # type: ignore[assignment]
    return model.eval().requires_grad_(False)


def load_module_file(
    path: str | os.PathLike[str],
    model_cls: Callable[..., nn.Module],
    config_from_state_dict: Callable[..., Any],
    *,
    prefix: str = "",
    **kw: Any,
) -> nn.Module:
    """Open ``path``, read the config from its shapes and :func:`load_module` it."""
    sd = open_state_dict(path)
    try:
        config = config_from_state_dict(sd, prefix)
    except KeyError as exc:
        raise ModelLoadError(
            f"{path}: missing {exc} needed to read the {model_cls.__name__} sizes. "
            "Fix: check that the file holds that model") from exc
    kw.setdefault("what", f"{model_cls.__name__} in {path}")
    return load_module(model_cls, config, sd, prefix=prefix, **kw)
