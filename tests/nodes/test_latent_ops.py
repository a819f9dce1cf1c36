"""Latent arithmetic, batch, transform and rebatch nodes against hand references of ComfyUI's
formulas (nodes_latent.py, nodes.py, nodes_rebatch.py at Comfy-Org/ComfyUI@a125cd8)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from comfy_notebook.nodes import latent_ops as lo
from comfy_notebook.nodes.conditioning import ConditioningSetAreaStrength


def _lat(b: int = 1, h: int = 8, w: int = 8, seed: int = 0) -> dict:
    return {"samples": torch.randn(b, 4, h, w, generator=torch.Generator().manual_seed(seed))}


def test_add_subtract_multiply() -> None:
    a, b = _lat(2), _lat(1, seed=1)
    assert torch.equal(lo.LatentAdd().op(a, b)[0]["samples"], a["samples"] + b["samples"])
    assert torch.equal(lo.LatentSubtract().op(a, b)[0]["samples"], a["samples"] - b["samples"])
    assert torch.equal(lo.LatentMultiply().op(a, 0.5)[0]["samples"], a["samples"] * 0.5)
    # a second latent of another size is resized bilinearly (centre crop) first
    c = _lat(1, 4, 6, seed=2)
    crop = c["samples"][:, :, :, 1:5]
    ref = a["samples"] + F.interpolate(crop, size=(8, 8), mode="bilinear").repeat(2, 1, 1, 1)
    assert torch.allclose(lo.LatentAdd().op(a, c)[0]["samples"], ref)


def test_interpolate_norms_and_directions() -> None:
    a, b = _lat(seed=3), _lat(seed=4)
    for ratio in (0.0, 0.3, 1.0):
        (out,) = lo.LatentInterpolate().op(a, b, ratio)
        s1, s2 = a["samples"][0], b["samples"][0]  # [C, H, W]
        n1, n2 = s1.norm(dim=0), s2.norm(dim=0)  # per-pixel magnitudes
        t = s1 / n1 * ratio + s2 / n2 * (1 - ratio)
        ref = t / t.norm(dim=0) * (n1 * ratio + n2 * (1 - ratio))
        assert torch.allclose(out["samples"][0], ref, atol=1e-5)
    assert torch.allclose(lo.LatentInterpolate().op(a, b, 1.0)[0]["samples"], a["samples"], atol=1e-5)


def test_batch_crop_flip_rotate() -> None:
    a, b = _lat(2, seed=5), _lat(1, seed=6)
    (batch,) = lo.LatentBatch().batch(a, {**b, "batch_index": [7]})
    assert torch.equal(batch["samples"], torch.cat([a["samples"], b["samples"]]))
    assert batch["batch_index"] == [0, 1, 7]
    big = _lat(1, 16, 12, seed=7)
    (crop,) = lo.LatentCrop().crop(big, 64, 64, 40, 200)  # x, y clamped to size - 8 latent px
    assert torch.equal(crop["samples"], big["samples"][:, :, 8:16, 4:12])
    s = big["samples"]
    assert torch.equal(lo.LatentFlip().flip(big, "x-axis: vertically")[0]["samples"], s.flip(2))
    assert torch.equal(lo.LatentFlip().flip(big, "y-axis: horizontally")[0]["samples"], s.flip(3))
    (r90,) = lo.LatentRotate().rotate(big, "90 degrees")
    assert r90["samples"].shape == (1, 4, 12, 16)
    # clockwise: the first column, bottom to top, becomes the first row
    assert torch.equal(r90["samples"][0, :, 0, :], s[0, :, :, 0].flip(-1))
    assert torch.equal(lo.LatentRotate().rotate(big, "none")[0]["samples"], s)


def test_rebatch_latents() -> None:
    a, b = _lat(3, seed=8), _lat(2, seed=9)
    other = _lat(1, 4, 4, seed=10)
    (out,) = lo.RebatchLatents().rebatch([a, b, other], [2])
    assert [o["samples"].shape[0] for o in out] == [2, 2, 1, 1]
    assert torch.equal(torch.cat([o["samples"] for o in out[:3]]), torch.cat([a["samples"], b["samples"]]))
    assert [o["batch_index"] for o in out] == [[0, 1], [2, 3], [4], [5]]
    assert all("noise_mask" not in o for o in out)  # all-ones masks are dropped
    masked = {**_lat(2, seed=11), "noise_mask": torch.zeros(1, 1, 64, 64)}
    (out2,) = lo.RebatchLatents().rebatch([masked], [1])
    assert len(out2) == 2 and out2[0]["noise_mask"].shape == (1, 1, 64, 64)


def test_rebatch_images() -> None:
    imgs = [torch.rand(3, 4, 4, 3), torch.rand(2, 4, 4, 3)]
    (out,) = lo.RebatchImages().rebatch(imgs, [2])
    assert [o.shape[0] for o in out] == [2, 2, 1]
    assert torch.equal(torch.cat(out), torch.cat(imgs))


def test_conditioning_set_area_strength() -> None:
    cond = [[torch.zeros(1, 77, 8), {"pooled_output": None, "area": (1, 2, 3, 4)}]]
    (out,) = ConditioningSetAreaStrength().append(cond, 2.5)
    assert out[0][1]["strength"] == 2.5 and out[0][1]["area"] == (1, 2, 3, 4)
    assert "strength" not in cond[0][1]  # the input is not modified


@pytest.mark.parametrize("method", ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"])
def test_latent_upscale_by_every_method(method: str) -> None:
    from comfy_notebook.nodes.latent import LatentUpscaleBy

    lat = _lat(2, 6, 10, seed=12)
    (out,) = LatentUpscaleBy().upscale(lat, method, 1.3)
    h, w = round(6 * 1.3), round(10 * 1.3)  # ComfyUI rounds each side
    assert out["samples"].shape == (2, 4, h, w)
    if method == "bislerp":
        # slerp keeps a constant field constant (directions and norms are interpolated)
        const = {"samples": torch.ones(1, 4, 6, 10) * torch.tensor([1.0, -2.0, 0.5, 3.0])[None, :, None, None]}
        (up,) = LatentUpscaleBy().upscale(const, method, 1.3)
        torch.testing.assert_close(up["samples"], const["samples"][:, :, :1, :1].expand(1, 4, h, w))
    else:
        ref = F.interpolate(lat["samples"], size=(h, w), mode=method)
        assert torch.equal(out["samples"], ref)


def test_rebatch_through_the_engine_maps_lists() -> None:
    from comfy_notebook._session import Session
    from comfy_notebook.nodes import register_builtins

    s = Session()
    register_builtins(s)
    api = {
        "1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 5}},
        "2": {"class_type": "RebatchLatents", "inputs": {"latents": ["1", 0], "batch_size": 2}},
        "3": {"class_type": "LatentMultiply", "inputs": {"samples": ["2", 0], "multiplier": 2.0}},
    }
    result = s.run_prompt(api, targets=["3"])
    batches = result.outputs["2"][0]
    assert [b["samples"].shape[0] for b in batches] == [2, 2, 1]
    assert [b["batch_index"] for b in batches] == [[0, 1], [2, 3], [4]]
    assert len(result.outputs["3"][0]) == 3  # the list is mapped over the next node
