"""UPSCALE_MODEL: image super-resolution / restoration models loaded by ``spandrel``.

spandrel detects the architecture (ESRGAN, RealESRGAN, SwinIR, HAT, DAT, OmniSR, ...) from the
state dict and builds it; we never re-implement those networks.  Its non-commercial extras
(``spandrel_extra_arches``) are added only when the user opts in
(:func:`allow_noncommercial_upscale_models` or ``COMFY_NOTEBOOK_SPANDREL_EXTRAS=1``).

An :class:`UpscaleModelValue` is a light handle onto a model the
:class:`~comfy_notebook.runtime.manager.ModelManager` owns, like the MODEL/CLIP/VAE values: it
can be offloaded or unloaded and reloads from its file on next use.  Upscaling runs in
overlapping tiles as ComfyUI's ``ImageUpscaleWithModel`` does (tile 512, overlap 32, blended by
``comfy/utils.py tiled_scale``'s feathered masks; on out-of-memory the tile is halved, down to
128) — behaviour from Comfy-Org/ComfyUI@a125cd8 ``comfy_extras/nodes_upscale_model.py``.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import types
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from comfy_notebook.errors import ModelLoadError, UnsupportedModelError
from comfy_notebook.runtime.manager import ModelManager
from comfy_notebook.runtime.patches import ModelRef

__all__ = [
    "UpscaleModelValue",
    "allow_noncommercial_upscale_models",
    "import_spandrel",
    "load_upscale_model_value",
    "read_upscale_state_dict",
    "tiled_scale",
    "upscale_with_oom_retry",
]

TILE, OVERLAP, MIN_TILE = 512, 32, 128  # ComfyUI's ImageUpscaleWithModel
_EXTRAS_ENV = "COMFY_NOTEBOOK_SPANDREL_EXTRAS"
_lock = threading.RLock()
_state: dict[str, Any] = {"extras_wanted": None, "extras_added": False}


def allow_noncommercial_upscale_models(allow: bool = True) -> None:
    """Opt in (or out) of spandrel's non-commercial architectures (``spandrel_extra_arches``).

    ComfyUI registers them whenever the package is installed; we need an explicit opt-in, as
    their licenses forbid commercial use.  Models already loaded are unaffected by an opt-out.
    """
    _state["extras_wanted"] = bool(allow)


def _extras_wanted() -> bool:
    if _state["extras_wanted"] is not None:
        return bool(_state["extras_wanted"])
    return os.environ.get(_EXTRAS_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _torchvision_stub() -> dict[str, types.ModuleType]:
    """Stand-ins for the two torchvision functions spandrel imports at module level.

    spandrel imports ``torchvision.transforms.functional`` in its LaMa (inpainting) and
    RestoreFormer (face restoration) modules only; no upscaling architecture uses it.  Without
    torchvision installed (it has no CPU wheel we may pull), those two names are bound to
    functions that raise when called, so ``import spandrel`` works and upscaling is unaffected.
    """

    def missing(*_: Any, **__: Any) -> Any:
        raise ModelLoadError(
            "this spandrel architecture needs torchvision, which is not installed; expected an "
            "upscaling model (ESRGAN, SwinIR, HAT, DAT, ...). Fix: pip install torchvision "
            "matching your torch build, or use another model.")

    tv, tr, fn = (types.ModuleType(n) for n in
                  ("torchvision", "torchvision.transforms", "torchvision.transforms.functional"))
    fn.rotate = fn.normalize = missing  # type: ignore[attr-defined]
    fn.InterpolationMode = type("InterpolationMode", (), {"NEAREST": "nearest", "BILINEAR": "bilinear"})  # type: ignore[attr-defined]
    tr.functional = fn  # type: ignore[attr-defined]
    tv.transforms = tr  # type: ignore[attr-defined]
    return {m.__name__: m for m in (tv, tr, fn)}


def import_spandrel() -> types.ModuleType:
    """``spandrel``, importable without torchvision; with the extras only when opted in."""
    with _lock:
        if "spandrel" not in sys.modules:
            try:
                import torchvision  # noqa: F401
                stubs: dict[str, types.ModuleType] = {}
            except ImportError:
                stubs = _torchvision_stub()
            added = [name for name in stubs if name not in sys.modules]
            sys.modules.update({n: stubs[n] for n in added})
            try:
                import spandrel
            except ImportError as exc:
                raise ModelLoadError(
                    f"upscale models need the spandrel package, which could not be imported "
                    f"({exc}). Fix: pip install --no-deps spandrel einops (scripts/install.sh "
                    "does this; its declared torchvision dependency is not needed).") from exc
            finally:  # never leave the stand-ins where other libraries look for torchvision
                for name in added:
                    sys.modules.pop(name, None)
        spandrel = sys.modules["spandrel"]
        if _extras_wanted() and not _state["extras_added"]:
            try:
                from spandrel_extra_arches import EXTRA_REGISTRY  # type: ignore[import-not-found]
            except ImportError as exc:
                raise ModelLoadError(
                    "non-commercial upscale architectures were allowed, but spandrel_extra_arches "
                    f"is not installed ({exc}). Fix: pip install --no-deps spandrel_extra_arches."
                ) from exc
            spandrel.MAIN_REGISTRY.add(*EXTRA_REGISTRY)
            _state["extras_added"] = True
        return spandrel


def read_upscale_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Tensors of an upscale model file, unwrapped as ComfyUI's ``load_torch_file`` does.

    ``.safetensors`` are read directly; pickles with ``weights_only=True``, then a
    ``"state_dict"`` entry or a single nested dict (``{"params_ema": {...}}``) is unwrapped.
    The ``module.`` prefix of DataParallel SwinIR files is removed.
    """
    source = os.fspath(path)
    if not os.path.isfile(source):
        raise ModelLoadError(f"upscale model file not found: {source}. Fix: check the upscale_models folder.")
    try:
        if source.lower().endswith((".safetensors", ".sft")):
            from safetensors.torch import load_file

            sd: Any = load_file(source)
        else:
            obj = torch.load(source, map_location="cpu", weights_only=True)
            if isinstance(obj, dict) and "state_dict" in obj:
                sd = obj["state_dict"]
            elif isinstance(obj, dict) and len(obj) == 1 and isinstance(next(iter(obj.values())), dict):
                sd = next(iter(obj.values()))
            else:
                sd = obj
    except Exception as exc:
        raise ModelLoadError(
            f"cannot read upscale model {source}: {type(exc).__name__}: {exc}. Fix: check the file "
            "is complete; only .safetensors and weights-only torch files are read.") from exc
    if not isinstance(sd, dict):
        raise ModelLoadError(f"{source} holds a {type(sd).__name__}, expected a dict of tensors.")
    if "module.layers.0.residual_group.blocks.0.norm1.weight" in sd:
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    return sd


class _Upscaler(nn.Module):
    """The managed module: spandrel's network as ``model``, its descriptor beside it."""

    def __init__(self, descriptor: Any) -> None:
        super().__init__()
        self.model = descriptor.model  # the descriptor calls this same module
        self.descriptor = descriptor

    def forward(self, image: Tensor) -> Tensor:
        """[B, C, h, w] in 0..1 -> [B, C, h*s, w*s] in 0..1 (spandrel pads to its size rules)."""
        return self.descriptor(image)


def build_upscaler(path: str) -> _Upscaler:
    """Detect and build the model of ``path`` with spandrel (single-image models only)."""
    spandrel = import_spandrel()
    sd = read_upscale_state_dict(path)
    try:
        descriptor = spandrel.ModelLoader().load_from_state_dict(sd).eval()
    except spandrel.UnsupportedModelError as exc:
        hint = ("" if _extras_wanted() else " Non-commercial architectures are off: opt in with "
                "comfy_notebook.runtime.upscale.allow_noncommercial_upscale_models() (or "
                f"{_EXTRAS_ENV}=1) and install spandrel_extra_arches, if the license fits you.")
        raise UnsupportedModelError(
            f"spandrel does not recognise the architecture of {path}; expected an upscale model "
            f"(ESRGAN, RealESRGAN, SwinIR, HAT, DAT, ...).{hint}") from exc
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise UnsupportedModelError(
            f"{path} is a {type(descriptor).__name__} ({descriptor.architecture.name}); expected a "
            "single-image model. Fix: upscale models must take one image (no mask).")
    return _Upscaler(descriptor)


def _feather(n: int, fade: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """1-D weights: ramps (t+1)/fade at both ends (ComfyUI feathers every tile side)."""
    w = torch.ones(n, dtype=dtype, device=device)
    if fade < n:
        for t in range(fade):
            a = (t + 1) / fade
            w[t] *= a
            w[n - 1 - t] *= a
    return w


def tiled_scale(samples: Tensor, fn: Callable[[Tensor], Tensor], *, tile: int, overlap: int,
                scale: float, out_channels: int = 3,
                progress: Callable[[int, int], None] | None = None) -> Tensor:
    """``fn`` over overlapping ``tile``-pixel tiles of ``samples``, blended (ComfyUI's ``tiled_scale``).

    Tiles start every ``tile - overlap`` pixels (the last ones clipped to the image); each
    output tile is weighted by a mask ramping linearly over ``overlap * scale`` pixels on every
    side, and the weighted sum is divided by the summed weights.  An image that fits one tile
    is one call.  samples: [B, C, H, W] -> [B, out_channels, round(H*scale), round(W*scale)] (CPU)
    """
    b, _, h, w = samples.shape
    oh, ow = round(h * scale), round(w * scale)
    output = torch.empty(b, out_channels, oh, ow)
    pos_y = range(0, h - overlap, tile - overlap) if h > tile else [0]
    pos_x = range(0, w - overlap, tile - overlap) if w > tile else [0]
    steps, done = b * (1 if (h <= tile and w <= tile) else len(pos_y) * len(pos_x)), 0
    fade = round(overlap * scale)
    for i in range(b):
        s = samples[i:i + 1]
        if h <= tile and w <= tile:
            output[i:i + 1] = fn(s).float().cpu()
            done += 1
            if progress is not None:
                progress(done, steps)
            continue
        out = torch.zeros(1, out_channels, oh, ow)
        div = torch.zeros(1, out_channels, oh, ow)
        for y, x in itertools.product(pos_y, pos_x):
            y, x = max(0, min(h - overlap, y)), max(0, min(w - overlap, x))
            th, tw = min(tile, h - y), min(tile, w - x)
            piece = fn(s[:, :, y:y + th, x:x + tw]).float().cpu()  # [1, Co, th*s, tw*s]
            ph, pw = piece.shape[-2:]
            mask = (_feather(ph, fade, piece.dtype, piece.device)[:, None]
                    * _feather(pw, fade, piece.dtype, piece.device)[None, :])  # [ph, pw]
            oy, ox = round(y * scale), round(x * scale)
            out[:, :, oy:oy + ph, ox:ox + pw] += piece * mask
            div[:, :, oy:oy + ph, ox:ox + pw] += mask
            done += 1
            if progress is not None:
                progress(done, steps)
        output[i:i + 1] = out / div
    return output


def upscale_with_oom_retry(samples: Tensor, fn: Callable[[Tensor], Tensor], *, scale: float,
                           tile: int = TILE, overlap: int = OVERLAP, min_tile: int = MIN_TILE,
                           out_channels: int = 3, on_retry: Callable[[int], None] | None = None,
                           progress: Callable[[int, int], None] | None = None) -> Tensor:
    """:func:`tiled_scale`, halving the tile on ``torch.OutOfMemoryError`` until below ``min_tile``."""
    while True:
        try:
            return tiled_scale(samples, fn, tile=tile, overlap=overlap, scale=scale,
                               out_channels=out_channels, progress=progress)
        except torch.OutOfMemoryError:
            tile //= 2
            if tile < min_tile:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if on_retry is not None:
                on_retry(tile)


@dataclass(frozen=True, eq=False)
class UpscaleModelValue:
    """An UPSCALE_MODEL: a handle onto a spandrel model owned by the model manager."""

    ref: ModelRef
    manager: ModelManager = field(repr=False)
    scale: int
    architecture: str
    input_channels: int = 3
    output_channels: int = 3

    def memory_required(self, image: Tensor) -> int:
        """ComfyUI's estimate: a 512x512 tile times 384 x scale values, plus the input image."""
        elem = image.element_size()
        return int(512 * 512 * 3 * elem * max(self.scale, 1.0) * 384.0 + image.numel() * elem)

    def upscale(self, image: Tensor, *, tile: int = TILE, overlap: int = OVERLAP,
                on_retry: Callable[[int], None] | None = None,
                progress: Callable[[int, int], None] | None = None) -> Tensor:
        """IMAGE ``[B, H, W, C]`` in 0..1 -> ``[B, H*s, W*s, C]`` clamped to 0..1 (CPU float32).

        ``on_retry(tile)`` is called each time an out-of-memory error halves the tile.
        """
        device = self.manager.device

        def run(module: nn.Module) -> Tensor:
            dtype = next(iter(module.parameters())).dtype
            x = image.movedim(-1, -3)  # [B, C, H, W]

            def call(t: Tensor) -> Tensor:
                return module(t.to(device=device, dtype=dtype))

            with torch.inference_mode():
                return upscale_with_oom_retry(x, call, scale=self.scale, tile=tile, overlap=overlap,
                                              out_channels=self.output_channels,
                                              on_retry=on_retry, progress=progress)

        out = self.manager.run(self.ref, run, memory_required=self.memory_required(image))
        return torch.clamp(out.movedim(-3, -1), 0.0, 1.0)

    def summary(self) -> str:
        """One line: architecture, scale, name, where it lives."""
        base = self.ref.base
        return f"UPSCALE_MODEL {self.architecture} x{self.scale} '{base.name}' on {base.where}"

    def __repr__(self) -> str:
        return f"<{self.summary()}>"


# facts read from spandrel's descriptor, kept per managed model (they survive an unload)
_facts: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


def load_upscale_model_value(manager: ModelManager, path: str | os.PathLike[str], *,
                             name: str | None = None) -> UpscaleModelValue:
    """``UpscaleModelLoader``: register the file's model with ``manager`` (reused when known).

    The manager owns the weights under ``"upscale:<name>"`` with a factory that rebuilds the
    model from the file after an unload.
    """
    source = os.fspath(path)
    key = "upscale:" + (name or os.path.splitext(os.path.basename(source))[0])
    with _lock:
        if key in manager and manager[key] in _facts:
            managed = manager[key]
        else:
            module = build_upscaler(source)
            if key in manager:
                managed = manager[key]
            else:
                managed = manager.register(key, lambda: build_upscaler(source), kind="upscale",
                                           source=source, dtype=torch.float32, module=module)
            d = module.descriptor
            _facts[managed] = {"scale": int(d.scale), "architecture": str(d.architecture.name),
                               "input_channels": int(d.input_channels),
                               "output_channels": int(d.output_channels)}
    return UpscaleModelValue(managed.ref(holder=key), manager, **_facts[managed])
