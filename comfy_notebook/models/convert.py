"""Key renaming for text encoders stored in OpenCLIP's layout (the one renaming table).

SD2's ViT-H and SDXL's ViT-bigG text towers are stored in single-file checkpoints under
OpenCLIP's names (``transformer.resblocks.{i}.attn.in_proj_weight``, ``ln_final``,
``text_projection`` as a ``[D, P]`` matrix ...); :class:`~comfy_notebook.models.clip.CLIPTextModel`
uses transformers' names (ComfyUI converts the same way: ``comfy/utils.py``
``clip_text_transformers_convert``).  The view below maps names lazily and every converted
tensor is a view of the file's tensor (the fused q/k/v projection is sliced, the projection
transposed into a small contiguous copy), so the towers are not copied.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping

from torch import Tensor

__all__ = ["OPENCLIP_EXTRAS", "OpenCLIPView", "OpenCLIPVisionView", "hf_to_openclip", "hf_vision_to_openclip"]

#: OpenCLIP keys with no counterpart in the text model (ignored when loading).
OPENCLIP_EXTRAS = ("logit_scale", "attn_mask")

# per-layer leaf: OpenCLIP name -> transformers name (q/k/v come from in_proj, below)
_LAYER = {
    "ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
    "attn.out_proj": "self_attn.out_proj",
}
_TOP = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
}
_BLOCK = re.compile(r"transformer\.resblocks\.(\d+)\.(.+)$")
# the image tower (OpenAI CLIP / OpenCLIP ``visual.*``, e.g. the SD 2.1 unCLIP checkpoints'
# ``embedder.model.visual.*``) -> transformers' CLIPVisionModelWithProjection names, as ComfyUI's
# ``clip_vision.convert_to_transformers`` (comfyanonymous/ComfyUI@00728eb)
_VISION_TOP = {
    "class_embedding": "vision_model.embeddings.class_embedding",
    "conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "ln_pre.weight": "vision_model.pre_layrnorm.weight", "ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "ln_post.weight": "vision_model.post_layernorm.weight", "ln_post.bias": "vision_model.post_layernorm.bias",
}


def _qkv(part: int) -> Callable[[Tensor], Tensor]:
    def take(t: Tensor) -> Tensor:
        d = t.shape[0] // 3
        return t[part * d:(part + 1) * d]  # a view: rows of the fused [3D, ...] projection
    return take


class OpenCLIPView(Mapping[str, Tensor]):
    """transformers-named view of an OpenCLIP text tower under ``prefix`` of ``sd``."""

    def __init__(self, sd: Mapping[str, Tensor], prefix: str) -> None:
        self.sd = sd
        self._map: dict[str, tuple[str, Callable[[Tensor], Tensor] | None]] = {}
        n = len(prefix)
        for key in sd:
            if not key.startswith(prefix):
                continue
            name = key[n:]
            if name in _TOP:
                self._map[_TOP[name]] = (key, None)
            elif name == "text_projection":
                # [D, P] -> [P, D]; a contiguous copy (P x D is small) so the matmul is the same
                # kernel as for a transformers-layout file: identical bits either way
                self._map["text_projection.weight"] = (key, lambda t: t.t().contiguous())
            elif (m := _BLOCK.match(name)) is not None:
                i, leaf = m.groups()
                out = f"text_model.encoder.layers.{i}."
                if leaf.startswith("attn.in_proj_"):
                    kind = leaf.rsplit("_", 1)[1]  # weight | bias
                    for part, proj in enumerate(("q_proj", "k_proj", "v_proj")):
                        self._map[f"{out}self_attn.{proj}.{kind}"] = (key, _qkv(part))
                else:
                    stem, _, kind = leaf.rpartition(".")
                    if stem in _LAYER:
                        self._map[f"{out}{_LAYER[stem]}.{kind}"] = (key, None)
                    else:
                        self._map[f"unconverted.{name}"] = (key, None)
            elif name not in OPENCLIP_EXTRAS:
                self._map[f"unconverted.{name}"] = (key, None)

    def __getitem__(self, name: str) -> Tensor:
        key, fn = self._map[name]
        t = self.sd[key]
        return t if fn is None else fn(t)

    def __iter__(self) -> Iterator[str]:
        return iter(self._map)

    def __len__(self) -> int:
        return len(self._map)


class OpenCLIPVisionView(Mapping[str, Tensor]):
    """transformers-named view of an OpenCLIP / OpenAI image tower under ``prefix`` of ``sd``
    (``proj`` ``[D, P]`` becomes ``visual_projection.weight`` ``[P, D]``; views, no copies)."""

    def __init__(self, sd: Mapping[str, Tensor], prefix: str) -> None:
        self.sd = sd
        self._map: dict[str, tuple[str, Callable[[Tensor], Tensor] | None]] = {}
        n = len(prefix)
        for key in sd:
            if not key.startswith(prefix):
                continue
            name = key[n:]
            if name in _VISION_TOP:
                self._map[_VISION_TOP[name]] = (key, None)
            elif name == "proj":
                self._map["visual_projection.weight"] = (key, lambda t: t.t())
            elif (m := _BLOCK.match(name)) is not None:
                i, leaf = m.groups()
                out = f"vision_model.encoder.layers.{i}."
                stem, _, kind = leaf.rpartition(".")
                if leaf.startswith("attn.in_proj_"):
                    for part, proj in enumerate(("q_proj", "k_proj", "v_proj")):
                        self._map[f"{out}self_attn.{proj}.{leaf.rsplit('_', 1)[1]}"] = (key, _qkv(part))
                else:
                    self._map[f"{out}{_LAYER.get(stem, 'unconverted.' + stem)}.{kind}"] = (key, None)
            else:
                self._map[f"unconverted.{name}"] = (key, None)

    def __getitem__(self, name: str) -> Tensor:
        key, fn = self._map[name]
        t = self.sd[key]
        return t if fn is None else fn(t)

    def __iter__(self) -> Iterator[str]:
        return iter(self._map)

    def __len__(self) -> int:
        return len(self._map)


def hf_vision_to_openclip(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The inverse, for writing test checkpoints: a transformers image tower -> OpenCLIP names."""
    import torch

    top = {v: k for k, v in _VISION_TOP.items()}
    layer = {v: k for k, v in _LAYER.items()}
    out: dict[str, Tensor] = {}
    fused: dict[tuple[str, str], dict[str, Tensor]] = {}
    for name, t in sd.items():
        if name in top:
            out[top[name]] = t
        elif name == "visual_projection.weight":
            out["proj"] = t.t().contiguous()
        elif name.startswith("vision_model.encoder.layers."):
            i, rest = name[len("vision_model.encoder.layers."):].split(".", 1)
            stem, _, kind = rest.rpartition(".")
            if stem.startswith("self_attn.") and stem[-6:] in ("q_proj", "k_proj", "v_proj"):
                fused.setdefault((i, kind), {})[stem[-6]] = t
            else:
                out[f"transformer.resblocks.{i}.{layer[stem]}.{kind}"] = t
    for (i, kind), parts in fused.items():
        out[f"transformer.resblocks.{i}.attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def hf_to_openclip(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The inverse, for writing test checkpoints: transformers names -> OpenCLIP names (copies)."""
    import torch

    top = {v: k for k, v in _TOP.items()}
    layer = {v: k for k, v in _LAYER.items()}
    out: dict[str, Tensor] = {}
    fused: dict[tuple[str, str], dict[str, Tensor]] = {}
    for name, t in sd.items():
        if name in top:
            out[top[name]] = t
        elif name == "text_projection.weight":
            out["text_projection"] = t.t().contiguous()
        elif name.startswith("text_model.encoder.layers."):
            i, rest = name[len("text_model.encoder.layers."):].split(".", 1)
            stem, _, kind = rest.rpartition(".")
            if stem in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                fused.setdefault((i, kind), {})[stem.split(".")[1][0]] = t
            else:
                out[f"transformer.resblocks.{i}.{layer[stem]}.{kind}"] = t
    for (i, kind), parts in fused.items():
        out[f"transformer.resblocks.{i}.attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out
