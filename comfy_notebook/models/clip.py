"""CLIP text encoder (the Stable Diffusion 1.x conditioning model).

Reference: OpenAI CLIP ``clip/model.py`` (text tower) as packaged by transformers
(``models/clip/modeling_clip.py``); behaviour checked against ``transformers.CLIPTextModel``
(differential tests in ``tests/models/test_clip.py``).

Parameter names equal the LDM checkpoint keys below ``cond_stage_model.transformer.``:
``text_model.embeddings.{token,position}_embedding.weight``,
``text_model.encoder.layers.{i}.self_attn.{q,k,v,out}_proj.{weight,bias}``,
``text_model.encoder.layers.{i}.layer_norm{1,2}.{weight,bias}``,
``text_model.encoder.layers.{i}.mlp.fc{1,2}.{weight,bias}``,
``text_model.final_layer_norm.{weight,bias}``.
Checkpoints also carry ``text_model.embeddings.position_ids`` (an ``arange``); the model does not
own it, loaders drop it (it is listed in :data:`KNOWN_EXTRA_KEYS`).

Forward contract
----------------
``model(tokens, *, embeds=None, layer=None, final_norm_on_hidden=True)`` returns a
:class:`CLIPTextOutput` named tuple ``(hidden, pooled, hidden_states)``:

- ``hidden`` ``[B, T, D]``: the output of the selected layer (``layer=None`` or ``-1``: the last;
  ``-2``: the penultimate, as ComfyUI's ``CLIPSetLastLayer(stop_at_clip_layer=-2)``; ``k >= 0``:
  after layer ``k``, 0-based), with the final layer norm applied to it (ComfyUI's SD1
  ``layer_norm_hidden_state=True``) unless ``final_norm_on_hidden=False``.
- ``pooled`` ``[B, D]``: the final-normed last layer at the first position whose token id is
  ``eos_token_id`` (what transformers calls ``pooler_output``; ComfyUI's SD1 pooled output).
- ``hidden_states``: ``layers + 1`` tensors ``[B, T, D]``, the embeddings and every layer's output
  before the final norm (transformers' ``output_hidden_states`` convention).

``embeds`` ``[B, T, D]`` replaces the token-embedding lookup (textual inversion vectors spliced
in); position embeddings are still added, and ``tokens`` still decides the pooled position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from comfy_notebook.errors import ModelLoadError, NodeError

__all__ = ["KNOWN_EXTRA_KEYS", "CLIPTextConfig", "CLIPTextModel", "CLIPTextOutput"]

#: Checkpoint keys (relative to the model) that carry no learned state and are dropped on load.
KNOWN_EXTRA_KEYS = ("text_model.embeddings.position_ids",)

_ACTIVATIONS = ("quick_gelu", "gelu")


@dataclass(frozen=True)
class CLIPTextConfig:
    """Shape of a CLIP text transformer.

    Parameters
    ----------
    vocab_size:
        Rows of the token embedding (49408 for the OpenAI BPE vocabulary).
    width:
        Hidden size ``D``.
    layers:
        Number of transformer layers.
    heads:
        Attention heads (CLIP text heads are 64 wide: ``heads = width // 64``).
    max_positions:
        Rows of the position embedding (77).
    intermediate:
        Hidden size of the MLP.
    activation:
        ``"quick_gelu"`` (OpenAI CLIP, SD1) or ``"gelu"`` (OpenCLIP, SD2).
    eos_token_id:
        Token whose first occurrence gives the pooled output.
    layer_norm_eps:
        Epsilon of every layer norm.
    projection_dim:
        Width of ``text_projection`` (a bias-free linear map of the pooled output; OpenCLIP
        ViT-bigG in SDXL), or None when the model has none.
    """

    vocab_size: int = 49408
    width: int = 768
    layers: int = 12
    heads: int = 12
    max_positions: int = 77
    intermediate: int = 3072
    activation: str = "quick_gelu"
    eos_token_id: int = 49407
    layer_norm_eps: float = 1e-5
    projection_dim: int | None = None

    def __post_init__(self) -> None:
        if self.activation not in _ACTIVATIONS:
            raise ModelLoadError(
                f"CLIPTextConfig.activation must be one of {_ACTIVATIONS}, "
                f"received {self.activation!r}."
            )
        if self.width % self.heads != 0:
            raise ModelLoadError(
                f"CLIPTextConfig.width ({self.width}) must be divisible by heads ({self.heads})."
            )

    @classmethod
    def sd1(cls) -> CLIPTextConfig:
        """OpenAI CLIP ViT-L/14 text tower, as used by Stable Diffusion 1.x."""
        return cls()

    @classmethod
    def clip_h(cls) -> CLIPTextConfig:
        """OpenCLIP ViT-H/14 text tower (Stable Diffusion 2.x)."""
        return cls(width=1024, layers=24, heads=16, intermediate=4096, activation="gelu",
                   projection_dim=1024)

    @classmethod
    def clip_g(cls) -> CLIPTextConfig:
        """OpenCLIP ViT-bigG/14 text tower with its projection (SDXL)."""
        return cls(width=1280, layers=32, heads=20, intermediate=5120, activation="gelu",
                   projection_dim=1280)

    @classmethod
    def tiny(cls) -> CLIPTextConfig:
        """A tiny random-weight config for tests (one 64-wide head, two layers, real vocab)."""
        return cls(width=64, layers=2, heads=1, intermediate=256)

    @classmethod
    def from_state_dict(cls, sd: Any, prefix: str = "", *, activation: str = "quick_gelu") -> CLIPTextConfig:
        """Infer the config from parameter shapes (heads = width // 64).

        ``sd`` maps names (after ``prefix``) to tensors; only shapes are read.  The activation
        is not visible in shapes: quick-GELU for OpenAI CLIP, GELU for OpenCLIP towers.
        """
        p = prefix + "text_model."
        try:
            vocab, width = sd[p + "embeddings.token_embedding.weight"].shape
            positions = sd[p + "embeddings.position_embedding.weight"].shape[0]
            intermediate = sd[p + "encoder.layers.0.mlp.fc1.weight"].shape[0]
        except KeyError as exc:
            raise ModelLoadError(
                f"not a CLIP text encoder state dict: key {exc.args[0]!r} is missing. Expected "
                f"keys like '{p}embeddings.token_embedding.weight'; check the prefix."
            ) from None
        layers = 0
        while f"{p}encoder.layers.{layers}.mlp.fc1.weight" in sd:
            layers += 1
        return cls(
            vocab_size=int(vocab),
            width=int(width),
            layers=layers,
            heads=max(1, int(width) // 64),
            max_positions=int(positions),
            intermediate=int(intermediate),
            activation=activation,
            projection_dim=int(sd[prefix + "text_projection.weight"].shape[0])
            if prefix + "text_projection.weight" in sd else None,
        )


class CLIPTextOutput(NamedTuple):
    """What :meth:`CLIPTextModel.forward` returns (see the module docstring)."""

    hidden: Tensor  # [B, T, D]
    pooled: Tensor  # [B, D]
    hidden_states: list[Tensor]  # layers + 1 tensors [B, T, D]


class CLIPAttention(nn.Module):
    """Causal multi-head self-attention with biased q/k/v/out projections."""

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
        k = self.k_proj(x).view(b, t, h, d // h).transpose(1, 2)  # [B, H, T, Dh]
        v = self.v_proj(x).view(b, t, h, d // h).transpose(1, 2)  # [B, H, T, Dh]
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [B, H, T, Dh]
        return self.out_proj(out.transpose(1, 2).reshape(b, t, d))


class CLIPMLP(nn.Module):
    """fc1 -> quick-GELU (or GELU) -> fc2."""

    def __init__(self, width: int, intermediate: int, activation: str) -> None:
        super().__init__()
        self.activation = activation
        self.fc1 = nn.Linear(width, intermediate)
        self.fc2 = nn.Linear(intermediate, width)

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, T, D] -> [B, T, D]."""
        x = self.fc1(x)  # [B, T, I]
        quick = self.activation == "quick_gelu"
        x = x * torch.sigmoid(1.702 * x) if quick else F.gelu(x)
        return self.fc2(x)


class CLIPEncoderLayer(nn.Module):
    """Pre-norm residual block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, cfg: CLIPTextConfig) -> None:
        super().__init__()
        self.self_attn = CLIPAttention(cfg.width, cfg.heads)
        self.layer_norm1 = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        self.mlp = CLIPMLP(cfg.width, cfg.intermediate, cfg.activation)
        self.layer_norm2 = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, T, D] -> [B, T, D]."""
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPEmbeddings(nn.Module):
    """Token plus learned absolute position embeddings."""

    def __init__(self, cfg: CLIPTextConfig) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.position_embedding = nn.Embedding(cfg.max_positions, cfg.width)

    def forward(self, tokens: Tensor, embeds: Tensor | None = None) -> Tensor:
        """tokens: [B, T] long (embeds: [B, T, D] or None) -> [B, T, D]."""
        t = tokens.shape[1]
        x = self.token_embedding(tokens) if embeds is None else embeds  # [B, T, D]
        return x + self.position_embedding.weight[:t].to(x.dtype)  # [T, D] broadcast


class CLIPEncoder(nn.Module):
    """The stack of encoder layers."""

    def __init__(self, cfg: CLIPTextConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CLIPEncoderLayer(cfg) for _ in range(cfg.layers))


class CLIPTextTransformer(nn.Module):
    """Embeddings, encoder and final layer norm (the ``text_model.`` prefix)."""

    def __init__(self, cfg: CLIPTextConfig) -> None:
        super().__init__()
        self.embeddings = CLIPEmbeddings(cfg)
        self.encoder = CLIPEncoder(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)


class CLIPTextModel(nn.Module):
    """CLIP text transformer with per-layer outputs and an EOS-pooled output.

    Parameters
    ----------
    config:
        The shape; :meth:`CLIPTextConfig.sd1` for Stable Diffusion 1.x.

    Examples
    --------
    >>> model = CLIPTextModel(CLIPTextConfig.tiny())
    >>> tokens = torch.full((1, 77), 49407); tokens[0, 0] = 49406
    >>> hidden, pooled, _ = model(tokens, layer=-2)
    >>> hidden.shape, pooled.shape
    (torch.Size([1, 77, 64]), torch.Size([1, 64]))
    """

    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        self.config = config
        self.text_model = CLIPTextTransformer(config)
        if config.projection_dim is not None:
            self.text_projection = nn.Linear(config.width, config.projection_dim, bias=False)

    def project(self, pooled: Tensor) -> Tensor:
        """``text_projection(pooled)`` [B, P] (transformers' ``text_embeds``); identity without one."""
        if self.config.projection_dim is None:
            return pooled
        return self.text_projection(pooled)

    @property
    def token_embedding(self) -> nn.Embedding:
        """The token-embedding table ``[vocab_size, D]`` (for splicing in embeddings)."""
        return self.text_model.embeddings.token_embedding

    def _layer_index(self, layer: int | None) -> int:
        """Map a ComfyUI-style layer number to an index into ``hidden_states``."""
        n = self.config.layers
        if layer is None:
            return n
        if -n <= layer < 0:
            return n + 1 + layer
        if 0 <= layer < n:
            return layer + 1
        raise NodeError(
            "CLIP layer out of range",
            input_name="layer",
            expected=f"None, -{n}..-1 (from the end) or 0..{n - 1}",
            received=layer,
            fix="use -1 for the last layer or -2 for the penultimate (clip skip 2)",
        )

    def forward(
        self,
        tokens: Tensor,
        *,
        embeds: Tensor | None = None,
        layer: int | None = None,
        final_norm_on_hidden: bool = True,
    ) -> CLIPTextOutput:
        """Encode token ids.

        Parameters
        ----------
        tokens:
            ``[B, T]`` long token ids, ``T <= max_positions``.
        embeds:
            Optional ``[B, T, D]`` input embeddings replacing the token lookup.
        layer:
            Which layer's output to return as ``hidden`` (None = last, negative from the end).
        final_norm_on_hidden:
            Apply the final layer norm to ``hidden`` (ComfyUI SD1 behaviour).

        Returns
        -------
        CLIPTextOutput
            ``(hidden [B, T, D], pooled [B, D], hidden_states)``.
        """
        cfg = self.config
        if tokens.ndim != 2 or tokens.shape[1] > cfg.max_positions:
            raise NodeError(
                "bad token tensor for the CLIP text encoder",
                input_name="tokens",
                expected=f"a [batch, length <= {cfg.max_positions}] tensor of token ids",
                received=tuple(tokens.shape),
                fix="split long prompts into 77-token chunks (see comfy_notebook.models.prompt)",
            )
        if embeds is not None and embeds.shape[:2] != tokens.shape:
            raise NodeError(
                "embeds do not match tokens",
                input_name="embeds",
                expected=f"shape [{tokens.shape[0]}, {tokens.shape[1]}, {cfg.width}]",
                received=tuple(embeds.shape),
            )
        index = self._layer_index(layer)
        tm = self.text_model
        x = tm.embeddings(tokens, embeds)  # [B, T, D]
        hidden_states = [x]
        for block in tm.encoder.layers:
            x = block(x)  # [B, T, D]
            hidden_states.append(x)
        last = tm.final_layer_norm(x)  # [B, T, D]
        # First EOS position per row (transformers / ComfyUI pooled output).
        eos_pos = (tokens == cfg.eos_token_id).int().argmax(dim=-1)  # [B]
        pooled = last[torch.arange(last.shape[0], device=last.device), eos_pos]  # [B, D]
        if index == cfg.layers:
            hidden = last if final_norm_on_hidden else x
        else:
            hidden = hidden_states[index]
            if final_norm_on_hidden:
                hidden = tm.final_layer_norm(hidden)
        return CLIPTextOutput(hidden, pooled, hidden_states)
