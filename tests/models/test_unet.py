"""Our LDM UNet against diffusers' UNet2DConditionModel on identical random weights."""

from __future__ import annotations

import pytest
import torch

from comfy_notebook.models.unet import UNetConfig, UNetModel, timestep_embedding

CONFIGS = {
    "sd1-tiny": UNetConfig.sd1_tiny(),
    "linear-uneven": UNetConfig.sd1_tiny_linear(),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_matches_diffusers(unet_pair, name):
    cfg = CONFIGS[name]
    ours, ref = unet_pair(cfg)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 16, 16, generator=gen)
    t = torch.tensor([3.0, 741.5])
    ctx = torch.randn(2, 7, cfg.context_dim, generator=gen)
    with torch.no_grad():
        a = ours(x, t, ctx)
        b = ref(x, t, ctx).sample
    assert a.shape == (2, 4, 16, 16)
    assert a.abs().mean() > 1e-2  # the comparison is not between two near-zero tensors
    assert (a - b).abs().max().item() <= 1e-5


def test_uneven_depth_builds_the_blocks_it_says():
    cfg = UNetConfig.sd1_tiny_linear()
    m = UNetModel(cfg)
    keys = m.state_dict().keys()
    assert not any(k.startswith("input_blocks.1.1.") for k in keys)  # level 0: no attention
    assert "input_blocks.3.1.transformer_blocks.0.attn1.to_q.weight" in keys
    assert "input_blocks.5.1.transformer_blocks.1.attn1.to_q.weight" in keys
    assert "middle_block.1.transformer_blocks.1.ff.net.2.weight" in keys
    assert m.input_blocks[3][1].proj_in.weight.dim() == 2  # linear projection
    # output side: level 2 (first two output blocks) has depth 1, level 1 depth 2
    assert "output_blocks.0.1.transformer_blocks.0.norm1.weight" in keys
    assert "output_blocks.0.1.transformer_blocks.1.norm1.weight" not in keys
    assert "output_blocks.2.1.transformer_blocks.1.norm1.weight" in keys


def test_sd15_parameter_count_and_keys():
    with torch.device("meta"):
        m = UNetModel(UNetConfig.sd15())
    n = sum(p.numel() for p in m.parameters())
    assert n == 859_520_964  # SD1.5 UNet, as counted from the released checkpoint
    keys = m.state_dict().keys()
    assert "input_blocks.1.1.proj_in.weight" in keys
    assert "output_blocks.11.1.transformer_blocks.0.attn2.to_k.weight" in keys
    assert "output_blocks.2.1.conv.weight" in keys  # upsample after level 3
    assert "input_blocks.3.0.op.weight" in keys


def test_timestep_embedding_formula():
    t = torch.tensor([0.0, 10.0, 999.0])
    emb = timestep_embedding(t, 8)
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(4) / 4)
    expected = torch.cat([torch.cos(t[:, None] * freqs), torch.sin(t[:, None] * freqs)], -1)
    torch.testing.assert_close(emb, expected)


def test_label_embedding_and_y_checks(unet_pair):
    import dataclasses

    cfg = dataclasses.replace(UNetConfig.sd1_tiny(), adm_in_channels=12)
    m = UNetModel(cfg).eval()
    x, t, ctx = torch.randn(1, 4, 8, 8), torch.tensor([5.0]), torch.randn(1, 3, cfg.context_dim)
    with torch.no_grad():
        a = m(x, t, ctx, y=torch.zeros(1, 12))
        b = m(x, t, ctx, y=torch.ones(1, 12))
    assert not torch.equal(a, b)
    with pytest.raises(ValueError, match="y must be given"):
        m(x, t, ctx)


def test_channels_last_and_odd_sizes(unet_pair):
    ours, _ = unet_pair(UNetConfig.sd1_tiny())
    x = torch.randn(1, 4, 12, 10)
    t, ctx = torch.tensor([100.0]), torch.randn(1, 3, 32)
    with torch.no_grad():
        a = ours(x, t, ctx)
        ours_cl = ours.to(memory_format=torch.channels_last)
        b = ours_cl(x.contiguous(memory_format=torch.channels_last), t, ctx)
        odd = ours(torch.randn(1, 4, 9, 7), t, ctx)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert odd.shape == (1, 4, 9, 7)


def test_config_validation():
    with pytest.raises(ValueError, match="one entry per level"):
        UNetConfig(channel_mult=(1, 2), transformer_depth=(1,))
    with pytest.raises(ValueError, match="exactly one"):
        UNetConfig(num_heads=8, num_head_channels=64)
