"""Our T2I-Adapter against diffusers' T2IAdapter on identical random weights (full, XL, light),
loaded through our diffusers -> original key conversion."""

from __future__ import annotations

import pytest
import torch

from comfy_notebook.models.t2i_adapter import (
    AdapterConfig,
    T2IAdapter,
    convert_diffusers_adapter,
    is_adapter_state_dict,
)
from comfy_notebook.testing import random_state_dict

CASES = {
    # diffusers adapter_type, image channels, channels (diffusers), ours: kind, channels
    "full": ("full_adapter", 3, [32, 64, 128, 128], "full", (32, 64, 128, 128)),
    "full-1ch": ("full_adapter", 1, [32, 64, 128, 128], "full", (32, 64, 128, 128)),
    "full_xl": ("full_adapter_xl", 3, [32, 64, 128, 128], "full_xl", (32, 64, 128, 128)),
    "light": ("light_adapter", 3, [32, 64, 128], "light", (32, 64, 128, 128)),
}


def adapter_pair(case: str, seed: int = 0) -> tuple[T2IAdapter, torch.nn.Module]:
    from diffusers import T2IAdapter as RefAdapter

    dtype_name, cin, dch, _, _ = CASES[case]
    scale = 16 if dtype_name == "full_adapter_xl" else 8
    ref = RefAdapter(in_channels=cin, channels=dch, num_res_blocks=2, downscale_factor=scale,
                     adapter_type=dtype_name).eval()
    dsd = random_state_dict(ref, seed, tag="t2i")
    ref.load_state_dict(dsd, strict=True)
    sd = convert_diffusers_adapter(dsd)
    assert is_adapter_state_dict(dsd) and is_adapter_state_dict(sd)
    ours = T2IAdapter(AdapterConfig.from_state_dict(sd)).eval()
    ours.load_state_dict(sd, strict=True)
    return ours, ref


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_diffusers_adapter(case):
    ours, ref = adapter_pair(case)
    _, cin, _, kind, channels = CASES[case]
    assert ours.config.kind == kind and ours.config.channels == channels
    assert ours.config.input_channels == cin
    gen = torch.Generator().manual_seed(1)
    image = torch.rand(2, cin, 128, 128, generator=gen)
    with torch.no_grad():
        a = ours.features(image)
        b = ref(image)
    assert len(a) == len(b) == 4
    for x, y in zip(a, b, strict=True):
        assert x.shape == y.shape
        assert x.abs().mean() > 1e-3
        assert (x - y).abs().max().item() <= 1e-5


def test_features_land_on_the_blocks_that_end_a_level():
    ours, _ = adapter_pair("full")
    res = ours(torch.rand(1, 3, 64, 64))
    assert [i for i, f in enumerate(res.input) if f is not None] == [2, 5, 8, 11]
    assert res.middle is None
    xl, _ = adapter_pair("full_xl")
    res = xl(torch.rand(1, 3, 128, 128))
    assert [i for i, f in enumerate(res.input) if f is not None] == [3, 5, 8]
    assert res.middle is not None and res.middle.shape[1] == 128


def test_sd15_full_adapter_keys_and_count():
    """The released t2iadapter_*_sd14v1 layout: conv_in 192->320, 1x1 in_conv/block2, avg-pool downs."""
    with torch.device("meta"):
        m = T2IAdapter(AdapterConfig())
    keys = set(m.state_dict())
    assert {"conv_in.weight", "body.2.in_conv.weight", "body.7.block2.weight"} <= keys
    assert "body.1.in_conv.weight" not in keys and not any("down_opt" in k for k in keys)
    from diffusers import T2IAdapter as RefAdapter

    with torch.device("meta"):
        ref = RefAdapter()  # diffusers' defaults: the SD1.x full adapter
    n = sum(p.numel() for p in m.parameters())
    assert n == sum(p.numel() for p in ref.parameters()) == 77_369_280
