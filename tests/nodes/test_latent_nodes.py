"""LATENT nodes against hand computations and torch references (ComfyUI nodes.py behaviour)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from comfy_notebook.nodes.latent import (
    NODE_CLASS_MAPPINGS,
    EmptyLatentImage,
    LatentBlend,
    LatentComposite,
    LatentFromBatch,
    LatentUpscale,
    LatentUpscaleBy,
    RepeatLatentBatch,
    SetLatentNoiseMask,
)


def _lat(b: int = 2, h: int = 8, w: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"samples": torch.randn(b, 4, h, w, generator=g)}


def test_empty_latent_image() -> None:
    (out,) = EmptyLatentImage().generate(512, 768, 3)
    x = out["samples"]
    assert x.shape == (3, 4, 96, 64) and x.device.type == "cpu" and x.dtype == torch.float32
    assert torch.count_nonzero(x) == 0
    spec = EmptyLatentImage.INPUT_TYPES()["required"]
    assert spec["width"] == ("INT", {"default": 512, "min": 16, "max": 16384, "step": 8})
    assert spec["batch_size"] == ("INT", {"default": 1, "min": 1, "max": 4096})
    assert EmptyLatentImage().generate(100, 100, 1)[0]["samples"].shape == (1, 4, 12, 12)


def test_latent_upscale_sizes_and_values() -> None:
    lat = _lat(1, 8, 12)
    lat["noise_mask"] = torch.ones(1, 1, 8, 8)
    (out,) = LatentUpscale().upscale(lat, "bilinear", 192, 128, "disabled")
    ref = F.interpolate(lat["samples"], size=(16, 24), mode="bilinear")
    torch.testing.assert_close(out["samples"], ref)
    assert out["noise_mask"] is lat["noise_mask"] and "noise_mask" in lat  # copy, not mutation
    assert LatentUpscale().upscale(lat, "bilinear", 0, 0, "disabled")[0] is lat
    # 0 on one side keeps the aspect; both sides at least 64 px
    assert LatentUpscale().upscale(lat, "area", 0, 128, "disabled")[0]["samples"].shape[-2:] == (
        16,
        24,
    )
    assert LatentUpscale().upscale(lat, "area", 8, 8, "disabled")[0]["samples"].shape[-2:] == (8, 8)
    bis = LatentUpscale().upscale(lat, "bislerp", 128, 128, "center")[0]["samples"]
    assert bis.shape == (1, 4, 16, 16) and torch.isfinite(bis).all()


def test_latent_upscale_by() -> None:
    lat = _lat(2, 8, 10)
    (out,) = LatentUpscaleBy().upscale(lat, "nearest-exact", 1.5)
    ref = F.interpolate(lat["samples"], size=(12, 15), mode="nearest-exact")
    torch.testing.assert_close(out["samples"], ref)


def test_latent_composite_plain_and_feathered() -> None:
    to, frm = _lat(1, 8, 8), _lat(1, 4, 6, seed=1)
    (out,) = LatentComposite().composite(to, frm, 16, 24, feather=0)  # pixel (16, 24) = latent (2, 3)
    expect = to["samples"].clone()
    expect[:, :, 3:7, 2:8] = frm["samples"][:, :, :5, :6]
    torch.testing.assert_close(out["samples"], expect)
    assert not torch.equal(to["samples"], out["samples"])  # input not mutated
    # feather 16 px = 2 latent px; source clipped at the right edge (x + w == 8) so no ramp there
    (fo,) = LatentComposite().composite(to, frm, 16, 8, feather=16)
    m = torch.ones(4, 6)
    ramp = [0.5, 1.0]
    for t in range(2):
        m[t, :] *= ramp[t]  # top edge inside the destination (y != 0)
        m[3 - t, :] *= ramp[t]  # bottom edge inside (1 + 4 < 8)
        m[:, t] *= ramp[t]  # left edge inside (x != 0)
    src = frm["samples"][:, :, :4, :6]
    region = to["samples"][:, :, 1:5, 2:8]
    expect = to["samples"].clone()
    expect[:, :, 1:5, 2:8] = src * m + region * (1 - m)
    torch.testing.assert_close(fo["samples"], expect)


def test_latent_blend() -> None:
    a, b = _lat(), _lat(seed=1)
    (out,) = LatentBlend().blend(a, b, 0.25)
    torch.testing.assert_close(out["samples"], a["samples"] * 0.25 + b["samples"] * 0.75)
    small = _lat(2, 4, 4, seed=2)
    (mixed,) = LatentBlend().blend(a, small, 0.5)
    up = F.interpolate(small["samples"], size=(8, 8), mode="bicubic")
    torch.testing.assert_close(mixed["samples"], 0.5 * a["samples"] + 0.5 * up)
    with pytest.raises(ValueError, match="blend mode"):
        LatentBlend().blend(a, b, 0.5, "multiply")


def test_latent_from_batch() -> None:
    lat = _lat(4)
    lat["noise_mask"] = torch.arange(2.0).reshape(2, 1, 1, 1).expand(2, 1, 8, 8)
    (out,) = LatentFromBatch().frombatch(lat, 1, 2)
    torch.testing.assert_close(out["samples"], lat["samples"][1:3])
    assert out["batch_index"] == [1, 2]
    # masks shorter than the batch are tiled: [0, 1, 0, 1] -> entries 1, 2 are [1, 0]
    assert out["noise_mask"][:, 0, 0, 0].tolist() == [1.0, 0.0]
    (last,) = LatentFromBatch().frombatch(lat, 3, 5)  # length clamped to the end
    assert last["samples"].shape[0] == 1 and last["batch_index"] == [3]
    (again,) = LatentFromBatch().frombatch(out, 1, 1)  # batch_index is carried, not recomputed
    assert again["batch_index"] == [2]
    (neg,) = LatentFromBatch().frombatch(lat, -1, 1)
    assert neg["batch_index"] == [3]


def test_repeat_latent_batch() -> None:
    lat = _lat(2)
    (out,) = RepeatLatentBatch().repeat(lat, 3)
    assert out["samples"].shape == (6, 4, 8, 8)
    torch.testing.assert_close(out["samples"][4:6], lat["samples"])
    assert "batch_index" not in out
    picked = LatentFromBatch().frombatch(_lat(4), 1, 2)[0]  # batch_index [1, 2]
    (rep,) = RepeatLatentBatch().repeat(picked, 3)
    assert rep["batch_index"] == [1, 2, 3, 4, 5, 6]
    masked = dict(lat, noise_mask=torch.rand(2, 1, 8, 8))
    (rm,) = RepeatLatentBatch().repeat(masked, 2)
    torch.testing.assert_close(rm["noise_mask"][2:], masked["noise_mask"])


def test_set_latent_noise_mask_shapes() -> None:
    lat = _lat(2)
    (out,) = SetLatentNoiseMask().set_mask(lat, torch.rand(64, 64))
    assert out["noise_mask"].shape == (1, 1, 64, 64) and "noise_mask" not in lat
    (out2,) = SetLatentNoiseMask().set_mask(lat, torch.rand(3, 32, 32))
    assert out2["noise_mask"].shape == (3, 1, 32, 32)


def test_mappings() -> None:
    assert set(NODE_CLASS_MAPPINGS) == {
        "EmptyLatentImage", "LatentUpscale", "LatentUpscaleBy", "LatentComposite",
        "LatentBlend", "LatentFromBatch", "RepeatLatentBatch", "SetLatentNoiseMask",
    }
    assert LatentUpscale.INPUT_TYPES()["required"]["upscale_method"][0][-1] == "bislerp"
