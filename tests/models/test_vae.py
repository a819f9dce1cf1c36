"""Our KL VAE against diffusers' AutoencoderKL, and tiled encode/decode."""

from __future__ import annotations

import pytest
import torch

from comfy_notebook.models.vae import AutoencoderKL, VAEConfig, tiled_apply


def test_encode_decode_match_diffusers(vae_pair):
    ours, ref = vae_pair(VAEConfig.tiny())
    gen = torch.Generator().manual_seed(2)
    pixels = torch.rand(2, 3, 64, 48, generator=gen) * 2 - 1
    latent = torch.randn(2, 4, 8, 6, generator=gen)
    with torch.no_grad():
        z = ours.encode(pixels)
        z_ref = ref.encode(pixels).latent_dist.mean  # ComfyUI encodes to the mean, not a sample
        img = ours.decode(latent)
        img_ref = ref.decode(latent).sample
    assert z.shape == (2, 4, 8, 6) and img.shape == (2, 3, 64, 48)
    assert z.abs().mean() > 1e-2 and img.abs().mean() > 1e-2
    assert (z - z_ref).abs().max().item() <= 1e-5
    assert (img - img_ref).abs().max().item() <= 1e-5


def test_sd_vae_parameter_count():
    with torch.device("meta"):
        m = AutoencoderKL(VAEConfig.sd())
    assert sum(p.numel() for p in m.parameters()) == 83_653_863  # SD VAE (diffusers count)
    assert VAEConfig.sd().downscale == 8 and VAEConfig.tiny().downscale == 8


def test_tiled_equals_untiled_when_it_fits(vae_pair):
    ours, _ = vae_pair(VAEConfig.tiny())
    latent = torch.randn(1, 4, 10, 12)
    pixels = torch.rand(1, 3, 80, 96) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(ours.decode_tiled(latent, tile=16, overlap=4), ours.decode(latent))
        torch.testing.assert_close(ours.encode_tiled(pixels, tile=128, overlap=16), ours.encode(pixels))


def test_tiled_decode_multi_tile_is_close(vae_pair):
    ours, _ = vae_pair(VAEConfig.tiny())
    latent = torch.randn(1, 4, 24, 20)
    with torch.no_grad():
        full = ours.decode(latent)
        tiled = ours.decode_tiled(latent, tile=16, overlap=8)
        enc_tiled = ours.encode_tiled(full, tile=96, overlap=32)
    assert tiled.shape == full.shape and enc_tiled.shape == latent.shape
    assert torch.isfinite(tiled).all()
    # GroupNorm statistics and mid-block attention are per tile, so not exact; but close.
    corr = torch.corrcoef(torch.stack([tiled.flatten(), full.flatten()]))[0, 1]
    assert corr > 0.9, corr


def _pointwise(x: torch.Tensor) -> torch.Tensor:
    """A position-independent 'decoder': 2x nearest upsampling of a per-pixel function."""
    y = torch.tanh(x[:, :2] * 3) + x[:, 2:3]
    return torch.nn.functional.interpolate(y, scale_factor=2.0, mode="nearest")


@pytest.mark.parametrize(("tile", "overlap"), [(5, 2), (8, 3), (7, 0), (40, 8)])
def test_tiled_apply_blends_exactly_for_local_functions(tile, overlap):
    x = torch.randn(2, 3, 13, 17)
    out = tiled_apply(_pointwise, x, tile, overlap, 2.0, 2)
    torch.testing.assert_close(out, _pointwise(x))


def test_tiled_apply_rejects_bad_overlap():
    with pytest.raises(ValueError, match="overlap < tile"):
        tiled_apply(_pointwise, torch.zeros(1, 3, 8, 8), 4, 4, 2.0, 2)


def test_flux_vae_without_quant_convs_matches_diffusers(vae_pair):
    ours, ref = vae_pair(VAEConfig.flux_tiny())
    assert not hasattr(ours, "quant_conv") and not hasattr(ours, "post_quant_conv")
    gen = torch.Generator().manual_seed(3)
    pixels = torch.rand(1, 3, 48, 64, generator=gen) * 2 - 1
    latent = torch.randn(1, 16, 6, 8, generator=gen)
    with torch.no_grad():
        z, z_ref = ours.encode(pixels), ref.encode(pixels).latent_dist.mean
        img, img_ref = ours.decode(latent), ref.decode(latent).sample
    assert z.shape == (1, 16, 6, 8) and img.shape == (1, 3, 48, 64)
    assert (z - z_ref).abs().max().item() <= 1e-5
    assert (img - img_ref).abs().max().item() <= 1e-5


def test_flux_vae_parameter_count_and_detection():
    from comfy_notebook.models.detect import read_vae_config as _vae_config

    with torch.device("meta"):
        m = AutoencoderKL(VAEConfig.flux())
    sd = m.state_dict()
    from diffusers import AutoencoderKL as RefVAE

    with torch.device("meta"):
        ref = RefVAE(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                     up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512],
                     layers_per_block=2, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False)
    n = sum(p.numel() for p in m.parameters())
    assert n == sum(p.numel() for p in ref.parameters()) == 83_819_683  # ae.safetensors
    assert _vae_config(sd, sorted(sd), "") == VAEConfig.flux()
