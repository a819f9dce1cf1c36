"""Random-weight model patches: LoRAs (kohya and ComfyUI key styles), textual-inversion
embeddings and A1111 hypernetworks.
"""

from __future__ import annotations

import itertools
import os
import zlib
from typing import Any

import torch
from torch import Tensor

from comfy_notebook.models.detect import UNET_PREFIX
from comfy_notebook.testing._core import _save

__all__ = ["make_embedding", "make_hypernetwork", "make_lora"]


# LoRA leaves of a transformer block (attention projections and feed-forward), and of a CLIP layer.
_LORA_UNET_LEAVES = (".attn1.to_q", ".attn1.to_k", ".attn1.to_v", ".attn1.to_out.0",
                     ".attn2.to_q", ".attn2.to_k", ".attn2.to_v", ".attn2.to_out.0",
                     ".ff.net.0.proj", ".ff.net.2", ".proj_in", ".proj_out")
_LORA_CLIP_LEAVES = (".self_attn.q_proj", ".self_attn.k_proj", ".self_attn.v_proj",
                     ".self_attn.out_proj", ".mlp.fc1", ".mlp.fc2")


def make_lora(
    path: str | os.PathLike[str],
    checkpoint_path: str | os.PathLike[str],
    *,
    rank: int = 4,
    style: str = "kohya",
    seed: int = 0,
    alpha: float | None = None,
    include_clip: bool = True,
) -> str:
    """Write a random LoRA that fits the checkpoint at ``checkpoint_path``.

    It targets the attention projections, feed-forward layers and ``proj_in``/``proj_out`` of
    every UNet transformer block, and (``include_clip``) the attention and MLP projections of
    every CLIP text layer.  1x1 convolutions get conv-shaped factors.

    Parameters
    ----------
    path:
        Output ``.safetensors`` path.
    checkpoint_path:
        A single-file SD1 checkpoint (e.g. from :func:`make_checkpoint`); only its key names
        and shapes are read.
    rank:
        LoRA rank (rows of ``lora_down``).
    style:
        ``"kohya"``: ``lora_unet_<diffusers module>`` / ``lora_te_<transformers module>``, the
        names A1111-era trainers write (the UNet names follow the checkpoint's block layout);
        ``"comfy"``: ``diffusion_model.<LDM module>`` / ``cond_stage_model.transformer.<module>``,
        the checkpoint's own module names.
    seed:
        Same seed, checkpoint and options give the same file; both styles draw the same
        tensors in the same order, so a kohya and a comfy file of one seed are the same LoRA.
    alpha:
        Written as ``<module>.alpha`` when given (scale ``alpha / rank``); absent means scale 1.
    include_clip:
        Also patch the text encoder.

    Returns
    -------
    str
        The path written.
    """
    from comfy_notebook.families import detect
    from comfy_notebook.models.convert import OpenCLIPView
    from comfy_notebook.runtime.loading import open_state_dict
    from comfy_notebook.runtime.lora import UNetLayout, unet_diffusers_to_ldm

    if style not in ("kohya", "comfy"):
        raise ValueError(f"unknown LoRA style {style!r}; expected 'kohya' or 'comfy'")
    sd = open_state_dict(checkpoint_path)
    info = detect(sd, source=os.fspath(checkpoint_path))
    unet_p = info.prefixes.get("unet", UNET_PREFIX)
    shapes = {k: tuple(sd[k].shape) for k in sd if k.endswith(".weight")}
    targets: list[tuple[str, tuple[int, ...]]] = []  # (LoRA module name, weight shape)
    ldm_to_diffusers = {}
    if style == "kohya" and info.unet is not None:
        table = unet_diffusers_to_ldm(UNetLayout.from_config(info.unet))
        ldm_to_diffusers = {ldm: diff for diff, ldm in table.items()}
    for key, shape in sorted(shapes.items()):
        module = key[: -len(".weight")]
        if key.startswith(unet_p) and module.endswith(_LORA_UNET_LEAVES):
            ldm = module[len(unet_p):]
            if style == "kohya":
                if ldm not in ldm_to_diffusers:
                    continue
                targets.append(("lora_unet_" + ldm_to_diffusers[ldm].replace(".", "_"), shape))
            else:
                targets.append(("diffusion_model." + ldm, shape))
    family = info.family
    for enc, comp in (info.text_encoders.items() if include_clip else ()):
        view: Any = OpenCLIPView(sd, comp.prefix) if comp.layout == "openclip" else {
            k[len(comp.prefix):]: v for k, v in sd.items() if k.startswith(comp.prefix)}
        kohya = next((p for p, e in (family.lora_te_prefixes.items() if family else ()) if e == enc), "lora_te_")
        for name in sorted(view):
            if not name.endswith(".weight") or not name[:-7].endswith(_LORA_CLIP_LEAVES):
                continue
            shape = tuple(view[name].shape)
            module = name[:-7]
            if style == "kohya":
                targets.append((kohya + module.replace(".", "_"), shape))
            elif comp.layout == "hf":
                targets.append((comp.prefix + module, shape))
            else:
                targets.append((f"text_encoders.{enc}.transformer.{module}", shape))
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(b"lora"))
    tensors: dict[str, Tensor] = {}
    for name, shape in targets:
        out_ch, in_ch = shape[0], shape[1]
        kernel = tuple(shape[2:])  # () for Linear, (1, 1) for 1x1 convs
        down = torch.randn((rank, in_ch, *kernel), generator=gen) * in_ch**-0.5
        up = torch.randn((out_ch, rank, *(1 for _ in kernel)), generator=gen) * rank**-0.5
        tensors[f"{name}.lora_down.weight"] = down
        tensors[f"{name}.lora_up.weight"] = up
        if alpha is not None:
            tensors[f"{name}.alpha"] = torch.tensor(float(alpha))
    _save(tensors, path)
    return str(path)


def make_embedding(
    path: str | os.PathLike[str], dim: int, n_vectors: int = 2, seed: int = 0,
    format: str = "safetensors",
) -> str:
    """Write a random textual-inversion embedding of ``n_vectors`` vectors of width ``dim``.

    ``format="safetensors"`` writes ``{"emb_params": [n, dim]}`` (A1111's safetensors layout);
    ``"pt"`` a weights-only torch file ``{"string_to_param": {"*": [n, dim]}, ...}``.  Vectors
    are N(0, 0.02^2)-sized, like CLIP token embeddings.  Returns the path.
    """
    gen = torch.Generator().manual_seed(seed * 1_000_003 + 17)
    vectors = torch.randn((n_vectors, dim), generator=gen) * 0.02  # [n, D]
    if format == "safetensors":
        _save({"emb_params": vectors}, path)
    elif format == "pt":
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vectors},
                    "name": os.path.splitext(os.path.basename(path))[0], "step": 0}, path)
    else:
        raise ValueError(f"unknown embedding format {format!r}; expected 'safetensors' or 'pt'")
    return str(path)


def make_hypernetwork(path: str | os.PathLike[str], widths: tuple[int, ...] = (64, 320), seed: int = 0, *,
                      layer_structure: tuple[float, ...] = (1, 2, 1), activation_func: str = "relu",
                      is_layer_norm: bool = False, use_dropout: bool = False, last_layer_dropout: bool = False,
                      activate_output: bool = False) -> str:
    """Write a random hypernetwork in the A1111 format (``torch.save`` of a dict: width -> [key MLP
    state dict, value MLP state dict] with ``linear.N.*`` keys, plus the option keys A1111 saves)."""
    gen = torch.Generator().manual_seed(seed)
    sd: dict[Any, Any] = {}
    for width in widths:
        pair = []
        for _ in range(2):
            mlp: dict[str, Tensor] = {}
            index = 0
            sizes = [round(width * f) for f in layer_structure]
            for i, (a, b) in enumerate(itertools.pairwise(sizes)):
                last = i == len(sizes) - 2
                mlp[f"linear.{index}.weight"] = torch.randn(b, a, generator=gen) * (0.3 / a ** 0.5)
                mlp[f"linear.{index}.bias"] = torch.randn(b, generator=gen) * 0.05
                index += 1 + (activation_func != "linear" and (not last or activate_output))
                if is_layer_norm:
                    mlp[f"linear.{index}.weight"] = 1 + 0.1 * torch.randn(b, generator=gen)
                    mlp[f"linear.{index}.bias"] = 0.1 * torch.randn(b, generator=gen)
                    index += 1
                index += int(use_dropout and not last)
            pair.append(mlp)
        sd[width] = pair
    sd.update({"layer_structure": list(layer_structure), "activation_func": activation_func,
               "is_layer_norm": is_layer_norm, "weight_initialization": "Normal", "use_dropout": use_dropout,
               "last_layer_dropout": last_layer_dropout, "activate_output": activate_output,
               "name": os.path.splitext(os.path.basename(os.fspath(path)))[0], "step": 1000,
               "sd_checkpoint": "0123abcd", "sd_checkpoint_name": "tiny"})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save(sd, os.fspath(path))
    return str(path)
