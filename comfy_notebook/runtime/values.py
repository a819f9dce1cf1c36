"""MODEL, CLIP and VAE values: light handles onto managed models plus their family's facts.

A value holds a :class:`~comfy_notebook.runtime.patches.ModelRef` (which model, which weight
patches) and what the weights alone cannot say (the family: latent scale, prediction type,
noise schedule; the tokenizer; the CLIP layer).  It never holds the weights: the
:class:`~comfy_notebook.runtime.manager.ModelManager` does, so a value kept in a cache stays
valid after the model is offloaded or unloaded, and reloads on its next use.

Values report no ``nbytes``: cache byte budgets count only what a cache entry owns, and the
weights are the manager's.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import torch
from torch import Tensor

from comfy_notebook._units import human_bytes
from comfy_notebook.errors import ModelMemoryError
from comfy_notebook.models.family import SD1, ModelFamily
from comfy_notebook.runtime.manager import ModelManager, estimate_unet_memory
from comfy_notebook.runtime.patches import ModelRef
from comfy_notebook.runtime.precision import finite_or_upcast

__all__ = ["ClipValue", "ModelValue", "VAEValue", "load_checkpoint_values", "load_vae_value"]

_load_lock = threading.Lock()


def _summary(kind: str, ref: ModelRef, family: ModelFamily, extra: str = "") -> str:
    base = ref.base
    dtype = str(base.dtype).replace("torch.", "") if base.dtype is not None else "?"
    patches = f", {len(ref.patches)} patched weights" if ref.patches else ""
    return (f"{kind} {family.name} '{base.name}' {dtype} on {base.where} "
            f"({human_bytes(base.nbytes)}{patches}){extra}")


@dataclass(frozen=True, eq=False)
class ModelValue:
    """A MODEL: the diffusion UNet of a checkpoint, possibly with LoRA patches."""

    ref: ModelRef
    manager: ModelManager = field(repr=False)
    family: ModelFamily = SD1
    unet_config: Any = field(default=None, repr=False)  # models.unet.UNetConfig read from the file

    @property
    def in_channels(self) -> int:
        """Input channels of the UNet: 4 for SD1, 9 for an inpainting UNet (latent + mask + masked latent)."""
        if self.unet_config is None:
            return self.family.latent_channels
        return int(self.unet_config.in_channels)

    @property
    def concat_channels(self) -> int:
        """Channels the UNet takes beyond the latent (ComfyUI's ``c_concat``): 0, or 5 for inpainting."""
        return max(0, self.in_channels - self.family.latent_channels)

    @property
    def is_inpaint(self) -> bool:
        """Whether this is an inpainting model (ComfyUI's ``inpaint_model()``: in_channels > latent channels)."""
        return self.concat_channels > 0

    @cached_property
    def schedule(self) -> Any:
        """The family's discrete noise schedule (sigmas, timestep <-> sigma)."""
        from comfy_notebook.sampling import DiscreteSchedule

        f = self.family
        return DiscreteSchedule(beta_start=f.beta_start, beta_end=f.beta_end,
                                num_timesteps=f.num_timesteps)

    def with_patches(self, patches: Mapping[str, Any], strength: float) -> ModelValue:
        """A clone carrying ``patches`` (scaled by ``strength``); shares the base weights."""
        return replace(self, ref=self.ref.with_patches(patches, strength))

    def run(self, fn: Callable[[Any], Any], *, latent_shape: tuple[int, ...], cfg: bool = True) -> Any:
        """``fn(unet)`` with the UNet on the compute device (out-of-memory recovery included)."""
        dtype = self.ref.base.dtype or torch.float32
        need = estimate_unet_memory(tuple(latent_shape), dtype, cfg=cfg)
        return self.manager.run(self.ref, fn, memory_required=need)

    def summary(self) -> str:
        """One line: family, name, dtype, where it lives, bytes (and the inpainting input)."""
        extra = f", inpainting UNet ({self.in_channels} input channels)" if self.is_inpaint else ""
        return _summary("MODEL", self.ref, self.family, extra)

    def __repr__(self) -> str:
        return f"<{self.summary()}>"


@dataclass(frozen=True, eq=False)
class ClipValue:
    """A CLIP: the text encoder with its tokenizer, the layer to read and LoRA patches."""

    ref: ModelRef
    manager: ModelManager = field(repr=False)
    tokenizer: Any = field(repr=False)
    family: ModelFamily = SD1
    layer: int | None = None
    embedding_dirs: tuple[str, ...] = ()

    def with_layer(self, layer: int) -> ClipValue:
        """``CLIPSetLastLayer``: read the hidden state of ``layer`` (-1 last, -2 penultimate)."""
        return replace(self, layer=layer)

    def with_patches(self, patches: Mapping[str, Any], strength: float) -> ClipValue:
        """A clone carrying ``patches`` (scaled by ``strength``)."""
        return replace(self, ref=self.ref.with_patches(patches, strength))

    def encode(self, text: str) -> tuple[Tensor, Tensor, list[str]]:
        """Encode a ComfyUI prompt: ``(cond [1, 77k, D], pooled [1, D], missing_embeddings)``."""
        from comfy_notebook.models.prompt import (
            encode_tokens,
            make_embedding_lookup,
            tokenize_prompt,
        )

        lookup = make_embedding_lookup(self.embedding_dirs) if self.embedding_dirs else None
        tokenized = tokenize_prompt(self.tokenizer, text, embedding_lookup=lookup)

        def run(model: Any) -> tuple[Tensor, Tensor]:
            return encode_tokens(model, tokenized.chunks, layer=self.layer, device=self.manager.device)

        cond, pooled = self.manager.run(self.ref, run)
        return cond.float().cpu(), pooled.float().cpu(), list(tokenized.missing_embeddings)

    def summary(self) -> str:
        """One line: family, name, dtype, where it lives, bytes, layer."""
        layer = "" if self.layer is None else f", layer {self.layer}"
        return _summary("CLIP", self.ref, self.family, layer)

    def __repr__(self) -> str:
        return f"<{self.summary()}>"


@dataclass(frozen=True, eq=False)
class VAEValue:
    """A VAE: pixels <-> latents (the raw VAE latents; the family's scale is the sampler's)."""

    ref: ModelRef
    manager: ModelManager = field(repr=False)
    family: ModelFamily = SD1

    def _memory(self, pixels: int, *, encode: bool) -> int:
        dtype = self.ref.base.dtype or torch.float32
        elem = torch.empty((), dtype=dtype).element_size()
        # Activation peak of the decoder's highest-resolution blocks (~ 2 x 128 x H x W values).
        return int(pixels * elem * (160 if encode else 384))

    def decode(self, samples: Tensor, *, tiled: bool = False, tile: int = 64, overlap: int = 16) -> Tensor:
        """LATENT samples ``[B, 4, h, w]`` -> IMAGE ``[B, 8h, 8w, 3]`` float32 in 0..1 on the CPU."""
        b, _, h, w = samples.shape

        def run(vae: Any) -> Tensor:
            # the compute device, not a parameter's: a partially loaded VAE has some on the host
            z = samples.to(self.manager.device)  # the VAE casts to its own dtype
            return finite_or_upcast(  # a bf16 decode that overflowed is redone in fp32
                vae, lambda: vae.decode_tiled(z, tile=tile, overlap=overlap) if tiled else vae.decode(z),
                streamer=self.ref.base.streamer)

        need = self._memory(b * h * w * 64, encode=False) if not tiled else self._memory(
            tile * tile * 64, encode=False)
        try:
            pixels = self.manager.run(self.ref, run, memory_required=need)
        except ModelMemoryError:  # ComfyUI falls back to tiled decoding on out-of-memory
            if tiled:
                raise
            return self.decode(samples, tiled=True, tile=tile, overlap=overlap)
        image = ((pixels.float() + 1.0) / 2.0).clamp(0.0, 1.0)
        return image.permute(0, 2, 3, 1).cpu().contiguous()

    def encode(self, image: Tensor, *, tiled: bool = False, tile: int = 512, overlap: int = 64) -> Tensor:
        """IMAGE ``[B, H, W, C]`` in 0..1 -> latent ``[B, 4, H/8, W/8]`` float32 on the CPU.

        Images are cropped to multiples of 8 (centred), as ComfyUI's VAEEncode does; an alpha
        channel is dropped.
        """
        image = image[..., :3]
        b, h, w, _ = image.shape
        h8, w8 = (h // 8) * 8, (w // 8) * 8
        if (h8, w8) != (h, w):
            y, x = (h % 8) // 2, (w % 8) // 2
            image = image[:, y:y + h8, x:x + w8, :]

        def run(vae: Any) -> Tensor:
            pix = image.permute(0, 3, 1, 2).to(self.manager.device) * 2.0 - 1.0  # the VAE casts
            return vae.encode_tiled(pix, tile=tile, overlap=overlap) if tiled else vae.encode(pix)

        need = self._memory(b * h8 * w8, encode=True)
        return self.manager.run(self.ref, run, memory_required=need).float().cpu()

    def summary(self) -> str:
        """One line: family, name, dtype, where it lives, bytes."""
        return _summary("VAE", self.ref, self.family)

    def __repr__(self) -> str:
        return f"<{self.summary()}>"


def _register(manager: ModelManager, name: str, kind: str, source: str,
              factory: Callable[[], Any], module: Any | None, dtype: torch.dtype,
              family: ModelFamily) -> ModelRef:
    """Reuse the managed model of ``name`` if this file part is known, else register it."""
    if name in manager:
        return manager[name].ref(holder=name)
    return manager.register(name, factory, kind=kind, source=source, dtype=dtype,
                            module=module, family=family.name).ref(holder=name)


def load_checkpoint_values(
    manager: ModelManager, path: str | os.PathLike[str], *, name: str | None = None,
    embedding_dirs: tuple[str, ...] = (),
) -> tuple[ModelValue, ClipValue, VAEValue]:
    """``CheckpointLoaderSimple``: MODEL, CLIP and VAE of a single-file checkpoint.

    The file is read once; each part is registered with the manager under
    ``"<name>/unet"``, ``"<name>/clip"``, ``"<name>/vae"`` with a factory that reloads only that
    part after an unload.  Loading the same file again reuses the managed models.
    """
    from comfy_notebook.models.tokenizer import get_tokenizer
    from comfy_notebook.runtime.loading import load_checkpoint

    source = os.fspath(path)
    name = name or os.path.splitext(os.path.basename(source))[0]
    policy = manager.policy
    dtypes = {kind: policy.dtype_for(kind) for kind in ("unet", "vae", "clip")}
    keys = {kind: f"{name}/{kind}" for kind in dtypes}
    # CUDA: read straight onto the device (pinned, pipelined reads); the manager keeps the master
    read_to = manager.device if manager.device.type == "cuda" else torch.device("cpu")

    def part_factory(kind: str) -> Callable[[], Any]:
        def factory() -> Any:
            return getattr(load_checkpoint(source, parts=(kind,), dtype=dtypes[kind],
                                           device=read_to), kind)
        return factory

    with _load_lock:
        missing = tuple(kind for kind in dtypes if keys[kind] not in manager)
        loaded = (load_checkpoint(source, parts=missing, dtype=dtypes, device=read_to)
                  if missing else None)
        if loaded is not None:
            info = loaded.info
        else:  # every part is managed already: the keys' shapes still say the family
            from comfy_notebook.models.detect import detect
            from comfy_notebook.runtime.loading import open_state_dict

            info = detect(open_state_dict(source), source=source)
        family = info.family
        refs = {}
        for kind in dtypes:
            module = getattr(loaded, kind) if loaded is not None and kind in missing else None
            refs[kind] = _register(manager, keys[kind], kind, source, part_factory(kind),
                                   module, dtypes[kind], family)
    tokenizer = get_tokenizer()
    return (
        ModelValue(refs["unet"], manager, family, info.unet),
        ClipValue(refs["clip"], manager, tokenizer, family, None, tuple(embedding_dirs)),
        VAEValue(refs["vae"], manager, family),
    )


def load_vae_value(manager: ModelManager, path: str | os.PathLike[str], *,
                   name: str | None = None) -> VAEValue:
    """``VAELoader``: a separate VAE file (or a checkpoint's VAE) as a VAE value."""
    from comfy_notebook.runtime.loading import load_vae

    source = os.fspath(path)
    key = (name or os.path.splitext(os.path.basename(source))[0]) + "/vae"
    dtype = manager.policy.dtype_for("vae")

    def factory() -> Any:
        return load_vae(source, dtype=dtype)

    with _load_lock:
        ref = _register(manager, key, "vae", source, factory, None if key in manager else factory(),
                        dtype, SD1)
    return VAEValue(ref, manager, SD1)
