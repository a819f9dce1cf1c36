"""A first look at a state dict: where each part's keys are and a few telling shapes.

Families decide from a :class:`Survey` whether a file is theirs (``Family.matches``) and build
its components (``Family.detect``) with the pure shape readers of
:mod:`comfy_notebook.models.detect`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from comfy_notebook.families.base import VAE_DTYPES, Component
from comfy_notebook.models.convert import OpenCLIPView
from comfy_notebook.models.detect import (
    UNET_PREFIX,
    VAE_PREFIX,
    read_clip_config,
    read_unet_config,
    read_vae_config,
    shape,
)

__all__ = ["Survey", "survey"]

_TOKEN = "text_model.embeddings.token_embedding.weight"


@dataclass
class Survey:
    """Where the parts of a state dict are (prefixes) and the shapes families look at."""

    sd: Mapping[str, Any]
    keys: list[str]
    source: str = ""
    unet_prefix: str | None = None
    vae_prefix: str | None = None
    #: what the UNet's shapes say without a head rule: cross-attention width, ``y`` width,
    #: input channels, linear projections
    context_dim: int | None = None
    adm_in_channels: int | None = None
    linear_projection: bool = False
    #: top-level text encoders of a text-encoder file (transformers names): prefix ""
    top_text_width: int | None = None
    key_prefixes: set[str] = field(default_factory=set)

    def has_prefix(self, prefix: str) -> bool:
        """Whether some key starts with ``prefix``."""
        return any(k.startswith(prefix) for k in self.keys)

    # components --------------------------------------------------------------------------
    def unet(self, *, num_heads: int = -1, num_head_channels: int = 64,
             dtypes: tuple[Any, ...] | None = None) -> Component:
        """The UNet component with the family's head rule."""
        assert self.unet_prefix is not None
        config = read_unet_config(self.sd, self.keys, self.unet_prefix, num_heads=num_heads,
                                  num_head_channels=num_head_channels)
        extra = {} if dtypes is None else {"dtypes": dtypes}
        return Component("unet", "unet", self.unet_prefix, config, "ldm", **extra)

    def vae(self) -> Component:
        """The VAE component (KL autoencoder)."""
        assert self.vae_prefix is not None
        config = read_vae_config(self.sd, self.keys, self.vae_prefix)
        return Component("vae", "vae", self.vae_prefix, config, "ldm", dtypes=VAE_DTYPES)

    def text_encoder(self, name: str, prefix: str, layout: str, activation: str) -> Component:
        """A text-encoder component; ``layout`` ``"openclip"`` is read through the renaming view."""
        view = OpenCLIPView(self.sd, prefix) if layout == "openclip" else self.sd
        config = read_clip_config(view, "" if layout == "openclip" else prefix, activation=activation)
        return Component(name, "clip", prefix, config, layout)


def survey(sd: Mapping[str, Any], source: str = "") -> Survey:
    """Survey a state dict (keys and shapes only)."""
    keys = list(sd.keys())
    s = Survey(sd=sd, keys=keys, source=source)
    if UNET_PREFIX + "input_blocks.0.0.weight" in sd:
        s.unet_prefix = UNET_PREFIX
    elif "input_blocks.0.0.weight" in sd:
        s.unet_prefix = ""
    if VAE_PREFIX + "decoder.conv_in.weight" in sd:
        s.vae_prefix = VAE_PREFIX
    elif "decoder.conv_in.weight" in sd and "encoder.conv_in.weight" in sd:
        s.vae_prefix = ""
    if s.unet_prefix is not None:
        p = s.unet_prefix
        attn = [k for k in keys if k.startswith(p) and k.endswith("attn2.to_k.weight")]
        s.context_dim = shape(sd, attn[0])[1] if attn else None
        label = p + "label_emb.0.0.weight"
        s.adm_in_channels = shape(sd, label)[1] if label in sd else None
        proj = [k for k in keys if k.startswith(p) and k.endswith("proj_in.weight")]
        s.linear_projection = bool(proj) and len(shape(sd, proj[0])) == 2
    if _TOKEN in sd:
        s.top_text_width = shape(sd, _TOKEN)[1]
    s.key_prefixes = {".".join(k.split(".")[:3]) for k in keys}
    return s
