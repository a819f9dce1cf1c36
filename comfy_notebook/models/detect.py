"""Recognise a checkpoint's family and read every model size from its tensor shapes.

Nothing but the key names and shapes is used, so a tiny checkpoint that follows the same rules
loads through exactly the same code as a real one.  What shapes cannot say is fixed per family:
the SD1 UNet has 8 attention heads, the SD2/SDXL UNets 64-wide heads, the CLIP text encoder
64-wide heads.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from comfy_notebook.errors import ModelLoadError, UnsupportedModelError
from comfy_notebook.models.family import SD1, SD2, SDXL, ModelFamily
from comfy_notebook.models.unet import UNetConfig
from comfy_notebook.models.vae import VAEConfig

if TYPE_CHECKING:
    from comfy_notebook.models.clip import CLIPTextConfig

__all__ = [
    "CLIP_PREFIX",
    "UNET_PREFIX",
    "VAE_PREFIX",
    "CheckpointInfo",
    "detect",
    "is_known_extra",
    "unet_config_from_state_dict",
]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
_SD2_CLIP_PREFIX = "cond_stage_model.model."
_SDXL_PREFIX = "conditioner.embedders."

# Buffers of the LDM training wrapper (DDPM schedule), stored in real SD1/SD2 files.
_SCHEDULE_KEYS = frozenset({
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
    "posterior_mean_coef1", "posterior_mean_coef2", "logvar", "model_ema.decay",
    "model_ema.num_updates",
})


def is_known_extra(key: str) -> bool:
    """True for keys real files carry outside the architecture (ignored when loading)."""
    return (
        key in _SCHEDULE_KEYS
        or key.startswith("model_ema.")
        or key.startswith("loss.")  # discriminator/LPIPS weights in some VAE training files
        or key.endswith("embeddings.position_ids")
    )


@dataclass(frozen=True)
class CheckpointInfo:
    """What :func:`detect` found in a state dict.

    Attributes
    ----------
    family:
        The model family (latent scale, prediction type, schedule).
    unet, vae, clip:
        Configurations of the parts present (``None`` when absent or not supported).
    prefixes:
        Part name (``"unet"``, ``"vae"``, ``"clip"``) -> key prefix of that part in the file.
    extras:
        Keys that are known extras and are ignored when loading.
    """

    family: ModelFamily
    unet: UNetConfig | None
    vae: VAEConfig | None
    clip: CLIPTextConfig | None
    prefixes: dict[str, str] = field(default_factory=dict)
    extras: tuple[str, ...] = ()


def _shape(sd: Mapping[str, Any], key: str) -> tuple[int, ...]:
    return tuple(int(s) for s in sd[key].shape)


def _indices(keys: list[str], prefix: str) -> list[int]:
    """Sorted distinct integers N of keys ``prefix + "N." ...``."""
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in keys if (m := pat.match(k))})


def _unet_config(sd: Mapping[str, Any], keys: list[str], p: str, family: ModelFamily) -> UNetConfig:
    """Read an LDM UNet's sizes from its shapes (prefix ``p``)."""
    mc, in_ch = _shape(sd, p + "input_blocks.0.0.weight")[:2]
    # a ControlNet (the encoder half only) has no output side: it reads as in = out
    out_ch = _shape(sd, p + "out.2.weight")[0] if p + "out.2.weight" in sd else in_ch

    def depth(block: str) -> int:
        return len(_indices(keys, f"{p}{block}.1.transformer_blocks."))

    levels: list[list[tuple[int, int]]] = [[]]  # per level: (channels, depth) of each ResBlock
    for i in _indices(keys, p + "input_blocks.")[1:]:
        if f"{p}input_blocks.{i}.0.op.weight" in sd:
            levels.append([])
        else:
            ch = _shape(sd, f"{p}input_blocks.{i}.0.out_layers.3.weight")[0]
            levels[-1].append((ch, depth(f"input_blocks.{i}")))
    out_blocks = _indices(keys, p + "output_blocks.")
    n_res = {len(level) for level in levels}
    if len(n_res) != 1 or (out_blocks and len(out_blocks) != len(levels) * (len(levels[0]) + 1)):
        raise UnsupportedModelError(
            f"UNet with an uneven number of ResBlocks per level ({[len(lv) for lv in levels]}) "
            "is not supported"
        )
    num_res = n_res.pop()
    mult, tdepth = [], []
    for level in levels:
        chans, depths = {c for c, _ in level}, {d for _, d in level}
        if len(chans) != 1 or len(depths) != 1 or next(iter(chans)) % mc:
            raise UnsupportedModelError(f"UNet level with mixed sizes {level} is not supported")
        mult.append(next(iter(chans)) // mc)
        tdepth.append(depths.pop())
    out_depth = []
    for j in range(len(levels) if out_blocks else 0):  # output blocks run from the deepest level up
        ds = {depth(f"output_blocks.{j * (num_res + 1) + r}") for r in range(num_res + 1)}
        if len(ds) != 1:
            raise UnsupportedModelError(f"UNet output level with mixed transformer depths {ds}")
        out_depth.append(ds.pop())
    out_depth.reverse()
    out_depth = out_depth or tdepth
    mid = depth("middle_block")
    attn_keys = [k for k in keys if k.startswith(p) and k.endswith("attn2.to_k.weight")]
    context_dim = _shape(sd, attn_keys[0])[1] if attn_keys else 768
    proj = [k for k in keys if k.startswith(p) and k.endswith("proj_in.weight")]
    linear = bool(proj) and len(_shape(sd, proj[0])) == 2
    adm = _shape(sd, p + "label_emb.0.0.weight")[1] if p + "label_emb.0.0.weight" in sd else None
    heads = {"num_heads": 8, "num_head_channels": -1} if family is SD1 else {
        "num_heads": -1, "num_head_channels": 64}
    return UNetConfig(
        in_channels=in_ch, out_channels=out_ch, model_channels=mc, channel_mult=tuple(mult),
        num_res_blocks=num_res, transformer_depth=tuple(tdepth),
        transformer_depth_output=None if tuple(out_depth) == tuple(tdepth) else tuple(out_depth),
        transformer_depth_middle=None if mid == max(tdepth) else mid, context_dim=context_dim,
        use_linear_in_transformer=linear, adm_in_channels=adm, **heads,
    )


def unet_config_from_state_dict(sd: Mapping[str, Any], prefix: str, *, num_heads: int = 8,
                                num_head_channels: int = -1) -> UNetConfig:
    """The :class:`UNetConfig` of the LDM UNet (or ControlNet encoder) under ``prefix`` in ``sd``;
    the head rule (a family fact) comes from the caller."""
    import dataclasses

    config = _unet_config(sd, [k for k in sd if k.startswith(prefix)], prefix, SD1)
    return dataclasses.replace(config, num_heads=num_heads, num_head_channels=num_head_channels)


def _vae_config(sd: Mapping[str, Any], keys: list[str], p: str) -> VAEConfig:
    """Read a KL VAE's sizes from its shapes (prefix ``p``)."""
    ch, in_ch = _shape(sd, p + "encoder.conv_in.weight")[:2]
    levels = _indices(keys, p + "encoder.down.")
    num_res = len(_indices(keys, p + "encoder.down.0.block."))
    mult = []
    for i in levels:
        out = _shape(sd, f"{p}encoder.down.{i}.block.{num_res - 1}.conv2.weight")[0]
        if out % ch:
            raise UnsupportedModelError(f"VAE level {i} has {out} channels, not a multiple of {ch}")
        mult.append(out // ch)
    return VAEConfig(
        in_channels=in_ch, out_channels=_shape(sd, p + "decoder.conv_out.weight")[0], ch=ch,
        ch_mult=tuple(mult), num_res_blocks=num_res,
        z_channels=_shape(sd, p + "decoder.conv_in.weight")[1],
    )


def _clip_config(sd: Mapping[str, Any], keys: list[str], p: str) -> CLIPTextConfig:
    """Read a CLIP text encoder's sizes from its shapes; heads are 64 wide."""
    from comfy_notebook.models.clip import CLIPTextConfig

    _, width = _shape(sd, p + "text_model.embeddings.token_embedding.weight")
    if width % 64:
        raise ModelLoadError(
            f"CLIP text width {width} is not a multiple of 64; the CLIP rule is 64-wide heads. "
            "Fix: build test checkpoints with a width that is a multiple of 64"
        )
    return CLIPTextConfig.from_state_dict(sd, p)


def _describe(keys: list[str]) -> str:
    """A short summary of what a state dict holds: the most common key prefixes."""
    heads = Counter(".".join(k.split(".")[:2]) for k in keys)
    parts = ", ".join(f"{name}.* ({n})" for name, n in heads.most_common(6))
    return f"{len(keys)} tensors; most common key prefixes: {parts or 'none'}"


def detect(state_dict_or_shapes: Mapping[str, Any], *, source: str = "") -> CheckpointInfo:
    """Detect the family and the part configurations of a checkpoint.

    Parameters
    ----------
    state_dict_or_shapes:
        Key -> tensor (or anything with a ``.shape``): a full LDM checkpoint, a separate VAE file,
        a text-encoder file or a UNet-only file.
    source:
        Where the keys came from (a path), used in error messages.

    Returns
    -------
    CheckpointInfo

    Raises
    ------
    UnsupportedModelError
        When no known layout matches; the message names what was found.
    """
    sd = state_dict_or_shapes
    keys = list(sd.keys())
    where = f" in {source}" if source else ""
    prefixes: dict[str, str] = {}
    if UNET_PREFIX + "input_blocks.0.0.weight" in sd:
        prefixes["unet"] = UNET_PREFIX
    elif "input_blocks.0.0.weight" in sd:
        prefixes["unet"] = ""
    if VAE_PREFIX + "decoder.conv_in.weight" in sd:
        prefixes["vae"] = VAE_PREFIX
    elif "decoder.conv_in.weight" in sd and "encoder.conv_in.weight" in sd:
        prefixes["vae"] = ""
    for cp in (CLIP_PREFIX, ""):
        if cp + "text_model.embeddings.token_embedding.weight" in sd:
            prefixes["clip"] = cp
            break

    if any(k.startswith(_SDXL_PREFIX) for k in keys) or (
        "unet" in prefixes and prefixes["unet"] + "label_emb.0.0.weight" in sd
    ):
        family = SDXL
    elif any(k.startswith(_SD2_CLIP_PREFIX) for k in keys):
        family = SD2
    else:
        family = SD1
    if not prefixes:
        hint = ""
        if any(k.startswith(("down_blocks.", "unet.down_blocks.", "encoder.down_blocks.")) for k in keys):
            hint = " (this looks like a diffusers-format file; use the original single-file LDM format)"
        raise UnsupportedModelError(
            f"unknown checkpoint{where}: no UNet (input_blocks.*), VAE (encoder/decoder.*) or CLIP "
            f"text encoder (text_model.*) keys found{hint}; found {_describe(keys)}"
        )
    if family is SD1 and "unet" in prefixes:
        p = prefixes["unet"]
        attn = [k for k in keys if k.startswith(p) and k.endswith("attn2.to_k.weight")]
        if attn and _shape(sd, attn[0])[1] == 1024:  # OpenCLIP-H width: an SD2 UNet
            family = SD2

    unet = _unet_config(sd, keys, prefixes["unet"], family) if "unet" in prefixes else None
    vae = _vae_config(sd, keys, prefixes["vae"]) if "vae" in prefixes else None
    clip = _clip_config(sd, keys, prefixes["clip"]) if "clip" in prefixes else None
    extras = tuple(k for k in keys if is_known_extra(k))
    return CheckpointInfo(family=family, unet=unet, vae=vae, clip=clip, prefixes=prefixes,
                          extras=extras)
