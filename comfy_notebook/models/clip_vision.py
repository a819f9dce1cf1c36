"""CLIP vision encoder (ViT-L/14, ViT-H/14, ViT-bigG/14 image towers) with its projection.

Reference: OpenAI CLIP ``clip/model.py`` (VisionTransformer) as packaged by transformers
(``models/clip/modeling_clip.py`` ``CLIPVisionModelWithProjection``); checked against it in
``tests/models/test_clip_vision.py``.  Parameter names are the transformers keys that ComfyUI's
``models/clip_vision`` files use: ``vision_model.embeddings.{class_embedding,
patch_embedding.weight, position_embedding.weight}``, ``vision_model.pre_layrnorm.*``,
``vision_model.encoder.layers.{i}.{self_attn.{q,k,v,out}_proj, layer_norm{1,2}, mlp.fc{1,2}}.*``,
``vision_model.post_layernorm.*``, ``visual_projection.weight``.

Outputs follow ComfyUI's ``clip_vision.encode_image`` (Comfy-Org/ComfyUI@a125cd8): the encoder
output (``last_hidden_state``, no final norm), the output of the second-to-last layer
(``penultimate_hidden_states``) and the projected, post-normed class token (``image_embeds``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from comfy_notebook.models.clip import CLIPMLP

__all__ = ["CLIPVisionConfig", "CLIPVisionModel", "CLIPVisionOutput"]

PREFIX = "vision_model."


@dataclass(frozen=True)
class CLIPVisionConfig:
    """Sizes of a CLIP image tower (ViT-L/14 by default)."""

    width: int = 1024
    layers: int = 24
    heads: int = 16
    intermediate: int = 4096
    patch_size: int = 14
    image_size: int = 224
    projection_dim: int = 768
    activation: str = "quick_gelu"
    layer_norm_eps: float = 1e-5

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, Any], prefix: str = "") -> CLIPVisionConfig:
        """Read the sizes from a state dict's shapes.

        The head count is 16 in every released tower (ComfyUI's configs); the activation is
        quick-GELU for OpenAI's ViT-L (up to 24 layers, and smaller test towers) and GELU for the
        LAION ViT-H (32 layers) and ViT-bigG (48), as ComfyUI picks its config by layer count.
        """
        p = prefix + PREFIX
        patch = sd[p + "embeddings.patch_embedding.weight"]  # [D, 3, P, P]
        width, patch_size = int(patch.shape[0]), int(patch.shape[-1])
        positions = int(sd[p + "embeddings.position_embedding.weight"].shape[0])
        side = round((positions - 1) ** 0.5)
        layers = 0
        while f"{p}encoder.layers.{layers}.layer_norm1.weight" in sd:
            layers += 1
        intermediate = int(sd[f"{p}encoder.layers.0.mlp.fc1.weight"].shape[0])
        projection = sd.get(prefix + "visual_projection.weight")
        return cls(width=width, layers=layers, heads=16 if width % 16 == 0 else 1,
                   intermediate=intermediate, patch_size=patch_size, image_size=side * patch_size,
                   projection_dim=int(projection.shape[0]) if projection is not None else width,
                   activation="quick_gelu" if layers < 30 else "gelu")


class CLIPVisionOutput(NamedTuple):
    """``image_embeds`` [B, P], ``last_hidden_state`` [B, N+1, D], ``penultimate_hidden_states`` [B, N+1, D]."""

    image_embeds: Tensor
    last_hidden_state: Tensor
    penultimate_hidden_states: Tensor


class VisionAttention(nn.Module):
    """Multi-head self-attention over all tokens (no causal mask)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, T, D] -> [B, T, D]."""
        b, t, d = x.shape
        h = self.heads
        q = self.q_proj(x).view(b, t, h, d // h).transpose(1, 2)  # [B, H, T, Dh]
        k = self.k_proj(x).view(b, t, h, d // h).transpose(1, 2)
        v = self.v_proj(x).view(b, t, h, d // h).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)  # [B, H, T, Dh]
        return self.out_proj(out.transpose(1, 2).reshape(b, t, d))


class VisionLayer(nn.Module):
    """Pre-norm residual block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, cfg: CLIPVisionConfig) -> None:
        super().__init__()
        self.self_attn = VisionAttention(cfg.width, cfg.heads)
        self.layer_norm1 = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        self.mlp = CLIPMLP(cfg.width, cfg.intermediate, cfg.activation)
        self.layer_norm2 = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, T, D] -> [B, T, D]."""
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class VisionEmbeddings(nn.Module):
    """Patch convolution, a class token and learned position embeddings."""

    def __init__(self, cfg: CLIPVisionConfig) -> None:
        super().__init__()
        self.class_embedding = nn.Parameter(torch.zeros(cfg.width))
        self.patch_embedding = nn.Conv2d(3, cfg.width, cfg.patch_size, stride=cfg.patch_size, bias=False)
        n = (cfg.image_size // cfg.patch_size) ** 2 + 1
        self.position_embedding = nn.Embedding(n, cfg.width)

    def forward(self, pixels: Tensor) -> Tensor:
        """pixels: [B, 3, S, S] -> tokens [B, N+1, D]."""
        x = self.patch_embedding(pixels.to(self.patch_embedding.weight.dtype))  # [B, D, S/P, S/P]
        x = x.flatten(2).transpose(1, 2)  # [B, N, D]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # [B, 1, D]
        return torch.cat([cls, x], dim=1) + self.position_embedding.weight.to(x.dtype)


class VisionEncoder(nn.Module):
    """The stack of encoder layers."""

    def __init__(self, cfg: CLIPVisionConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(VisionLayer(cfg) for _ in range(cfg.layers))


class VisionTransformer(nn.Module):
    """Embeddings, pre-norm, encoder, post-norm (the ``vision_model.`` prefix)."""

    def __init__(self, cfg: CLIPVisionConfig) -> None:
        super().__init__()
        self.embeddings = VisionEmbeddings(cfg)
        self.pre_layrnorm = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)  # sic: the released key
        self.encoder = VisionEncoder(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)


class CLIPVisionModel(nn.Module):
    """The image tower and its projection: ``model(pixels) -> CLIPVisionOutput``."""

    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__()
        self.config = config
        self.vision_model = VisionTransformer(config)
        self.visual_projection = nn.Linear(config.width, config.projection_dim, bias=False)

    def forward(self, pixels: Tensor) -> CLIPVisionOutput:
        """pixels: [B, 3, S, S], normalised (see ``nodes.clip_vision.clip_preprocess``)."""
        vm = self.vision_model
        x = vm.pre_layrnorm(vm.embeddings(pixels))  # [B, N+1, D]
        penultimate = x
        for i, layer in enumerate(vm.encoder.layers):
            x = layer(x)
            if i == len(vm.encoder.layers) - 2:
                penultimate = x
        pooled = vm.post_layernorm(x[:, 0, :])  # [B, D]
        return CLIPVisionOutput(self.visual_projection(pooled), x, penultimate)
