"""MODEL, CLIP and VAE values: light handles onto managed models plus their family.

A value holds :class:`~comfy_notebook.runtime.patches.ModelRef` s (which model, which weight
patches) and what the weights alone cannot say: the family (a ``comfy_notebook.families``
object, duck-typed here: latent format, model sampling, text-encoding recipe, extra model
inputs), the tokenizer, the CLIP layer.  It never holds the weights: the
:class:`~comfy_notebook.runtime.manager.ModelManager` does, so a value kept in a cache stays
valid after the model is offloaded or unloaded, and reloads on its next use.

Values report no ``nbytes``: cache byte budgets count only what a cache entry owns, and the
weights are the manager's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from comfy_notebook._units import human_bytes
from comfy_notebook.errors import ModelMemoryError
from comfy_notebook.runtime.manager import ModelManager
from comfy_notebook.runtime.patches import ModelRef
from comfy_notebook.runtime.precision import finite_or_upcast

__all__ = ["ClipValue", "ModelValue", "VAEValue", "register_part"]

_load_lock = threading.Lock()


def _family_name(family: Any) -> str:
    return str(getattr(family, "name", None) or "-")


def _summary(kind: str, ref: ModelRef, family: Any, extra: str = "") -> str:
    base = ref.base
    dtype = str(base.dtype).replace("torch.", "") if base.dtype is not None else "?"
    patches = f", {len(ref.patches)} patched weights" if ref.patches else ""
    return (f"{kind} {_family_name(family)} '{base.name}' {dtype} on {base.where} "
            f"({human_bytes(base.nbytes)}{patches}){extra}")


@dataclass(frozen=True, eq=False)
class ModelValue:
    """A MODEL: the diffusion model of a file, its family and model sampling, LoRA patches.

    ``family`` is a :class:`comfy_notebook.families.Family` (latent format, extra model inputs,
    memory estimate); ``model_sampling`` overrides the family's default (``ModelSamplingDiscrete``,
    or what the file says: a v-prediction statistic, ``v_pred``/``ztsnr`` marker keys).
    """

    ref: ModelRef
    manager: ModelManager = field(repr=False)
    family: Any = None
    unet_config: Any = field(default=None, repr=False)  # models.unet.UNetConfig read from the file
    model_sampling: Any = field(default=None, repr=False)
    #: patches of the attention key/value inputs (``HypernetworkLoader``), in order:
    #: ``("attn1" | "attn2", patch)`` with ``patch(k, v) -> (k, v)``, active while the UNet runs
    attn_patches: tuple[tuple[str, Any], ...] = field(default=(), repr=False)
    #: functions run after the CFG formula each step (ComfyUI ``set_model_sampler_post_cfg_function``:
    #: ``CFGNorm``, ``CFGZeroStar``), in order; see ``sampling.guidance.PostCFGDenoiser``
    post_cfg: tuple[Callable[[dict[str, Any]], Tensor], ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if self.model_sampling is None and self.family is not None:
            object.__setattr__(self, "model_sampling", self.family.model_sampling())

    @property
    def latent_format(self) -> Any:
        """The family's latent format (channels, scale, preview factors, blank inpainting latent)."""
        return self.family.latent_format

    @property
    def schedule(self) -> Any:
        """The model sampling (it also answers the schedule questions: sigmas, timestep <-> sigma)."""
        return self.model_sampling

    @property
    def in_channels(self) -> int:
        """Input channels of the UNet: the latent's, or 2C + 1 for an inpainting UNet (latent + mask + masked latent)."""
        if self.unet_config is None:
            return int(self.latent_format.channels)
        return int(self.unet_config.in_channels)

    @property
    def concat_channels(self) -> int:
        """Channels the UNet takes beyond the latent (ComfyUI's ``c_concat``): 0, or C + 1 for inpainting."""
        return max(0, self.in_channels - self.latent_format.channels)

    @property
    def is_inpaint(self) -> bool:
        """Whether this is an inpainting model (ComfyUI's ``inpaint_model()``: in_channels > latent channels)."""
        return self.concat_channels > 0

    def with_patches(self, patches: Mapping[str, Any], strength: float) -> ModelValue:
        """A clone carrying ``patches`` (scaled by ``strength``); shares the base weights."""
        return replace(self, ref=self.ref.with_patches(patches, strength))

    def with_attn_patch(self, patch: Any, where: tuple[str, ...] = ("attn1", "attn2")) -> ModelValue:
        """A clone whose self- (``attn1``) and/or cross-attention (``attn2``) key/value inputs
        also go through ``patch`` (ComfyUI ``set_model_attn1_patch`` / ``attn2_patch``)."""
        return replace(self, attn_patches=(*self.attn_patches, *((w, patch) for w in where)))

    def with_post_cfg(self, fn: Callable[[dict[str, Any]], Tensor]) -> ModelValue:
        """A clone that also runs ``fn`` after the CFG formula each step (appended, as ComfyUI)."""
        return replace(self, post_cfg=(*self.post_cfg, fn))

    def with_model_sampling(self, model_sampling: Any) -> ModelValue:
        """A clone sampled through ``model_sampling`` (``ModelSamplingDiscrete``)."""
        return replace(self, model_sampling=model_sampling)

    def run(self, fn: Callable[[Any], Any], *, latent_shape: tuple[int, ...], cfg: bool = True,
            extra_memory: int = 0) -> Any:
        """``fn(unet)`` with the UNet on the compute device (out-of-memory recovery included).

        The reservation is the family's activation estimate plus ``extra_memory`` (what rides
        along the model's forward: ControlNet residuals, ``runtime.control_run.control_memory``).
        """
        dtype = self.ref.base.dtype or torch.float32
        need = self.family.unet_memory(tuple(latent_shape), dtype, cfg=cfg) + int(extra_memory)
        return self.manager.run(self.ref, fn, memory_required=need)

    def summary(self) -> str:
        """One line: family, name, dtype, where it lives, bytes (and the inpainting input)."""
        extra = f", inpainting UNet ({self.in_channels} input channels)" if self.is_inpaint else ""
        return _summary("MODEL", self.ref, self.family, extra)

    def __repr__(self) -> str:
        return f"<{self.summary()}>"


@dataclass(frozen=True, eq=False)
class ClipValue:
    """A CLIP: the family's text encoders (one managed model each), the layer, LoRA patches.

    ``refs`` maps encoder names (``"clip_l"``, ``"clip_g"``...) to their models; the family's
    recipe (:class:`comfy_notebook.families.TextEncoderSpec` and ``Family.combine``) says which
    layer each reads, how rows are padded and how outputs are joined.
    """

    refs: Mapping[str, ModelRef]
    manager: ModelManager = field(repr=False)
    tokenizer: Any = field(repr=False)
    family: Any = None
    layer: int | None = None
    embedding_dirs: tuple[str, ...] = ()

    @property
    def ref(self) -> ModelRef:
        """The text encoder's model (families with one encoder); see ``refs``."""
        if len(self.refs) != 1:
            raise AttributeError(f"this CLIP has {len(self.refs)} text encoders ({list(self.refs)}); use .refs")
        return next(iter(self.refs.values()))

    def with_layer(self, layer: int) -> ClipValue:
        """``CLIPSetLastLayer``: every encoder reads the hidden state of ``layer`` (-1 last, -2 penultimate)."""
        return replace(self, layer=layer)

    def with_patches(self, patches: Mapping[str, Any], strength: float) -> ClipValue:
        """A clone carrying ``patches`` (scaled by ``strength``).

        ``patches`` is ``{encoder name: {parameter: patch}}``, or for a one-encoder CLIP the
        parameter mapping itself.
        """
        if len(self.refs) == 1 and not all(k in self.refs for k in patches):
            patches = {next(iter(self.refs)): patches}
        refs = {k: (r.with_patches(patches[k], strength) if patches.get(k) else r) for k, r in self.refs.items()}
        return replace(self, refs=refs)

    def tokenize(self, text: str, encoder: str) -> Any:
        """ComfyUI's ``tokenize_with_weights`` for one encoder: rows padded with its pad token."""
        from comfy_notebook.models.prompt import make_embedding_lookup, tokenize_prompt

        spec = self.family.text_encoder(encoder)
        if spec.is_llm:  # one templated row, no weights (models/llm_prompt.py)
            from comfy_notebook.models.llm_prompt import get_llm_tokenizer, tokenize_llm_prompt

            return tokenize_llm_prompt(get_llm_tokenizer(spec.tokenizer), text, spec.template)
        if spec.tokenizer == "t5":
            from comfy_notebook.models.t5_tokenizer import T5Tokens, tokenize_t5_prompt

            return T5Tokens([tokenize_t5_prompt(text, min_length=spec.min_length or 0)])
        lookup = make_embedding_lookup(self.embedding_dirs, key=encoder) if self.embedding_dirs else None
        return tokenize_prompt(self.tokenizer, text, embedding_lookup=lookup, pad_token=spec.pad_token)

    def encode_tokens(self, tokens: Mapping[str, Any]) -> tuple[Tensor, Tensor | None]:
        """Encode per-encoder token rows (from :meth:`tokenize`): the family's ``(cond, pooled)``."""
        from comfy_notebook.models.prompt import encode_tokens

        outputs = {}
        for name in self.refs:
            spec = self.family.text_encoder(name)
            layer = spec.layer if self.layer is None else self.layer

            def run(model: Any, spec: Any = spec, layer: Any = layer, name: str = name) -> tuple[Tensor, Tensor]:
                if spec.is_llm:  # hidden states of one decoder layer, no pooled output
                    from comfy_notebook.models.llm_prompt import encode_llm_tokens

                    cond = encode_llm_tokens(model, tokens[name], layer=layer, device=self.manager.device,
                                             drop_front=spec.drop_front)
                    return cond.cpu(), None  # type: ignore[return-value]
                if spec.tokenizer == "t5":
                    from comfy_notebook.models.t5_tokenizer import encode_t5_tokens

                    cond = encode_t5_tokens(model, tokens[name].chunks[0], device=self.manager.device,
                                            dtype=getattr(model, "compute_dtype", None))
                    return cond.float().cpu(), None  # type: ignore[return-value]
                cond, pooled = encode_tokens(model, tokens[name].chunks, layer=layer, device=self.manager.device,
                                             final_norm=spec.final_norm, pad_token=spec.pad_token,
                                             project=spec.projected_pooled)
                return cond.float().cpu(), pooled.float().cpu()

            outputs[name] = self.manager.run(self.refs[name], run)
        return self.family.combine(outputs)  # type: ignore[no-any-return]

    def encode(self, text: str | Mapping[str, str]) -> tuple[Tensor, Tensor | None, list[str]]:
        """Encode a ComfyUI prompt: ``(cond [1, 77k, D], pooled [1, P], missing_embeddings)``.

        ``text`` may be one prompt for every encoder or ``{encoder name: prompt}``.
        """
        texts = {n: (text if isinstance(text, str) else text[n]) for n in self.refs}
        tokens = {n: self.tokenize(t, n) for n, t in texts.items()}
        missing = sorted({m for t in tokens.values() for m in t.missing_embeddings})
        cond, pooled = self.encode_tokens(tokens)
        return cond, pooled, missing

    def summary(self) -> str:
        """One line per encoder: family, name, dtype, where it lives, bytes, layer."""
        layer = "" if self.layer is None else f", layer {self.layer}"
        return "; ".join(_summary("CLIP", r, self.family, layer) for r in self.refs.values())

    def __repr__(self) -> str:
        return f"<{self.summary()}>"


@dataclass(frozen=True, eq=False)
class VAEValue:
    """A VAE: pixels <-> latents (the raw VAE latents; the family's scale is the sampler's)."""

    ref: ModelRef
    manager: ModelManager = field(repr=False)
    family: Any = None  # the checkpoint's family; None for a separate VAE file

    def _memory(self, pixels: int, *, encode: bool) -> int:
        dtype = self.ref.base.dtype or torch.float32
        elem = torch.empty((), dtype=dtype).element_size()
        # Activation peak of the decoder's highest-resolution blocks (~ 2 x 128 x H x W values).
        return int(pixels * elem * (160 if encode else 384))

    def decode(self, samples: Tensor, *, tiled: bool = False, tile: int | None = None,
               overlap: int | None = None) -> Tensor:
        """LATENT samples ``[B, C, h, w]`` -> IMAGE ``[B, 8h, 8w, 3]`` float32 in 0..1 on the CPU.

        ``tile``/``overlap`` (latent pixels) default to the VAE's own tiles (64/16 for the KL
        VAEs, ComfyUI's 32/8 for the Wan VAE).  A single-frame video latent ``[B, C, 1, h, w]``
        decodes like ``[B, C, h, w]``.
        """
        if samples.dim() == 5 and samples.shape[2] == 1:
            samples = samples[:, :, 0]
        b, _, h, w = samples.shape
        sizes = {k: v for k, v in (("tile", tile), ("overlap", overlap)) if v is not None}

        def run(vae: Any) -> Tensor:
            # the compute device, not a parameter's: a partially loaded VAE has some on the host
            z = samples.to(self.manager.device)  # the VAE casts to its own dtype
            return finite_or_upcast(  # a bf16 decode that overflowed is redone in fp32
                vae, lambda: vae.decode_tiled(z, **sizes) if tiled else vae.decode(z),
                streamer=self.ref.base.streamer)

        side = tile or 64
        need = self._memory(b * h * w * 64, encode=False) if not tiled else self._memory(
            side * side * 64, encode=False)
        try:
            pixels = self.manager.run(self.ref, run, memory_required=need)
        except ModelMemoryError:  # ComfyUI falls back to tiled decoding on out-of-memory
            if tiled:
                raise
            return self.decode(samples, tiled=True, tile=tile, overlap=overlap)
        image = ((pixels.float() + 1.0) / 2.0).clamp(0.0, 1.0)
        return image.permute(0, 2, 3, 1).cpu().contiguous()

    def encode(self, image: Tensor, *, tiled: bool = False, tile: int | None = None,
               overlap: int | None = None) -> Tensor:
        """IMAGE ``[B, H, W, C]`` in 0..1 -> latent ``[B, C, H/8, W/8]`` float32 on the CPU.

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
            sizes = {k: v for k, v in (("tile", tile), ("overlap", overlap)) if v is not None}
            return vae.encode_tiled(pix, **sizes) if tiled else vae.encode(pix)

        need = self._memory(b * h8 * w8, encode=True)
        return self.manager.run(self.ref, run, memory_required=need).float().cpu()

    def summary(self) -> str:
        """One line: family, name, dtype, where it lives, bytes."""
        return _summary("VAE", self.ref, self.family)

    def __repr__(self) -> str:
        return f"<{self.summary()}>"


def register_part(manager: ModelManager, name: str, kind: str, source: str,
                  factory: Callable[[], Any], module: Any | None, dtype: torch.dtype,
                  family: Any) -> ModelRef:
    """Reuse the managed model of ``name`` if this file part is known, else register it."""
    if name in manager:
        return manager[name].ref(holder=name)
    return manager.register(name, factory, kind=kind, source=source, dtype=dtype,
                            module=module, family=getattr(family, "name", None)).ref(holder=name)
