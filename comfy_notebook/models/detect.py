"""Read architecture sizes from tensor shapes (pure readers; no family knowledge).

Nothing but key names and shapes is used, so a tiny checkpoint that follows the same rules
loads through exactly the same code as a real one.  What shapes cannot say (attention heads of
the UNet, the text encoder's activation) is passed in by the caller: the family decides
(``comfy_notebook.families``).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from comfy_notebook.errors import ModelLoadError, UnsupportedModelError
from comfy_notebook.models.unet import UNetConfig
from comfy_notebook.models.vae import VAEConfig

if TYPE_CHECKING:
    from comfy_notebook.models.clip import CLIPTextConfig

__all__ = [
    "UNET_PREFIX",
    "VAE_PREFIX",
    "describe",
    "indices",
    "is_known_extra",
    "read_clip_config",
    "read_unet_config",
    "read_vae_config",
    "shape",
]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."

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


def shape(sd: Mapping[str, Any], key: str) -> tuple[int, ...]:
    return tuple(int(s) for s in sd[key].shape)


def indices(keys: list[str], prefix: str) -> list[int]:
    """Sorted distinct integers N of keys ``prefix + "N." ...``."""
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in keys if (m := pat.match(k))})


def read_unet_config(sd: Mapping[str, Any], keys: list[str], p: str, *, num_heads: int = -1,
                     num_head_channels: int = 64) -> UNetConfig:
    """Read an LDM UNet's sizes from its shapes (prefix ``p``); the head rule comes from the caller."""
    mc, in_ch = shape(sd, p + "input_blocks.0.0.weight")[:2]
    # a ControlNet (the encoder half only) has no output side: it reads as in = out
    out_ch = shape(sd, p + "out.2.weight")[0] if p + "out.2.weight" in sd else in_ch

    def depth(block: str) -> int:
        return len(indices(keys, f"{p}{block}.1.transformer_blocks."))

    levels: list[list[tuple[int, int]]] = [[]]  # per level: (channels, depth) of each ResBlock
    for i in indices(keys, p + "input_blocks.")[1:]:
        if f"{p}input_blocks.{i}.0.op.weight" in sd:
            levels.append([])
        else:
            ch = shape(sd, f"{p}input_blocks.{i}.0.out_layers.3.weight")[0]
            levels[-1].append((ch, depth(f"input_blocks.{i}")))
    out_blocks = indices(keys, p + "output_blocks.")
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
    context_dim = shape(sd, attn_keys[0])[1] if attn_keys else 768
    proj = [k for k in keys if k.startswith(p) and k.endswith("proj_in.weight")]
    linear = bool(proj) and len(shape(sd, proj[0])) == 2
    adm = shape(sd, p + "label_emb.0.0.weight")[1] if p + "label_emb.0.0.weight" in sd else None
    heads = {"num_heads": num_heads, "num_head_channels": num_head_channels}
    return UNetConfig(
        in_channels=in_ch, out_channels=out_ch, model_channels=mc, channel_mult=tuple(mult),
        num_res_blocks=num_res, transformer_depth=tuple(tdepth),
        transformer_depth_output=None if tuple(out_depth) == tuple(tdepth) else tuple(out_depth),
        transformer_depth_middle=None if mid == max(tdepth) else mid, context_dim=context_dim,
        use_linear_in_transformer=linear, adm_in_channels=adm, **heads,
    )


def read_vae_config(sd: Mapping[str, Any], keys: list[str], p: str) -> VAEConfig:
    """Read a KL VAE's sizes from its shapes (prefix ``p``)."""
    ch, in_ch = shape(sd, p + "encoder.conv_in.weight")[:2]
    levels = indices(keys, p + "encoder.down.")
    num_res = len(indices(keys, p + "encoder.down.0.block."))
    mult = []
    for i in levels:
        out = shape(sd, f"{p}encoder.down.{i}.block.{num_res - 1}.conv2.weight")[0]
        if out % ch:
            raise UnsupportedModelError(f"VAE level {i} has {out} channels, not a multiple of {ch}")
        mult.append(out // ch)
    return VAEConfig(
        in_channels=in_ch, out_channels=shape(sd, p + "decoder.conv_out.weight")[0], ch=ch,
        ch_mult=tuple(mult), num_res_blocks=num_res,
        z_channels=shape(sd, p + "decoder.conv_in.weight")[1],
        use_quant_conv=p + "quant_conv.weight" in sd,
    )


def read_clip_config(sd: Mapping[str, Any], p: str, *, activation: str = "quick_gelu") -> CLIPTextConfig:
    """Read a CLIP text encoder's sizes from its shapes (transformers names); heads are 64 wide."""
    from comfy_notebook.models.clip import CLIPTextConfig

    _, width = shape(sd, p + "text_model.embeddings.token_embedding.weight")
    if width % 64:
        raise ModelLoadError(
            f"CLIP text width {width} is not a multiple of 64; the CLIP rule is 64-wide heads. "
            "Fix: build test checkpoints with a width that is a multiple of 64"
        )
    return CLIPTextConfig.from_state_dict(sd, p, activation=activation)


def describe(keys: list[str]) -> str:
    """A short summary of what a state dict holds: the most common key prefixes."""
    heads = Counter(".".join(k.split(".")[:2]) for k in keys)
    parts = ", ".join(f"{name}.* ({n})" for name, n in heads.most_common(6))
    return f"{len(keys)} tensors; most common key prefixes: {parts or 'none'}"
