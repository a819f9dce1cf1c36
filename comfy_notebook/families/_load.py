"""Load a file's components as modules, or as MODEL / CLIP / VAE values under the model manager.

Detection (:func:`comfy_notebook.families.detect`) says what the file holds; the runtime builds
each component (:func:`comfy_notebook.runtime.loading.build_component`); the family rides along
on the values.  Every component is registered with the manager under ``"<name>/<component>"``
(``"<name>/clip"`` when the family has one text encoder) with a factory that reloads only that
component after an unload; loading the same file again reuses the managed models.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from comfy_notebook.errors import ModelLoadError, UnsupportedModelError
from comfy_notebook.families.base import Component, Detected, Family
from comfy_notebook.folders.identity import file_identity
from comfy_notebook.runtime.loading import build_component, open_state_dict
from comfy_notebook.runtime.manager import ModelManager
from comfy_notebook.runtime.values import ClipValue, ModelValue, VAEValue, _load_lock, register_part

__all__ = [
    "LoadedCheckpoint",
    "load_checkpoint",
    "load_checkpoint_values",
    "load_clip_value",
    "load_text_encoder",
    "load_unet_value",
    "load_vae",
    "load_vae_value",
]


@dataclass
class LoadedCheckpoint:
    """Modules of a file loaded by :func:`load_checkpoint` (component name -> module)."""

    info: Detected
    modules: dict[str, nn.Module]
    path: str

    @property
    def unet(self) -> Any:
        return self.modules.get("unet")

    @property
    def vae(self) -> Any:
        return self.modules.get("vae")

    @property
    def clip(self) -> Any:
        """The first text encoder (the only one for SD1/SD2)."""
        return next((m for k, m in self.modules.items() if self.info.components[k].kind == "clip"), None)


def _dtype_for(c: Component, dtype: Any, device: torch.device) -> torch.dtype | None:
    if isinstance(dtype, Mapping):
        dtype = dtype.get(c.name, dtype.get(c.kind))
    return dtype  # type: ignore[no-any-return]


def _detect(sd: Mapping[str, Any], source: str) -> Detected:
    from comfy_notebook.families import detect

    return detect(sd, source=source)


def load_checkpoint(
    path: str | os.PathLike[str], *, parts: tuple[str, ...] | None = None,
    dtype: torch.dtype | Mapping[str, torch.dtype | None] | None = None, device: str | torch.device = "cpu",
) -> LoadedCheckpoint:
    """Load the components of a model file (single-file checkpoint, UNet, VAE or text encoder).

    Parameters
    ----------
    path:
        The file.
    parts:
        Component names to load (``"unet"``, ``"vae"``, ``"clip_l"``...; ``"clip"`` means every
        text encoder); None: all.
    dtype:
        Weight dtype, or a dict by component name or kind; None picks float32 on CPU, float16
        elsewhere.
    device:
        Where the weights go (``"cpu"`` keeps them memory-mapped when no cast is needed).

    Raises
    ------
    ModelLoadError, UnsupportedModelError
        Unreadable file, missing/unexpected keys (listed), unknown layouts, absent parts.
    """
    source = str(path)
    sd = open_state_dict(path)
    info = _detect(sd, source)
    wanted = list(info.components) if parts is None else []
    for p in parts or ():
        names = [k for k, c in info.components.items() if c.kind == "clip"] if p == "clip" else [p]
        if not names or any(n not in info.components for n in names):
            raise ModelLoadError(
                f"{source} has no {p} weights (found: {sorted(info.components)}). "
                "Fix: load that part from its own file (VAELoader, CLIPLoader, UNETLoader)")
        wanted += names
    dev = torch.device(device)
    modules = {n: build_component(sd, info.components[n], dtype=_dtype_for(info.components[n], dtype, dev),
                                  device=dev, source=source) for n in wanted}
    return LoadedCheckpoint(info, modules, source)


def load_vae(path: str | os.PathLike[str], *, dtype: torch.dtype | None = None,
             device: str | torch.device = "cpu") -> nn.Module:
    """The VAE of a separate VAE file or of a checkpoint."""
    return load_checkpoint(path, parts=("vae",), dtype=dtype, device=device).vae


def load_text_encoder(path: str | os.PathLike[str], *, dtype: torch.dtype | None = None,
                      device: str | torch.device = "cpu") -> nn.Module:
    """The (first) text encoder of a text-encoder file or of a checkpoint."""
    return load_checkpoint(path, parts=("clip",), dtype=dtype, device=device).clip


# -- values ------------------------------------------------------------------------------------
def _part_key(name: str, family: Family | None, component: Component) -> str:
    if component.kind == "clip" and family is not None and len(family.text_encoders) == 1:
        return f"{name}/clip"
    return f"{name}/{component.name}"


def _register(manager: ModelManager, key: str, source: str, sd: Mapping[str, Any] | None,
              component: Component, family: Family | None) -> Any:
    dtype = manager.policy.dtype_for(component.kind, component.dtypes)
    device = manager.read_device()  # CUDA: pinned, pipelined reads straight onto the device
    identity = file_identity(source)

    def factory() -> nn.Module:
        now = file_identity(source)
        if now is None:
            raise ModelLoadError(
                f"model {key!r} was unloaded and its file {source} is gone (deleted or moved since "
                "it was loaded), so it cannot be loaded again. Fix: put the file back, or pick "
                "another model in the loader node and run it again.")
        if now != identity:
            raise ModelLoadError(
                f"model {key!r} was unloaded and its file {source} has changed on disk since it "
                "was loaded; reloading it now would mix two files. Fix: run the loader node "
                "again: it loads the new file.")
        return build_component(open_state_dict(source), component, dtype=dtype, device=device,
                               source=source)

    old = manager[key] if key in manager else None  # noqa: SIM401 - the manager has no .get
    if old is not None and old.file_identity not in (None, identity):
        manager.unregister(old)  # the file was replaced: never serve the old weights
    module = None
    if key not in manager:
        module = build_component(sd if sd is not None else open_state_dict(source), component,
                                 dtype=dtype, device=device, source=source)
    ref = register_part(manager, key, component.kind, source, factory, module, dtype, family)
    if manager[key].file_identity is None:
        manager[key].file_identity = identity
    return ref


def _require(info: Detected, names: tuple[str, ...], source: str, what: str) -> Family:
    if info.family is None:
        raise UnsupportedModelError(
            f"{source} holds no diffusion model (found: {sorted(info.components)}). "
            f"Fix: {what}")
    missing = [n for n in names if n not in info.components]
    if missing:
        raise ModelLoadError(
            f"{source} is a {info.family.title} file without {', '.join(missing)} weights (found: "
            f"{sorted(info.components)}). Fix: {what}")
    return info.family


def load_checkpoint_values(
    manager: ModelManager, path: str | os.PathLike[str], *, name: str | None = None,
    embedding_dirs: tuple[str, ...] = (),
) -> tuple[ModelValue, ClipValue, VAEValue]:
    """``CheckpointLoaderSimple``: MODEL, CLIP and VAE of a single-file checkpoint of any family."""
    from comfy_notebook.models.tokenizer import get_tokenizer

    source = os.fspath(path)
    name = name or os.path.splitext(os.path.basename(source))[0]
    with _load_lock:
        sd = open_state_dict(source)
        info = _detect(sd, source)
        family = _require(info, ("unet", "vae"), source,
                          "use a full checkpoint, or UNETLoader / CLIPLoader / VAELoader for separate files")
        encoders = [s.name for s in family.text_encoders]
        absent = [e for e in encoders if e not in info.components]
        if absent:
            raise ModelLoadError(
                f"{source} is a {family.title} checkpoint without its text encoder(s) {absent}. "
                "Fix: load them with CLIPLoader / DualCLIPLoader")
        refs = {n: _register(manager, _part_key(name, family, info.components[n]), source, sd,
                             info.components[n], family) for n in ("unet", "vae", *encoders)}
    model = ModelValue(refs["unet"], manager, family, info.unet, info.model_sampling())
    clip = ClipValue({e: refs[e] for e in encoders}, manager, get_tokenizer(), family, None,
                     tuple(embedding_dirs))
    return model, clip, VAEValue(refs["vae"], manager, family)


def load_unet_value(manager: ModelManager, path: str | os.PathLike[str], *, name: str | None = None,
                    dtype: torch.dtype | None = None, weight_dtype: str = "default") -> ModelValue:
    """``UNETLoader``: a diffusion-model file (or a checkpoint's UNet) as a MODEL."""
    source = os.fspath(path)
    name = name or os.path.splitext(os.path.basename(source))[0]
    with _load_lock:
        sd = open_state_dict(source)
        info = _detect(sd, source)
        family = _require(info, ("unet",), source, "pick a diffusion model (UNet) file")
        comp = info.components["unet"]
        if dtype is not None or weight_dtype != "default":
            comp = replace(comp, dtypes=comp.dtypes if dtype is None else (dtype,), weight_dtype=weight_dtype)
        ref = _register(manager, f"{name}/unet", source, sd, comp, family)
    return ModelValue(ref, manager, family, info.unet, info.model_sampling())


def load_vae_value(manager: ModelManager, path: str | os.PathLike[str], *,
                   name: str | None = None) -> VAEValue:
    """``VAELoader``: a separate VAE file (or a checkpoint's VAE) as a VAE value."""
    source = os.fspath(path)
    key = (name or os.path.splitext(os.path.basename(source))[0]) + "/vae"
    with _load_lock:
        sd = open_state_dict(source)
        info = _detect(sd, source)
        if "vae" not in info.components:
            raise ModelLoadError(
                f"{source} holds no VAE (found: {sorted(info.components)}); expected keys "
                "encoder.*/decoder.* or first_stage_model.*")
        ref = _register(manager, key, source, sd, info.components["vae"], info.family)
    return VAEValue(ref, manager, info.family)


def load_clip_value(manager: ModelManager, paths: list[str | os.PathLike[str]], clip_type: str, *,
                    names: list[str] | None = None, embedding_dirs: tuple[str, ...] = ()) -> ClipValue:
    """``CLIPLoader`` / ``DualCLIPLoader``: text-encoder files (or checkpoints) combined as the CLIP
    of the family that ``clip_type`` and the encoders found name."""
    from comfy_notebook.families import family_for_text_encoders
    from comfy_notebook.models.tokenizer import get_tokenizer

    found: dict[str, tuple[str, Component, Mapping[str, Any], str]] = {}
    with _load_lock:
        for i, path in enumerate(paths):
            source = os.fspath(path)
            sd = open_state_dict(source)
            info = _detect(sd, source)
            encoders = info.text_encoders
            if not encoders:
                raise ModelLoadError(f"{source} holds no text encoder (found: {sorted(info.components)})")
            base = names[i] if names else os.path.splitext(os.path.basename(source))[0]
            for enc, comp in encoders.items():
                if enc in found:
                    raise ModelLoadError(f"two files hold a {enc} text encoder: {found[enc][0]} and {source}")
                found[enc] = (source, comp, sd, base)
        family = family_for_text_encoders(clip_type, tuple(found))
        refs = {}
        for spec in family.text_encoders:
            source, comp, sd, base = found[spec.name]
            refs[spec.name] = _register(manager, f"{base}/{spec.name}", source, sd, comp, family)
    return ClipValue(refs, manager, get_tokenizer(), family, None, tuple(embedding_dirs))
