"""MASK nodes and the masked composites against hand-written references of ComfyUI's formulas
(comfy_extras/nodes_mask.py at Comfy-Org/ComfyUI@a125cd8) and scipy's grey morphology."""

from __future__ import annotations

import pytest
import torch

from comfy_notebook.nodes import mask as m


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def test_mask_to_image_and_back() -> None:
    mask = _rand(2, 5, 7)
    (image,) = m.MaskToImage().mask_to_image(mask)
    assert image.shape == (2, 5, 7, 3)
    for c in range(3):
        assert torch.equal(image[..., c], mask)
    rgba = _rand(1, 4, 4, 4, seed=1)
    for i, channel in enumerate(["red", "green", "blue", "alpha"]):
        assert torch.equal(m.ImageToMask().image_to_mask(rgba, channel)[0], rgba[..., i])


def test_solid_invert_threshold_crop() -> None:
    (solid,) = m.SolidMask().solid(0.25, 6, 3)
    assert solid.shape == (1, 3, 6) and solid.dtype == torch.float32 and (solid == 0.25).all()
    mask = _rand(2, 8, 8)
    assert torch.equal(m.InvertMask().invert(mask)[0], 1.0 - mask)
    assert torch.equal(m.ThresholdMask().image_to_mask(mask, 0.5)[0], (mask > 0.5).float())
    (crop,) = m.CropMask().crop(mask, 2, 3, 4, 100)  # height clipped at the edge
    assert torch.equal(crop, mask[:, 3:8, 2:6])


@pytest.mark.parametrize("op", ["multiply", "add", "subtract", "and", "or", "xor"])
def test_mask_composite(op: str) -> None:
    dst, src = _rand(1, 6, 6), _rand(1, 4, 4, seed=3)
    (out,) = m.MaskComposite().combine(dst, src, 3, 1, op)
    ref = dst.clone()
    d, s = ref[:, 1:5, 3:6], src[:, :4, :3]  # the visible part of the source
    res = {"multiply": d * s, "add": d + s, "subtract": d - s,
           "and": (d.round().bool() & s.round().bool()).float(),
           "or": (d.round().bool() | s.round().bool()).float(),
           "xor": (d.round().bool() ^ s.round().bool()).float()}[op]
    ref[:, 1:5, 3:6] = res
    assert torch.equal(out, ref.clamp(0, 1))


def test_feather_mask_matches_comfyui_loop() -> None:
    mask = torch.ones(1, 6, 8)
    (out,) = m.FeatherMask().feather(mask, 2, 1, 3, 2)
    ref = torch.ones(1, 6, 8)
    ref[:, :, 0] *= 0.5
    ref[:, :, 1] *= 1.0
    # right edge: ComfyUI's -x indexing (x = 0 hits column 0, then columns -1, -2)
    ref[:, :, 0] *= 1 / 3
    ref[:, :, -1] *= 2 / 3
    ref[:, :, -2] *= 1.0
    ref[:, 0, :] *= 1.0  # top 1 px: (0+1)/1
    ref[:, 0, :] *= 0.5  # bottom: -0 == row 0
    ref[:, -1, :] *= 1.0
    assert torch.allclose(out, ref)


@pytest.mark.parametrize("expand", [3, -2, 0])
@pytest.mark.parametrize("tapered", [True, False])
def test_grow_mask_matches_scipy(expand: int, tapered: bool) -> None:
    ndimage = pytest.importorskip("scipy.ndimage")
    import numpy as np

    mask = (_rand(2, 12, 10, seed=4) > 0.8).float() * _rand(2, 12, 10, seed=5)
    (out,) = m.GrowMask().expand_mask(mask, expand, tapered)
    c = 0 if tapered else 1
    kernel = np.array([[c, 1, c], [1, 1, 1], [c, 1, c]])
    refs = []
    for item in mask:
        a = item.numpy()
        for _ in range(abs(expand)):
            a = (ndimage.grey_erosion if expand < 0 else ndimage.grey_dilation)(a, footprint=kernel)
        refs.append(torch.from_numpy(a))
    assert torch.equal(out, torch.stack(refs))


def _composite_ref(dst: torch.Tensor, src: torch.Tensor, x: int, y: int,
                   mask: torch.Tensor | None, mult: int) -> torch.Tensor:
    """Hand reference for an in-bounds paste: out = mask * src + (1 - mask) * dst in the window."""
    out = dst.clone()
    left, top = x // mult, y // mult
    h = min(src.shape[-2], dst.shape[-2] - top)
    w = min(src.shape[-1], dst.shape[-1] - left)
    mk = torch.ones_like(src) if mask is None else torch.nn.functional.interpolate(
        mask.reshape(-1, 1, *mask.shape[-2:]), size=src.shape[-2:], mode="bilinear")
    mk = mk[:, :, :h, :w]
    out[..., top:top + h, left:left + w] = mk * src[..., :h, :w] + (1 - mk) * dst[..., top:top + h, left:left + w]
    return out


def test_image_composite_masked() -> None:
    dst, src = _rand(1, 10, 12, 3), _rand(1, 6, 5, 3, seed=6)
    mask = _rand(1, 3, 3, seed=7)
    (out,) = m.ImageCompositeMasked().composite(dst, src, 9, 6, False, mask)
    ref = _composite_ref(dst.movedim(-1, 1), src.movedim(-1, 1), 9, 6, mask, 1).movedim(1, -1)
    assert torch.allclose(out, ref, atol=1e-6)
    assert torch.equal(dst, dst.clone())  # input untouched
    # an RGB destination under an RGBA source: the source's alpha is dropped
    (out4,) = m.ImageCompositeMasked().composite(dst, torch.cat([src, src[..., :1]], -1), 0, 0, False)
    assert out4.shape[-1] == 3
    # resize_source stretches the source over the whole destination
    (full,) = m.ImageCompositeMasked().composite(dst, src, 0, 0, True)
    big = torch.nn.functional.interpolate(src.movedim(-1, 1), size=(10, 12), mode="bilinear")
    assert torch.allclose(full, big.movedim(1, -1))


def test_latent_composite_masked_in_latent_units() -> None:
    dst = {"samples": _rand(1, 4, 8, 8), "batch_index": [3]}
    src = {"samples": _rand(1, 4, 4, 4, seed=8)}
    (out,) = m.LatentCompositeMasked().composite(dst, src, 16, 24, False)
    ref = _composite_ref(dst["samples"], src["samples"], 16, 24, None, 8)
    assert torch.equal(out["samples"], ref) and out["batch_index"] == [3]
