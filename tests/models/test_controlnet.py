"""Our ControlNet against diffusers' ControlNetModel on identical random weights, and the UNet's
control residuals against diffusers' ``down_block_additional_residuals``."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from comfy_notebook.models.controlnet import ControlNetConfig, ControlNetModel
from comfy_notebook.models.unet import ControlResiduals, UNetConfig
from comfy_notebook.testing import random_state_dict

CONFIGS = {
    "sd1-tiny": UNetConfig.sd1_tiny(),
    "linear-uneven": UNetConfig.sd1_tiny_linear(),
}


def _diffusers_config(cfg: UNetConfig) -> dict[str, Any]:
    return dict(
        in_channels=cfg.in_channels, conditioning_channels=3,
        down_block_types=["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in cfg.transformer_depth],
        block_out_channels=[cfg.model_channels * m for m in cfg.channel_mult],
        layers_per_block=cfg.num_res_blocks, cross_attention_dim=cfg.context_dim,
        attention_head_dim=cfg.num_heads, use_linear_projection=cfg.use_linear_in_transformer,
        transformer_layers_per_block=[max(d, 1) for d in cfg.transformer_depth],
    )


def controlnet_pair(cfg: UNetConfig, seed: int = 0) -> tuple[ControlNetModel, Any, dict[str, torch.Tensor]]:
    """(ours, diffusers, diffusers state dict) holding the same random original-layout weights."""
    from diffusers import ControlNetModel as RefControlNet
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    ours = ControlNetModel(ControlNetConfig(cfg)).eval()
    sd = random_state_dict(ours, seed, tag="controlnet")
    for k in sd:  # zero convolutions start at zero and stay small in trained files: outputs O(1)
        if k.startswith(("zero_convs.", "middle_block_out.")):
            sd[k] = sd[k] * 0.2
    ours.load_state_dict(sd, strict=True)
    dcfg = _diffusers_config(cfg)
    ref = RefControlNet(**dcfg).eval()
    dsd = convert_controlnet_checkpoint({"control_model." + k: v for k, v in sd.items()}, dcfg)
    ref.load_state_dict(dsd, strict=True)
    return ours, ref, dsd


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_matches_diffusers_controlnet(name):
    cfg = CONFIGS[name]
    ours, ref, _ = controlnet_pair(cfg)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 8, 8, generator=gen)
    hint = torch.rand(2, 3, 64, 64, generator=gen)
    t = torch.tensor([3.0, 741.0])
    ctx = torch.randn(2, 5, cfg.context_dim, generator=gen)
    with torch.no_grad():
        res = ours(x, hint, t, ctx)
        down, mid = ref(x, t, ctx, hint, return_dict=False)
    assert len(res.output) == len(down) == len(ours.input_blocks)
    for a, b in zip(res.output, down, strict=True):
        assert a.abs().mean() > 1e-3
        assert (a - b).abs().max().item() <= 1e-5
    assert (res.middle - mid).abs().max().item() <= 1e-5


def test_unet_control_residuals_match_diffusers(unet_pair):
    """Residuals go where diffusers' additional residuals go: skips (output) and after the middle."""
    cfg = UNetConfig.sd1_tiny()
    ours, ref = unet_pair(cfg)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, 4, 8, 8, generator=gen)
    t, ctx = torch.tensor([500.0]), torch.randn(1, 3, cfg.context_dim, generator=gen)
    chans = [32, 32, 32, 64]
    sizes = [8, 8, 4, 4]
    outs = tuple(torch.randn(1, c, s, s, generator=gen) for c, s in zip(chans, sizes, strict=True))
    mid = torch.randn(1, 64, 4, 4, generator=gen)
    with torch.no_grad():
        a = ours(x, t, ctx, control=ControlResiduals(output=outs, middle=mid))
        b = ref(x, t, ctx, down_block_additional_residuals=outs, mid_block_additional_residual=mid).sample
        plain = ours(x, t, ctx)
    assert (a - b).abs().max().item() <= 1e-5
    assert (a - plain).abs().max().item() > 1e-3


def test_unet_input_residuals_match_diffusers_adapter_residuals(unet_pair):
    """T2I-Adapter features: added after the last ResBlock of a level (running state and skip)."""
    cfg = dataclasses.replace(UNetConfig.sd1_tiny(), num_res_blocks=2)
    ours, ref = unet_pair(cfg)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 4, 8, 8, generator=gen)
    t, ctx = torch.tensor([250.0]), torch.randn(1, 3, cfg.context_dim, generator=gen)
    f0, f1 = torch.randn(1, 32, 8, 8, generator=gen), torch.randn(1, 64, 4, 4, generator=gen)
    with torch.no_grad():
        a = ours(x, t, ctx, control=ControlResiduals(input=(None, None, f0, None, None, f1)))
        b = ref(x, t, ctx, down_intrablock_additional_residuals=[f0.clone(), f1.clone()]).sample
    assert (a - b).abs().max().item() <= 1e-5


def test_wrong_residual_shape_names_the_block():
    from comfy_notebook.models.unet import UNetModel

    m = UNetModel(UNetConfig.sd1_tiny()).eval()
    bad = ControlResiduals(output=(torch.zeros(1, 16, 8, 8),))
    with pytest.raises(ValueError, match=r"skip 0.*Fix"):
        m(torch.zeros(1, 4, 8, 8), torch.tensor([1.0]), torch.zeros(1, 2, 32), control=bad)


def test_config_from_state_dict_round_trip():
    for cfg in CONFIGS.values():
        with torch.device("meta"):
            m = ControlNetModel(ControlNetConfig(cfg, hint_channels=3))
        sd = m.state_dict()
        read = ControlNetConfig.from_state_dict({"control_model." + k: v for k, v in sd.items()}, "control_model.",
                                                num_heads=cfg.num_heads, num_head_channels=cfg.num_head_channels)
        # the encoder copy has no output side: everything else is read back
        assert dataclasses.replace(read.unet, transformer_depth_output=cfg.transformer_depth_output) == cfg
        assert read.hint_channels == 3
        assert read.unet.channel_mult == cfg.channel_mult
        assert read.unet.transformer_depth == cfg.transformer_depth
        assert read.unet.use_linear_in_transformer == cfg.use_linear_in_transformer


def test_sd15_controlnet_parameter_count():
    with torch.device("meta"):
        m = ControlNetModel(ControlNetConfig(UNetConfig.sd15()))
    from diffusers import ControlNetModel as RefControlNet

    with torch.device("meta"):
        ref = RefControlNet(cross_attention_dim=768)  # otherwise the defaults are SD1.5 sizes
    n = sum(p.numel() for p in m.parameters())
    assert n == sum(p.numel() for p in ref.parameters()) == 361_279_120


def test_sdxl_style_controlnet_matches_diffusers_text_time():
    """Label embedding (``y`` = pooled text + sinusoidal size/crop ids), 16-wide heads, linear
    projections, depth 2: the SDXL options, against diffusers' ``addition_embed_type="text_time"``."""
    from diffusers import ControlNetModel as RefControlNet
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    from comfy_notebook.models.unet import timestep_embedding

    cfg = UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, transformer_depth=(0, 2),
                     context_dim=32, num_heads=-1, num_head_channels=16, use_linear_in_transformer=True,
                     adm_in_channels=16 + 6 * 8)
    ours = ControlNetModel(ControlNetConfig(cfg)).eval()
    sd = random_state_dict(ours, 0, tag="controlnet")
    for k in sd:
        if k.startswith(("zero_convs.", "middle_block_out.")):
            sd[k] = sd[k] * 0.2
    ours.load_state_dict(sd, strict=True)
    dcfg = dict(_diffusers_config(cfg), attention_head_dim=[2, 4], addition_embed_type="text_time",
                addition_time_embed_dim=8, projection_class_embeddings_input_dim=64)
    ref = RefControlNet(**dcfg).eval()
    dsd = convert_controlnet_checkpoint({"control_model." + k: v for k, v in sd.items()}, dcfg)
    for i, j in ((1, 0), (2, 2)):  # diffusers' converter leaves the label embedding out
        for leaf in ("weight", "bias"):
            dsd[f"add_embedding.linear_{i}.{leaf}"] = sd[f"label_emb.0.{j}.{leaf}"]
    ref.load_state_dict(dsd, strict=True)
    gen = torch.Generator().manual_seed(4)
    x, hint = torch.randn(2, 4, 8, 8, generator=gen), torch.rand(2, 3, 64, 64, generator=gen)
    t, ctx = torch.tensor([10.0, 600.0]), torch.randn(2, 5, 32, generator=gen)
    pooled, ids = torch.randn(2, 16, generator=gen), torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)
    y = torch.cat([pooled, timestep_embedding(ids.flatten(), 8).reshape(2, -1)], dim=1)
    with torch.no_grad():
        res = ours(x, hint, t, ctx, y=y)
        down, mid = ref(x, t, ctx, hint, added_cond_kwargs={"text_embeds": pooled, "time_ids": ids},
                        return_dict=False)
    for a, b in zip([*res.output, res.middle], [*down, mid], strict=True):
        assert (a - b).abs().max().item() <= 1e-5
