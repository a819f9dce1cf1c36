"""The Wan-2.1 / Qwen-Image VAE (models/wan_vae.py) against diffusers.AutoencoderKLQwenImage.

Weights are random, written in ComfyUI's ``vae/qwen_image_vae.safetensors`` key layout and
renamed to diffusers' with this file's own table (checked against diffusers' shipped
``convert_wan_vae_to_diffusers`` on the real-size key set).
"""

from __future__ import annotations

import re

import pytest
import torch

from comfy_notebook.models.wan_vae import WanVAE, WanVAEConfig

diffusers = pytest.importorskip("diffusers")


def _meta(config: WanVAEConfig) -> WanVAE:
    with torch.device("meta"):
        return WanVAE(config)


_RES = {"residual.0.gamma": "norm1.gamma", "residual.2.weight": "conv1.weight",
        "residual.2.bias": "conv1.bias", "residual.3.gamma": "norm2.gamma",
        "residual.6.weight": "conv2.weight", "residual.6.bias": "conv2.bias",
        "shortcut.weight": "conv_shortcut.weight", "shortcut.bias": "conv_shortcut.bias"}
_MID = {"0": "mid_block.resnets.0", "1": "mid_block.attentions.0", "2": "mid_block.resnets.1"}
_HEAD = {"head.0.gamma": "norm_out.gamma", "head.2.weight": "conv_out.weight", "head.2.bias": "conv_out.bias"}


def comfy_to_diffusers(key: str, config: WanVAEConfig) -> str:
    """A ComfyUI ``WanVAE`` key -> the ``AutoencoderKLQwenImage`` key (any level/block counts)."""
    top = {"conv1.weight": "quant_conv.weight", "conv1.bias": "quant_conv.bias",
           "conv2.weight": "post_quant_conv.weight", "conv2.bias": "post_quant_conv.bias"}
    if key in top:
        return top[key]
    part, rest = key.split(".", 1)
    if rest.startswith("conv1."):
        return f"{part}.conv_in.{rest[6:]}"
    if rest in _HEAD:
        return f"{part}.{_HEAD[rest]}"
    m = re.match(r"middle\.(\d)\.(.*)", rest)
    if m:
        inner = m.group(2)
        return f"{part}.{_MID[m.group(1)]}.{_RES.get(inner, inner)}"
    m = re.match(r"(downsamples|upsamples)\.(\d+)\.(.*)", rest)
    assert m, key
    idx, inner = int(m.group(2)), m.group(3)
    if m.group(1) == "downsamples":  # a flat list in both layouts
        return f"encoder.down_blocks.{idx}.{_RES.get(inner, inner)}"
    per = config.num_res_blocks + 2  # decoder level: n+1 residual blocks and an upsampler
    level, j = divmod(idx, per)
    if j == per - 1:
        return f"decoder.up_blocks.{level}.upsamplers.0.{inner}"
    return f"decoder.up_blocks.{level}.resnets.{j}.{_RES.get(inner, inner)}"


def _diffusers_vae(config: WanVAEConfig, sd: dict[str, torch.Tensor] | None = None) -> torch.nn.Module:
    from diffusers import AutoencoderKLQwenImage

    kwargs = dict(base_dim=config.dim, z_dim=config.z_dim, dim_mult=list(config.dim_mult),
                  num_res_blocks=config.num_res_blocks, temperal_downsample=list(config.temporal_downsample))
    if sd is None:
        with torch.device("meta"):
            return AutoencoderKLQwenImage(**kwargs)
    ref = AutoencoderKLQwenImage(**kwargs)
    ref.load_state_dict({comfy_to_diffusers(k, config): v for k, v in sd.items()}, strict=True)
    return ref.eval()


def _weights(config: WanVAEConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    from comfy_notebook.testing import random_wan_vae_state_dict

    return random_wan_vae_state_dict(config, seed=seed)


def _pair(config: WanVAEConfig) -> tuple[WanVAE, torch.nn.Module]:
    sd = _weights(config)
    ours = WanVAE(config)
    ours.load_state_dict(sd, strict=True)
    return ours.eval(), _diffusers_vae(config, sd)


TINY = WanVAEConfig.tiny()


def test_key_table_matches_diffusers_converter_on_the_released_layout() -> None:
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    config = WanVAEConfig.qwen_image()
    keys = list(_meta(config).state_dict())
    fake = {k: k for k in keys}
    theirs = convert_wan_vae_to_diffusers(fake)  # maps key -> value; invert it
    theirs_by_src = {src: dst for dst, src in theirs.items()}
    ours = {k: comfy_to_diffusers(k, config) for k in keys}
    assert ours == theirs_by_src
    assert set(ours.values()) == set(_diffusers_vae(config).state_dict())


def test_tiny_key_table_covers_diffusers_model() -> None:
    config = WanVAEConfig(dim=8, dim_mult=(1, 2, 4), num_res_blocks=1, temporal_downsample=(True, False))
    ours = {comfy_to_diffusers(k, config) for k in _meta(config).state_dict()}
    assert ours == set(_diffusers_vae(config).state_dict())
    for k, v in _meta(config).state_dict().items():
        assert _diffusers_vae(config).state_dict()[comfy_to_diffusers(k, config)].shape == v.shape


def test_real_size_parameter_count_equals_released() -> None:
    config = WanVAEConfig.qwen_image()
    ours = _meta(config).count_parameters()
    ref = sum(p.numel() for p in _diffusers_vae(config).parameters())
    assert ours == ref == 126_892_531
    assert len(_meta(config).state_dict()) == 194


@pytest.mark.parametrize("size", [(32, 48), (40, 24)])
def test_encode_matches_diffusers(size: tuple[int, int]) -> None:
    ours, ref = _pair(TINY)
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        want = ref.encode(x.unsqueeze(2)).latent_dist.mean[:, :, 0]
        got = ours.encode(x)
    assert got.shape == (2, 16, size[0] // 8, size[1] // 8)
    assert (got - want).abs().max().item() <= 1e-5
    assert want.abs().max().item() > 0.1  # a real signal, not all zeros


def test_decode_matches_diffusers() -> None:
    ours, ref = _pair(TINY)
    z = torch.randn(2, 16, 4, 6, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        # diffusers clamps to -1..1: compare its decoder's raw output, and the clamped result
        raw = ref.decoder(ref.post_quant_conv(z.unsqueeze(2)))[:, :, 0]
        clamped = ref.decode(z.unsqueeze(2)).sample[:, :, 0]
        got = ours.decode(z)
    assert got.shape == (2, 3, 32, 48)
    assert (got - raw).abs().max().item() <= 1e-5
    assert (got.clamp(-1, 1) - clamped).abs().max().item() <= 1e-5
    assert got.std().item() > 0.05


def test_five_d_single_frame_round_trip_and_multi_frame_refused() -> None:
    ours, _ = _pair(TINY)
    x = torch.rand(1, 3, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        z = ours.encode(x)
        assert z.shape == (1, 16, 1, 2, 2)
        assert torch.equal(z[:, :, 0], ours.encode(x[:, :, 0]))
        assert ours.decode(z).shape == (1, 3, 1, 16, 16)
    with pytest.raises(ValueError, match="single frames"):
        ours.decode(torch.zeros(1, 16, 2, 2, 2))


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item()


def test_tiled_equals_plain_within_one_tile_and_is_close_across_tiles() -> None:
    ours, _ = _pair(TINY)
    z = torch.randn(1, 16, 8, 12, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        plain = ours.decode(z)
        assert torch.equal(ours.decode_tiled(z), plain)  # ComfyUI's 32-latent tiles: one tile
        tiled = ours.decode_tiled(z, tile=8, overlap=4)
        assert tiled.shape == plain.shape
        assert not torch.equal(tiled, plain)
        assert _corr(tiled, plain) > 0.9  # random weights see far: tiles differ, but agree
        x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(4)) * 2 - 1
        enc = ours.encode(x)
        assert torch.equal(ours.encode_tiled(x), enc)  # 256 px tiles: one tile
        enc_t = ours.encode_tiled(x, tile=48, overlap=16)
        assert enc_t.shape == enc.shape
        assert _corr(enc_t, enc) > 0.9


def test_tile_positions_and_feathering_follow_comfyui() -> None:
    from comfy_notebook.models.wan_vae import tiled_feathered

    boxes: list[tuple[int, int]] = []

    def fn(t: torch.Tensor) -> torch.Tensor:  # pointwise: a perfect blend reproduces it exactly
        boxes.append((t.shape[-2], t.shape[-1]))
        return torch.nn.functional.interpolate(t * 2 + 1, scale_factor=2, mode="nearest")

    x = torch.randn(1, 2, 20, 50)
    out = tiled_feathered(fn, x, 16, 4, 2.0, 2)
    assert torch.allclose(out, fn(x), atol=1e-6)
    # rows: range(0, 20 - 4, 12) = 0, 12 -> heights 16, 8; columns: 0, 12, 24, 36 -> 16, 16, 16, 14
    assert boxes[:-1] == [(h, w) for h in (16, 8) for w in (16, 16, 16, 14)]

    # two tiles along a 20-wide row (tile 16, overlap 4): [0, 16) and [12, 20), feather 4
    calls = iter((1.0, 3.0))
    row = tiled_feathered(lambda t: torch.full_like(t, next(calls)), torch.zeros(1, 1, 16, 20), 16, 4, 1.0, 1)[0, 0, 0]
    # column 13: tile A's ramp (t+1)/4 from its far end gives 3/4, tile B's from its near end 2/4
    assert row[13].item() == pytest.approx((0.75 * 1 + 0.5 * 3) / 1.25)
    assert row[11].item() == 1.0 and row[16].item() == 3.0


def test_upsample_in_bf16_equals_the_fp32_round_trip() -> None:
    from comfy_notebook.models.wan_vae import _Upsample

    x = torch.randn(2, 5, 7, 9, generator=torch.Generator().manual_seed(7)).bfloat16()
    up = _Upsample()(x)
    assert up.dtype == torch.bfloat16 and up.shape == (2, 5, 14, 18)
    want = torch.nn.functional.interpolate(x.float(), scale_factor=2.0, mode="nearest-exact").bfloat16()
    assert torch.equal(up, want)
