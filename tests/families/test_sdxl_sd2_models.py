"""SDXL and SD2 architectures against diffusers / transformers on identical weights (fp32, tiny
configs, max |delta| <= 1e-5), and real-size parameter counts equal to the references'."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from comfy_notebook.families.sdxl import fourier_features
from comfy_notebook.models.clip import CLIPTextConfig, CLIPTextModel
from comfy_notebook.models.convert import OpenCLIPView, hf_to_openclip
from comfy_notebook.models.unet import UNetConfig, UNetModel
from comfy_notebook.testing import get_preset, random_state_dict


def _diffusers_config(cfg: UNetConfig) -> dict[str, Any]:
    """diffusers ``UNet2DConditionModel`` kwargs equal to a 64-wide-head UNetConfig (SD2/SDXL)."""
    heads = [cfg.model_channels * m // cfg.num_head_channels for m in cfg.channel_mult]
    out: dict[str, Any] = dict(
        sample_size=8, in_channels=cfg.in_channels, out_channels=cfg.out_channels,
        down_block_types=["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in cfg.transformer_depth],
        up_block_types=["CrossAttnUpBlock2D" if d else "UpBlock2D" for d in reversed(cfg.depth_output)],
        block_out_channels=[cfg.model_channels * m for m in cfg.channel_mult],
        layers_per_block=cfg.num_res_blocks, cross_attention_dim=cfg.context_dim,
        attention_head_dim=heads, use_linear_projection=cfg.use_linear_in_transformer,
        # blocks without attention ignore the value; the last entry is the middle block's depth
        transformer_layers_per_block=[*(max(d, 1) for d in cfg.transformer_depth[:-1]),
                                      cfg.transformer_depth[-1] or cfg.depth_middle],
        mid_block_type="UNetMidBlock2DCrossAttn",
    )
    if cfg.adm_in_channels is not None:
        out.update(addition_embed_type="text_time", addition_time_embed_dim=256,
                   projection_class_embeddings_input_dim=cfg.adm_in_channels)
    return out


def _unet_pair(cfg: UNetConfig, seed: int = 0) -> tuple[UNetModel, torch.nn.Module]:
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    ours = UNetModel(cfg).eval()
    sd = random_state_dict(ours, seed, tag="unet")
    ours.load_state_dict(sd, strict=True)
    dcfg = _diffusers_config(cfg)
    ref = UNet2DConditionModel(**dcfg).eval()
    ldm = {"model.diffusion_model." + k: v for k, v in sd.items()}
    ref.load_state_dict(convert_ldm_unet_checkpoint(ldm, dcfg), strict=True)
    return ours, ref


@pytest.mark.parametrize("preset", ["sdxl", "sdxl-refiner"])
def test_sdxl_unet_matches_diffusers(preset: str) -> None:
    cfg = get_preset(preset).unet
    ours, ref = _unet_pair(cfg)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([999.0, 341.0])
    ctx = torch.randn(2, 77, cfg.context_dim, generator=g)
    pooled = torch.randn(2, 64, generator=g)
    n = (cfg.adm_in_channels - 64) // 256
    time_ids = torch.tensor([[1024.0, 768.0, 0.0, 32.0, 1024.0, 1024.0][:n], [512.0, 512.0, 8.0, 0.0, 896.0, 640.0][:n]])
    y = torch.cat([pooled, torch.cat([fourier_features(r.tolist()) for r in time_ids])], dim=1)
    with torch.no_grad():
        got = ours(x, t, ctx, y=y)
        want = ref(x, t, encoder_hidden_states=ctx,
                   added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
    assert (got - want).abs().max() <= 1e-5
    assert want.abs().max() > 0.1


@pytest.mark.parametrize("v", [False, True])
def test_sd2_unet_linear_projection_matches_diffusers(v: bool) -> None:
    cfg = get_preset("sd2-v" if v else "sd2").unet
    ours, ref = _unet_pair(cfg, seed=3)
    g = torch.Generator().manual_seed(2)
    x, t = torch.randn(1, 4, 16, 16, generator=g), torch.tensor([500.0])
    ctx = torch.randn(1, 77, cfg.context_dim, generator=g)
    with torch.no_grad():
        got, want = ours(x, t, ctx), ref(x, t, encoder_hidden_states=ctx).sample
    assert (got - want).abs().max() <= 1e-5


def test_sd2_v_prediction_denoised_matches_diffusers_formula() -> None:
    """v prediction: denoised = x / (s^2 + 1) - v * s / sqrt(s^2 + 1), as diffusers' Euler (v_prediction)."""
    from comfy_notebook.families import SD2

    ms = SD2.model_sampling("v_prediction")
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(1, 4, 4, 4, generator=g), torch.randn(1, 4, 4, 4, generator=g)
    sigma = torch.tensor([2.5])
    # diffusers EulerDiscreteScheduler: pred_original_sample = v * (-s / sqrt(s^2+1)) + x / (s^2+1)
    want = v * (-2.5 / (2.5**2 + 1) ** 0.5) + x / (2.5**2 + 1)
    torch.testing.assert_close(ms.calculate_denoised(sigma, v, x), want, rtol=0, atol=1e-6)


def _clip_pair(cfg: CLIPTextConfig) -> tuple[CLIPTextModel, torch.nn.Module, dict[str, torch.Tensor]]:
    import transformers

    hf_cfg = transformers.CLIPTextConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.width, num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads, intermediate_size=cfg.intermediate, hidden_act=cfg.activation,
        max_position_embeddings=cfg.max_positions, projection_dim=cfg.projection_dim,
        eos_token_id=cfg.eos_token_id, bos_token_id=cfg.eos_token_id - 1, pad_token_id=0)
    torch.manual_seed(0)
    ref = transformers.CLIPTextModelWithProjection(hf_cfg).eval()
    for p in ref.parameters():  # non-trivial norms and biases
        p.data.add_(0.05 * torch.randn_like(p))
    openclip = hf_to_openclip({k: v for k, v in ref.state_dict().items() if "position_ids" not in k})
    ours = CLIPTextModel(cfg).eval()
    ours.load_state_dict(dict(OpenCLIPView(openclip, "")), strict=True)
    return ours, ref, openclip


def test_clip_g_from_openclip_keys_matches_transformers_with_projection() -> None:
    cfg = dataclasses.replace(CLIPTextConfig.tiny(), activation="gelu", projection_dim=48, layers=3)
    ours, ref, openclip = _clip_pair(cfg)
    assert "transformer.resblocks.0.attn.in_proj_weight" in openclip and openclip["text_projection"].shape == (64, 48)
    tokens = torch.zeros(2, 77, dtype=torch.long)  # CLIP-G rows: BOS, text, EOS, then pad 0
    tokens[:, 0] = 49406
    tokens[0, 1:6] = torch.tensor([320, 1125, 539, 320, 2368])
    tokens[0, 6] = 49407
    tokens[1, 1] = 49407
    with torch.no_grad():
        out = ref(tokens, output_hidden_states=True)
        hidden, pooled, states = ours(tokens)
        projected = ours.project(pooled)
    for a, b in zip(states, out.hidden_states, strict=True):
        assert (a - b).abs().max() <= 1e-5
    assert (projected - out.text_embeds).abs().max() <= 1e-5
    assert (hidden - out.last_hidden_state).abs().max() <= 1e-5
    assert out.text_embeds.abs().max() > 0.1


def test_openclip_view_is_zero_copy() -> None:
    cfg = dataclasses.replace(CLIPTextConfig.tiny(), activation="gelu", projection_dim=64)
    _, _, openclip = _clip_pair(cfg)
    view = OpenCLIPView(openclip, "")
    q = view["text_model.encoder.layers.0.self_attn.q_proj.weight"]
    assert q.data_ptr() == openclip["transformer.resblocks.0.attn.in_proj_weight"].data_ptr()
    torch.testing.assert_close(view["text_projection.weight"], openclip["text_projection"].t(), rtol=0, atol=0)


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name,expected", [("sdxl", 2_567_463_684), ("sdxl_refiner", None), ("sd21", 865_910_724)])
def test_real_size_unet_parameter_counts_equal_diffusers(name: str, expected: int | None) -> None:
    from diffusers import UNet2DConditionModel

    cfg = getattr(UNetConfig, name)()
    with torch.device("meta"):
        ours = UNetModel(cfg)
        ref = UNet2DConditionModel(**_diffusers_config(cfg))
    assert _count(ours) == _count(ref)
    if expected is not None:
        assert _count(ours) == expected


def test_real_size_text_encoder_counts_equal_transformers() -> None:
    import transformers

    for cfg in (CLIPTextConfig.clip_g(), CLIPTextConfig.clip_h()):
        hf = transformers.CLIPTextConfig(
            hidden_size=cfg.width, num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
            intermediate_size=cfg.intermediate, hidden_act="gelu", projection_dim=cfg.projection_dim)
        with torch.device("meta"):
            ours, ref = CLIPTextModel(cfg), transformers.CLIPTextModelWithProjection(hf)
        assert _count(ours) == _count(ref)
    assert _count_meta_g() == 694_659_840  # OpenCLIP ViT-bigG text tower with its projection


def _count_meta_g() -> int:
    with torch.device("meta"):
        return _count(CLIPTextModel(CLIPTextConfig.clip_g()))
