"""Load model files into our modules without a second copy of the weights.

The recipe (gpt-fast ``_load_model``): build the module on the ``meta`` device, memory-map the
file, and hand the file-backed tensors to ``load_state_dict(assign=True)``; only a dtype or device
change makes a copy.  Safetensors files are read through our own header parser so each tensor is a
zero-copy view of a private (copy-on-write) mapping; pickled ``.ckpt``/``.pt`` files only through
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from comfy_notebook.errors import ModelLoadError
from comfy_notebook.models.detect import is_known_extra
from comfy_notebook.models.unet import UNetModel
from comfy_notebook.models.vae import AutoencoderKL

__all__ = ["SafetensorsFile", "build_component", "open_state_dict"]

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


class SafetensorsFile(Mapping[str, Tensor]):
    """A lazy, memory-mapped view of a ``.safetensors`` file: key -> zero-copy tensor."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        try:
            size = os.path.getsize(self.path)
            with open(self.path, "rb") as fh:
                head = fh.read(8)
                if len(head) < 8:
                    raise self._corrupt(f"the file has {size} bytes, too short for a header")
                (n,) = struct.unpack("<Q", head)
                if n > size - 8 or n > 100_000_000:
                    raise self._corrupt(f"the header claims {n} bytes but the file has {size}")
                try:
                    header = json.loads(fh.read(n))
                except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                    raise self._corrupt(f"the header is not valid JSON ({exc})") from exc
                self._mmap = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY) if size else None
        except OSError as exc:  # a failing disk, a vanished mount, permissions
            raise ModelLoadError(
                f"cannot read {self.path}: {exc.strerror or exc} "
                f"({errno.errorcode.get(exc.errno or 0, type(exc).__name__)}). Fix: check the file "
                "and its disk (permissions, a network mount that went away), then run again") from exc
        header.pop("__metadata__", None)
        self._base = 8 + n
        data_len = size - self._base
        self._entries: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}
        for key, entry in header.items():
            try:
                dtype = _DTYPES[entry["dtype"]]
                shape = tuple(int(s) for s in entry["shape"])
                start, end = (int(o) for o in entry["data_offsets"])
            except (KeyError, TypeError, ValueError) as exc:
                raise self._corrupt(f"tensor {key!r} has a malformed header entry {entry!r}") from exc
            numel = 1
            for s in shape:
                numel *= s
            if end - start != numel * dtype.itemsize or not 0 <= start <= end <= data_len:
                raise self._corrupt(
                    f"tensor {key!r} needs bytes {start}..{end} of a {data_len}-byte data section "
                    "(the file is truncated or corrupt)"
                )
            self._entries[key] = (dtype, shape, start, numel)

    def _corrupt(self, why: str) -> ModelLoadError:
        return ModelLoadError(
            f"cannot read {self.path} as safetensors: {why}. Fix: download or copy the file again"
        )

    def entry(self, key: str) -> tuple[torch.dtype, tuple[int, ...], int, int]:
        """``(dtype, shape, absolute byte offset in the file, numel)`` of tensor ``key``."""
        dtype, shape, start, numel = self._entries[key]
        return dtype, shape, self._base + start, numel

    def __getitem__(self, key: str) -> Tensor:
        dtype, shape, start, numel = self._entries[key]
        if numel == 0 or self._mmap is None:
            return torch.empty(shape, dtype=dtype)
        flat = torch.frombuffer(self._mmap, dtype=dtype, count=numel, offset=self._base + start)
        return flat.view(shape)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


def open_state_dict(path: str | os.PathLike[str]) -> Mapping[str, Tensor]:
    """Open a checkpoint file as a key -> tensor mapping.

    Parameters
    ----------
    path:
        A ``.safetensors`` file (memory-mapped; tensors are created lazily and share the mapping)
        or a pickled ``.ckpt``/``.pt``/``.pth``/``.bin`` file (read with
        ``torch.load(weights_only=True)``, memory-mapped when the format allows; a top-level
        ``"state_dict"`` entry is unwrapped).

    Raises
    ------
    ModelLoadError
        The file is missing, truncated, corrupt, or holds objects other than tensors.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"checkpoint file not found: {p}. Fix: check the path and file name")
    if p.suffix.lower() == ".safetensors":
        return SafetensorsFile(p)
    try:
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            obj = torch.load(p, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as exc:
        raise ModelLoadError(
            f"cannot read {p} as a pickled PyTorch checkpoint with weights_only=True: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}. Fix: use a "
            ".safetensors file, or check that the file is complete and holds only tensors"
        ) from exc
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ModelLoadError(f"{p} holds a {type(obj).__name__}, expected a dict of tensors")
    return {k: v for k, v in obj.items() if isinstance(v, Tensor)}


def _default_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "cpu" else torch.float16


def _fit(t: Tensor, like: Tensor, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Cast a file tensor to the target dtype/device (floats only); no copy when nothing changes."""
    if t.dim() == 2 and like.dim() == 4 and like.shape[2:] == (1, 1) and t.shape == like.shape[:2]:
        t = t.view(like.shape)  # VAE attention stored as linear weights: same numbers, 1x1 conv
    target = dtype if t.is_floating_point() else t.dtype
    return t.to(device=device, dtype=target)


def _architecture(component: Any) -> type[nn.Module]:
    """The module class of a component: its own ``architecture`` or the one of its kind."""
    arch = getattr(component, "architecture", None)
    if arch is not None:
        return arch  # type: ignore[no-any-return]
    if component.kind == "unet":
        return UNetModel
    if component.kind == "vae":
        return AutoencoderKL
    if component.kind == "clip":
        from comfy_notebook.models.clip import CLIPTextModel

        return CLIPTextModel
    raise ModelLoadError(f"no architecture for a component of kind {component.kind!r}")


def build_component(
    sd: Mapping[str, Tensor],
    component: Any,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    source: str = "",
) -> nn.Module:
    """Build one component of a file on ``meta`` and assign the file's tensors (strict).

    Parameters
    ----------
    sd:
        The file's state dict (from :func:`open_state_dict`).
    component:
        A ``families.Component``: ``name``, ``kind``, ``prefix``, ``config``, ``layout``
        (``"openclip"`` keys are renamed through :class:`~comfy_notebook.models.convert.OpenCLIPView`)
        and optionally ``architecture`` (the module class).
    dtype:
        Floating-point weight dtype (None: float32 on CPU, float16 elsewhere).
    device:
        Where the weights go (``"cpu"`` keeps them memory-mapped when no cast is needed).
    source:
        The file, for messages.

    Raises
    ------
    ModelLoadError
        Missing or unexpected keys (listed), or shapes that do not match.
    """
    from comfy_notebook.models.convert import OpenCLIPView

    dev = torch.device(device)
    prefix = component.prefix
    if component.layout == "openclip":
        sd, prefix = OpenCLIPView(sd, prefix), ""
    what = f"{component.name} in {source}" if source else component.name
    arch = _architecture(component)
    if getattr(arch, "takes_linear", False):  # built with a linear factory: fp8-aware (runtime/module_loading.py)
        from comfy_notebook.runtime.module_loading import load_module

        return load_module(arch, component.config, sd, prefix=prefix,
                           weight_dtype=getattr(component, "weight_dtype", "default"),
                           compute_dtype=dtype, device=dev, ignore=getattr(arch, "ignored_keys", None),
                           what=what, fp8_matmul=component.kind == "unet")  # ComfyUI: not for text encoders
    if getattr(component, "weight_dtype", "default") != "default":
        raise ModelLoadError(
            f"{what}: weight_dtype {component.weight_dtype} is not supported for {arch.__name__} yet "
            "(fp8 storage needs an architecture built with a linear factory). Fix: use weight_dtype 'default'")
    return _load_part(arch, component.config, sd, prefix, dtype or _default_dtype(dev), dev, what)


def _load_part(
    model_cls: type[nn.Module],
    config: Any,
    sd: Mapping[str, Tensor],
    prefix: str,
    dtype: torch.dtype,
    device: torch.device,
    what: str,
) -> nn.Module:
    """Build ``model_cls(config)`` on meta and assign the file's tensors under ``prefix``."""
    with torch.device("meta"):
        model = model_cls(config)
    expected = model.state_dict()
    found = {k[len(prefix):]: k for k in sd if k.startswith(prefix)}
    if prefix == "":
        found = {k: k for k in found if not is_known_extra(k)}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(k for k in set(found) - set(expected) if not is_known_extra(found[k]))
    if missing or unexpected:
        raise ModelLoadError(
            f"{what}: the file's {prefix or 'top-level'} keys do not match the architecture "
            f"detected from its shapes ({config}). Missing ({len(missing)}): {_listing(missing)}; "
            f"unexpected ({len(unexpected)}): {_listing(unexpected)}. Fix: use an original LDM "
            "single-file checkpoint, or report the file layout"
        )
    tensors = _read_fast(sd, found, expected, dtype, device)
    if tensors is None:
        try:
            tensors = {k: _fit(sd[found[k]], expected[k], dtype, device) for k in expected}
        except torch.OutOfMemoryError:  # no room on the device: the host (the manager places it)
            device = torch.device("cpu")
            tensors = {k: _fit(sd[found[k]], expected[k], dtype, device) for k in expected}
    try:
        model.load_state_dict(tensors, strict=True, assign=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"{what}: tensor shapes do not match the architecture: {exc}") from exc
    _reset_meta_buffers(model, device, what)
    return model.eval().requires_grad_(False)


#: Device types whose loads go through :mod:`.fastread` (the CPU's mmap path needs no copy; tests
#: add "cpu" to run the same pipeline with its synchronous copier).
FAST_DEVICES: set[str] = {"cuda"}


def _read_fast(sd: Mapping[str, Tensor], found: Mapping[str, str], expected: Mapping[str, Tensor],
               dtype: torch.dtype, device: torch.device) -> dict[str, Tensor] | None:
    """A CUDA target and a safetensors file: pinned, pipelined reads (:mod:`.fastread`).

    None (use the mmap path) for the CPU, pickled files, or when the device has no room for the
    flat output buffer.
    """
    if device.type not in FAST_DEVICES or not isinstance(sd, SafetensorsFile):
        return None
    from comfy_notebook.runtime import fastread

    wanted = {k: (found[k], dtype, tuple(expected[k].shape)) for k in expected}
    if any(sd.entry(f)[3] != expected[k].numel() for k, (f, _, _) in wanted.items()):
        return None  # a shape mismatch: the mmap path names it (ModelLoadError)
    try:
        return fastread.read_spans(sd.path, fastread.spans_for(sd, wanted), device)
    except torch.OutOfMemoryError:
        return None


def _reset_meta_buffers(model: nn.Module, device: torch.device, what: str) -> None:
    """Recreate non-persistent buffers left on ``meta`` through the module's own hook."""
    for module in model.modules():
        if any(b.is_meta for b in module.buffers(recurse=False)):
            hook = getattr(module, "reset_buffers", None)
            if hook is None:
                raise ModelLoadError(
                    f"{what}: {type(module).__name__} has buffers that are not in the file and "
                    "no reset_buffers() to recreate them"
                )
            hook(device)


def _listing(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return (shown + f", ... ({len(keys) - limit} more)") if len(keys) > limit else (shown or "none")
