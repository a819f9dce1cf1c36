"""Our Flux transformer against diffusers' FluxTransformer2DModel; sizes read from shapes."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch

from comfy_notebook.models.flux import Flux, FluxConfig, rope_axes
from comfy_notebook.testing import random_state_dict


def _diffusers_converter(hidden: int):
    """diffusers' own Flux single-file converter, with its hard-coded 3072 width set to ``hidden``.

    ``convert_flux_transformer_checkpoint_to_diffusers`` (diffusers 0.42.1) fixes
    ``inner_dim = 3072`` for the single-block qkv/mlp split; every other line is used unchanged.
    """
    from diffusers.loaders import single_file_utils as sfu

    src = inspect.getsource(sfu.convert_flux_transformer_checkpoint_to_diffusers)
    assert "inner_dim = 3072" in src
    ns = dict(vars(sfu))
    exec(src.replace("inner_dim = 3072", f"inner_dim = {hidden}"), ns)
    return ns["convert_flux_transformer_checkpoint_to_diffusers"]


def _pair(cfg: FluxConfig, seed: int = 0):
    from diffusers import FluxTransformer2DModel

    ours = Flux(cfg).eval()
    sd = random_state_dict(ours, seed, tag="flux")
    ours.load_state_dict(sd, strict=True)
    head = cfg.hidden_size // cfg.num_heads
    ref = FluxTransformer2DModel(
        in_channels=cfg.in_channels * 4, num_layers=cfg.depth, num_single_layers=cfg.depth_single_blocks,
        attention_head_dim=head, num_attention_heads=cfg.num_heads, joint_attention_dim=cfg.context_in_dim,
        pooled_projection_dim=cfg.vec_in_dim, guidance_embeds=cfg.guidance_embed, axes_dims_rope=cfg.axes_dim,
    ).eval()
    convert = _diffusers_converter(cfg.hidden_size)
    ref.load_state_dict(convert({"model.diffusion_model." + k: v.clone() for k, v in sd.items()}), strict=True)
    return ours, ref, sd


def _pack(x: torch.Tensor) -> torch.Tensor:
    """diffusers' FluxPipeline._pack_latents: [B, C, H, W] -> [B, HW/4, 4C]."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def _unpack(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    b, _, d = x.shape
    return x.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, d // 4, h, w)


@pytest.mark.parametrize("guidance", [True, False], ids=["dev", "schnell"])
def test_matches_diffusers(guidance):
    cfg = FluxConfig.tiny(guidance_embed=guidance)
    ours, ref, _ = _pair(cfg)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, 6, 8, generator=gen)
    ctx = torch.randn(2, 7, cfg.context_in_dim, generator=gen)
    y = torch.randn(2, cfg.vec_in_dim, generator=gen)
    t = torch.tensor([0.9, 0.35])
    g = torch.tensor([3.5, 1.0]) if guidance else None
    ids = torch.zeros(3, 4, 3)
    ids[..., 1] = torch.arange(3)[:, None]
    ids[..., 2] = torch.arange(4)[None, :]
    with torch.no_grad():
        out = ours(x, t, ctx, y, g)
        ref_out = ref(hidden_states=_pack(x), encoder_hidden_states=ctx, pooled_projections=y, timestep=t,
                      img_ids=ids.view(12, 3), txt_ids=torch.zeros(7, 3), guidance=g).sample
    ref_out = _unpack(ref_out, 6, 8)
    assert out.shape == x.shape and out.abs().mean() > 1e-2
    assert (out - ref_out).abs().max().item() <= 1e-5


def test_odd_sizes_are_padded_and_cropped():
    cfg = FluxConfig.tiny()
    ours, _, _ = _pair(cfg)
    x = torch.randn(1, 16, 5, 7)
    with torch.no_grad():
        out = ours(x, torch.tensor([0.5]), torch.randn(1, 3, cfg.context_in_dim), torch.randn(1, cfg.vec_in_dim))
        padded = ours(torch.nn.functional.pad(x, (0, 1, 0, 1), mode="circular"), torch.tensor([0.5]),
                      torch.zeros(1, 3, cfg.context_in_dim), None)
    assert out.shape == (1, 16, 5, 7) and padded.shape == (1, 16, 6, 8)
    assert torch.isfinite(out).all()


def test_config_from_state_dict_roundtrips():
    for cfg in (FluxConfig.tiny(), FluxConfig.tiny(guidance_embed=False),
                dataclasses.replace(FluxConfig.tiny(), depth=2, depth_single_blocks=3)):
        with torch.device("meta"):
            m = Flux(cfg)
        assert FluxConfig.from_state_dict(m.state_dict()) == cfg
        prefixed = {"model.diffusion_model." + k: v for k, v in m.state_dict().items()}
        assert FluxConfig.from_state_dict(prefixed, "model.diffusion_model.") == cfg


def test_real_size_parameter_counts():
    assert rope_axes(128) == (16, 56, 56)
    with torch.device("meta"):
        dev, schnell = Flux(FluxConfig.dev()), Flux(FluxConfig.schnell())
    n_dev = sum(p.numel() for p in dev.parameters())
    n_schnell = sum(p.numel() for p in schnell.parameters())
    assert n_dev == 11_901_408_320  # flux1-dev.safetensors
    guidance = sum(p.numel() for p in dev.guidance_in.parameters())
    assert n_schnell == n_dev - guidance == 11_901_408_320 - (256 * 3072 + 3072 + 3072 * 3072 + 3072)
    assert FluxConfig.from_state_dict(dev.state_dict()) == FluxConfig.dev()
    assert FluxConfig.from_state_dict(schnell.state_dict()) == FluxConfig.schnell()
