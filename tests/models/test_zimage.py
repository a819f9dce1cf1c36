"""Z-Image transformer vs diffusers' ZImageTransformer2DModel on identical weights."""

from __future__ import annotations

import pytest
import torch

from comfy_notebook.models.zimage import ZImage, ZImageConfig
from comfy_notebook.testing import random_state_dict

diffusers = pytest.importorskip("diffusers")


def _ours(config: ZImageConfig, seed: int = 0) -> tuple[ZImage, dict]:
    with torch.device("meta"):
        model = ZImage(config)
    sd = random_state_dict(model, seed, torch.float32, "zimage")
    sd["x_pad_token"] = torch.randn(1, config.dim)  # zeros in a fresh model; exercise them
    sd["cap_pad_token"] = torch.randn(1, config.dim)
    model.load_state_dict(sd, assign=True, strict=True)
    return model.eval(), sd


def _reference(config: ZImageConfig, sd: dict):
    from diffusers.loaders.single_file_utils import (
        convert_z_image_transformer_checkpoint_to_diffusers,
    )

    ref = diffusers.ZImageTransformer2DModel(
        in_channels=config.in_channels, dim=config.dim, n_layers=config.n_layers,
        n_refiner_layers=config.n_refiner_layers, n_heads=config.n_heads, n_kv_heads=config.n_heads,
        cap_feat_dim=config.cap_feat_dim, axes_dims=list(config.axes_dims))
    converted = convert_z_image_transformer_checkpoint_to_diffusers(
        {"model.diffusion_model." + k: v.clone() for k, v in sd.items()})
    missing, unexpected = ref.load_state_dict(converted, strict=False)
    assert not unexpected and not missing, (missing, unexpected)
    return ref.eval()


@pytest.mark.parametrize(("h", "w", "n_cap"), [(8, 8, 7), (12, 8, 32), (6, 10, 40)])
def test_forward_equals_diffusers(h: int, w: int, n_cap: int) -> None:
    config = ZImageConfig.tiny()
    ours, sd = _ours(config)
    ref = _reference(config, sd)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, config.in_channels, h, w, generator=g)
    t = torch.tensor([0.3, 0.9])
    cap = torch.randn(2, n_cap, config.cap_feat_dim, generator=g)
    with torch.no_grad():
        got = ours(x, t, cap)
        want = ref([xi[:, None] for xi in x], t, list(cap), return_dict=False)[0]
    want = torch.stack([wi[:, 0] for wi in want])
    assert got.shape == x.shape
    assert (got - want).abs().max() <= 1e-5


def test_config_from_state_dict_and_real_size() -> None:
    config = ZImageConfig.tiny()
    _, sd = _ours(config)
    assert ZImageConfig.from_state_dict(sd) == config
    with torch.device("meta"):
        turbo = ZImage(ZImageConfig.turbo())
    with torch.device("meta"):
        ref = diffusers.ZImageTransformer2DModel()
    n_ours = sum(p.numel() for p in turbo.parameters())
    n_ref = sum(p.numel() for p in ref.parameters())
    assert n_ours == n_ref == 6_154_908_736, (n_ours, n_ref)
