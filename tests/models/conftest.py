"""Fixtures for the model tests: random LDM weights and the diffusers reference models."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from comfy_notebook.models.unet import UNetConfig, UNetModel
from comfy_notebook.models.vae import AutoencoderKL, VAEConfig
from comfy_notebook.testing import random_state_dict


def _diffusers_unet_config(cfg: UNetConfig) -> dict[str, Any]:
    """The diffusers UNet2DConditionModel config equal to an SD1-style UNetConfig."""
    return dict(
        sample_size=8, in_channels=cfg.in_channels, out_channels=cfg.out_channels,
        down_block_types=["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in cfg.transformer_depth],
        up_block_types=["CrossAttnUpBlock2D" if d else "UpBlock2D" for d in reversed(cfg.depth_output)],
        block_out_channels=[cfg.model_channels * m for m in cfg.channel_mult],
        layers_per_block=cfg.num_res_blocks, cross_attention_dim=cfg.context_dim,
        attention_head_dim=cfg.num_heads, use_linear_projection=cfg.use_linear_in_transformer,
        transformer_layers_per_block=[max(d, 1) for d in cfg.transformer_depth],
        reverse_transformer_layers_per_block=[
            [max(d, 1)] * (cfg.num_res_blocks + 1) for d in reversed(cfg.depth_output)
        ],
        mid_block_type="UNetMidBlock2DCrossAttn",
    )


@pytest.fixture
def unet_pair() -> Callable[[UNetConfig, int], tuple[UNetModel, torch.nn.Module]]:
    """(ours, diffusers) UNets holding the same random LDM-layout weights."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    def build(cfg: UNetConfig, seed: int = 0) -> tuple[UNetModel, torch.nn.Module]:
        ours = UNetModel(cfg).eval()
        sd = random_state_dict(ours, seed, tag="unet")
        ours.load_state_dict(sd, strict=True)
        dcfg = _diffusers_unet_config(cfg)
        ref = UNet2DConditionModel(**dcfg).eval()
        ldm = {"model.diffusion_model." + k: v for k, v in sd.items()}
        ref.load_state_dict(convert_ldm_unet_checkpoint(ldm, dcfg), strict=True)
        return ours, ref

    return build


@pytest.fixture
def vae_pair() -> Callable[[VAEConfig, int], tuple[AutoencoderKL, torch.nn.Module]]:
    """(ours, diffusers) VAEs holding the same random LDM-layout weights."""
    from diffusers import AutoencoderKL as RefVAE
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    def build(cfg: VAEConfig, seed: int = 0) -> tuple[AutoencoderKL, torch.nn.Module]:
        ours = AutoencoderKL(cfg).eval()
        sd = random_state_dict(ours, seed, tag="vae")
        ours.load_state_dict(sd, strict=True)
        n = len(cfg.ch_mult)
        dcfg = dict(
            in_channels=cfg.in_channels, out_channels=cfg.out_channels,
            down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n,
            block_out_channels=[cfg.ch * m for m in cfg.ch_mult], layers_per_block=cfg.num_res_blocks,
            latent_channels=cfg.z_channels, sample_size=64,
            use_quant_conv=cfg.use_quant_conv, use_post_quant_conv=cfg.use_quant_conv,
        )
        ref = RefVAE(**dcfg).eval()
        ldm = {"first_stage_model." + k: v for k, v in sd.items()}
        ref.load_state_dict(convert_ldm_vae_checkpoint(ldm, dcfg), strict=True)
        return ours, ref

    return build


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A random-weight sd1-tiny checkpoint file (shared by the loading tests)."""
    from comfy_notebook.testing import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "sd1-tiny.safetensors", "sd1-tiny")
