"""The shape every model family fills in: latent format, components, text encoding, sampling.

A :class:`Family` answers every question whose answer depends on *which* model a file holds
and that the weights' shapes alone cannot answer.  Runtime, sampling and the widgets ask the
family (through a value's ``family`` attribute or :func:`comfy_notebook.families.detect`) and
never name one.  Each family lives in its own module (``sd1.py``, ``sd2.py``, ``sdxl.py``) and is
listed, in detection order, in ``families/__init__.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from comfy_notebook.families._survey import Survey
    from comfy_notebook.sampling.model_sampling import ModelSampling

__all__ = [
    "Component",
    "Detected",
    "Family",
    "LatentFormat",
    "TextEncoderSpec",
]

#: Compute dtypes a KL VAE may run in, in preference order: fp16 overflows in the decoder's
#: up-blocks (SDXL's VAE always, SD1's on some images), so bf16 where the device has it, else
#: fp32 (ComfyUI ``VAE.working_dtypes``).
VAE_DTYPES = (torch.bfloat16, torch.float32)
#: Diffusion model and text encoder dtypes on an accelerator (ComfyUI's defaults).
HALF_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@dataclass(frozen=True)
class LatentFormat:
    """How a family's latents relate to its VAE's, and how to preview them.

    Parameters
    ----------
    name:
        Short name (ComfyUI ``latent_formats`` class name, e.g. ``"SD15"``).
    scale_factor, shift_factor:
        ``process_in(z) = (z - shift) * scale`` (VAE latent -> diffusion latent);
        ``process_out`` is the inverse.
    channels:
        Latent channels.
    downscale:
        Pixels per latent pixel along one side.
    rgb_factors, rgb_bias:
        The latent2rgb preview: ``rgb = latent^T @ factors + bias`` per pixel (``C x 3``).
    inpaint_blank:
        The diffusion latent of an all-black image, one value per channel: the masked image an
        inpainting model gets when no mask is given (ComfyUI ``blank_inpaint_image_like``).
    latents_mean, latents_std:
        Per-channel statistics (Wan-2.1 VAE latents, ComfyUI ``latent_formats.Wan21``): when
        set, ``process_in(z) = (z - mean) * scale / std`` per channel and ``shift_factor`` is
        unused; None (every other family) keeps the scalar form.
    """

    name: str
    scale_factor: float
    shift_factor: float = 0.0
    channels: int = 4
    downscale: int = 8
    rgb_factors: tuple[tuple[float, ...], ...] | None = None
    rgb_bias: tuple[float, ...] | None = None
    inpaint_blank: tuple[float, ...] | None = None
    latents_mean: tuple[float, ...] | None = None
    latents_std: tuple[float, ...] | None = None

    def _per_channel(self, values: tuple[float, ...], like: Tensor) -> Tensor:
        """``values`` shaped to broadcast over channel dim 1 of ``like`` (4-D or 5-D latents)."""
        t = torch.tensor(values, dtype=like.dtype, device=like.device)
        return t.view(1, len(values), *([1] * (like.dim() - 2)))

    def process_in(self, latent: Tensor) -> Tensor:
        """VAE latent -> diffusion-model latent."""
        if self.latents_mean is not None and self.latents_std is not None:
            mean, std = self._per_channel(self.latents_mean, latent), self._per_channel(self.latents_std, latent)
            return (latent - mean) * self.scale_factor / std
        if self.shift_factor:
            latent = latent - self.shift_factor
        return latent * self.scale_factor

    def process_out(self, latent: Tensor) -> Tensor:
        """Diffusion-model latent -> VAE latent."""
        if self.latents_mean is not None and self.latents_std is not None:
            mean, std = self._per_channel(self.latents_mean, latent), self._per_channel(self.latents_std, latent)
            return latent * std / self.scale_factor + mean
        latent = latent / self.scale_factor
        return latent + self.shift_factor if self.shift_factor else latent


@dataclass(frozen=True)
class TextEncoderSpec:
    """How one text encoder of a family conditions the model.

    Parameters
    ----------
    name:
        Component name (``"clip_l"``, ``"clip_g"``, ``"clip_h"``), also the key under which
        textual-inversion files store this encoder's vectors.
    layer:
        The hidden layer read by default (None: the last; -2: the penultimate).
    final_norm:
        Apply the final layer norm to that hidden state (ComfyUI ``layer_norm_hidden_state``).
    pad_token:
        Token that pads each 77-token row (the end token 49407, or 0 for OpenCLIP encoders).
    projected_pooled:
        The pooled output goes through the encoder's ``text_projection``.
    tokenizer, min_length:
        The tokenizer kind and, for T5, the padded length (ComfyUI: 256 for Flux, 77 for SD3).
    template, drop_front:
        Decoder-only LLM encoders (``tokenizer`` ``"qwen"``, see ``models/llm_prompt.py``): the
        chat template the prompt is put into (``{}`` marks the prompt; None: the bare prompt),
        and how many tokens to drop from the front of the hidden states, a count or a function
        of the row's ids (ComfyUI's Qwen-Image drops the system prompt).  Such an encoder reads
        the hidden state of ``layer`` (a decoder layer, negative from the end, without the
        final norm unless ``final_norm``), gets one unpadded row with no start/end tokens and
        no weight syntax, and has no pooled output.
    """

    name: str
    layer: int | None = None
    final_norm: bool = True
    pad_token: int = 49407
    projected_pooled: bool = False
    #: ``"clip"`` (77-token BPE rows), ``"t5"`` (one SentencePiece row, see ``models.t5_tokenizer``)
    #: or an LLM tokenizer (``"qwen"``, see ``models.llm_prompt``)
    tokenizer: str = "clip"
    #: t5: pad the row with ``pad_token`` to at least this many tokens
    min_length: int | None = None
    #: LLM encoders: the chat template (``{}`` = the prompt)
    template: str | None = None
    #: LLM encoders: tokens dropped from the front of the hidden states (count, or ids -> count)
    drop_front: int | Callable[[Sequence[int]], int] = 0

    @property
    def is_llm(self) -> bool:
        """Whether this is a decoder-only LLM encoder (one unpadded templated row, no pooled output)."""
        from comfy_notebook.models.llm_prompt import is_llm_tokenizer

        return is_llm_tokenizer(self.tokenizer)


@dataclass(frozen=True)
class Component:
    """One model of a file: what it is, where its keys are, its configuration.

    Parameters
    ----------
    name:
        ``"unet"``, ``"vae"`` or a text encoder's name (``"clip_l"``, ...).
    kind:
        The model kind the device policy and the model manager know: ``"unet"``, ``"vae"``
        or ``"clip"``.
    prefix:
        Key prefix of the component in the file.
    config:
        The architecture's configuration (``UNetConfig``, ``VAEConfig``, ``CLIPTextConfig``).
    layout:
        Key layout: ``"ldm"`` (our module names), ``"hf"`` (transformers CLIP, our names too) or
        ``"openclip"`` (converted on load by :mod:`comfy_notebook.models.convert`).
    dtypes:
        Compute dtypes it supports on an accelerator, in preference order (the CPU computes in
        fp32); the device policy picks the first its device supports unless told otherwise.
    architecture:
        The module class built from ``config`` (None: the kind's LDM class, UNetModel /
        AutoencoderKL / CLIPTextModel); ``runtime.loading.build_component`` reads it.
    """

    name: str
    kind: str
    prefix: str
    config: Any
    layout: str = "ldm"
    dtypes: tuple[torch.dtype, ...] = HALF_DTYPES
    #: the module class, when not the one of its kind (``models.flux.Flux``, ``models.t5.T5Encoder``)
    architecture: Any = None
    #: ComfyUI's UNETLoader ``weight_dtype`` (``default`` / ``fp8_e4m3fn`` / ``fp8_e4m3fn_fast`` /
    #: ``fp8_e5m2``); fp8 storage needs an architecture that takes a ``linear`` factory
    weight_dtype: str = "default"


@dataclass(frozen=True)
class Detected:
    """What :func:`comfy_notebook.families.detect` found in a state dict.

    ``family`` is None for files that belong to no single family (a separate VAE, a text
    encoder file); ``components`` maps component names to :class:`Component`; ``sampling`` holds
    model-sampling options read from the file (``prediction``, ``zsnr``); ``extras`` are known
    keys outside the architectures (schedule buffers, ``position_ids``), ignored when loading.
    """

    family: Family | None
    components: dict[str, Component]
    sampling: dict[str, Any] = field(default_factory=dict)
    extras: tuple[str, ...] = ()
    source: str = ""

    @property
    def unet(self) -> Any:
        """The UNet's configuration, or None."""
        c = self.components.get("unet")
        return None if c is None else c.config

    @property
    def vae(self) -> Any:
        """The VAE's configuration, or None."""
        c = self.components.get("vae")
        return None if c is None else c.config

    @property
    def text_encoders(self) -> dict[str, Component]:
        """Text-encoder components by name, in the family's order."""
        return {k: c for k, c in self.components.items() if c.kind == "clip"}

    @property
    def prefixes(self) -> dict[str, str]:
        """Component name -> key prefix."""
        return {k: c.prefix for k, c in self.components.items()}

    def model_sampling(self) -> ModelSampling:
        """The model sampling of this file's diffusion model (its family's, with the file's options)."""
        if self.family is None:
            raise ValueError(f"{self.source or 'this file'} holds no diffusion model of a known family")
        return self.family.model_sampling(**self.sampling)


class Family:
    """A model family: subclass per family module, one instance in the registry.

    Class attributes a family sets
    ------------------------------
    name, title:
        Short id (``"sd1"``) and the name users know (``"Stable Diffusion 1.x"``).
    latent_format:
        Its :class:`LatentFormat`.
    text_encoders:
        Its :class:`TextEncoderSpec` s, in the order their outputs are concatenated.
    prediction, beta_start, beta_end, num_timesteps:
        Default model sampling (discrete DDPM schedule).
    clip_types:
        ``CLIPLoader``/``DualCLIPLoader`` ``type`` -> the encoder names that make this family's CLIP.
    lora_te_prefixes:
        kohya text-encoder prefix -> encoder name (``lora_te_`` / ``lora_te1_`` / ``lora_te2_``).
    memory_factor:
        Activation-memory factor of one diffusion-model forward (see
        :func:`comfy_notebook.runtime.manager.estimate_unet_memory`).
    merge_blocks:
        The per-block ratio inputs of ComfyUI's ``ModelMerge<family>`` node: UNet key prefixes.
    checkpoint_layout:
        Component name -> (key prefix, key layout ``"ldm"``/``"hf"``/``"openclip"``) of the
        single-file checkpoint ``CheckpointSave`` writes, as ComfyUI saves it (empty: not supported).
    modelspec_architecture:
        The ``modelspec.architecture`` ComfyUI writes into a saved checkpoint's metadata (None:
        ComfyUI writes no modelspec block for this family).
    """

    name: str = ""
    title: str = ""
    latent_format: LatentFormat
    text_encoders: tuple[TextEncoderSpec, ...] = ()
    prediction: str = "eps"
    beta_start: float = 0.00085
    beta_end: float = 0.012
    num_timesteps: int = 1000
    clip_types: Mapping[str, tuple[str, ...]] = {}
    lora_te_prefixes: Mapping[str, str] = {}
    memory_factor: float = 2.0
    merge_blocks: tuple[str, ...] = ()
    checkpoint_layout: Mapping[str, tuple[str, str]] = {}
    modelspec_architecture: str | None = None
    #: cross-attention width of the released models (tells a LoRA's family from its shapes)
    context_dim: int | None = None
    #: LoRA key prefixes only this family's LoRAs use (kohya's two text encoders ...)
    lora_markers: tuple[str, ...] = ()

    # detection ---------------------------------------------------------------------------
    def matches(self, survey: Survey) -> bool:
        """Whether the surveyed file holds (part of) a model of this family."""
        raise NotImplementedError

    def detect(self, survey: Survey) -> Detected:
        """The components of a file this family :meth:`matches`."""
        raise NotImplementedError

    def text_encoder_component(self, survey: Survey) -> Component | None:
        """The text-encoder component of a file that holds only a text encoder this family
        reads (an LLM's ``text_encoders/`` file), else None.  Asked when no family's
        :meth:`matches` accepts the file; CLIP and T5 files are recognised without it."""
        return None

    # model sampling ----------------------------------------------------------------------
    def model_sampling(self, prediction: str | None = None, zsnr: bool = False) -> ModelSampling:
        """The family's model sampling (a file or ``ModelSamplingDiscrete`` may override the prediction)."""
        from comfy_notebook.sampling.model_sampling import ModelSampling

        return ModelSampling.discrete(prediction or self.prediction, beta_start=self.beta_start,
                                      beta_end=self.beta_end, num_timesteps=self.num_timesteps,
                                      zsnr=zsnr)

    # text encoding -----------------------------------------------------------------------
    def text_encoder(self, name: str) -> TextEncoderSpec:
        """The spec of encoder ``name``."""
        for spec in self.text_encoders:
            if spec.name == name:
                return spec
        raise KeyError(f"{self.title} has no text encoder {name!r} "
                       f"(it has {[s.name for s in self.text_encoders]})")

    def combine(self, outputs: Mapping[str, tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor | None]:
        """Per-encoder ``(cond [1, T, D], pooled [1, P])`` -> the model's ``(cond, pooled)``.

        Default: a single encoder's outputs as they are.
        """
        (cond, pooled), = outputs.values()
        return cond, pooled

    def model_inputs(self, unet_config: Any, params: Mapping[str, Any]) -> dict[str, Tensor]:
        """Extra model inputs of one conditioning entry (ComfyUI ``extra_conds``; none by default).

        ``params`` are the entry's options plus ``width``, ``height``, ``prompt_type``,
        ``noise``, ``latent_image``, ``denoise_mask`` and ``device`` (see ``ksample``).
        """
        return {}

    def lora_text_encoders(self, keys: Mapping[str, Any]) -> dict[str, tuple[Any, tuple[str, ...]]]:
        """``lora_patches(text_encoders=...)``: encoder -> (its parameter names, LoRA prefixes)."""
        out: dict[str, tuple[Any, tuple[str, ...]]] = {}
        for enc, params in keys.items():
            out[enc] = (params, tuple(p for p, e in self.lora_te_prefixes.items() if e == enc))
        return out

    def unet_memory(self, latent_shape: tuple[int, ...], dtype: torch.dtype, cfg: bool = True) -> int:
        """Activation memory of one sampling step (bytes)."""
        from comfy_notebook.runtime.manager import estimate_unet_memory

        return estimate_unet_memory(tuple(latent_shape), dtype, cfg=cfg, factor=self.memory_factor)

    def __repr__(self) -> str:
        return f"<family {self.name}: {self.title}>"
