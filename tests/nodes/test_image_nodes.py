"""IMAGE nodes and the resize helper, against hand computations and torch / PIL references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from comfy_notebook.nodes.image import (
    NODE_CLASS_MAPPINGS,
    EmptyImage,
    ImageBatch,
    ImageCrop,
    ImageInvert,
    ImagePadForOutpaint,
    ImageScale,
    ImageScaleBy,
    bislerp,
    common_upscale,
)


def _img(b: int = 2, h: int = 12, w: int = 16, c: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, h, w, c, generator=g)


@pytest.mark.parametrize("method", ["nearest-exact", "bilinear", "area", "bicubic"])
def test_image_scale_matches_torch_interpolate(method: str) -> None:
    image = _img()
    (out,) = ImageScale().upscale(image, method, 24, 18, "disabled")
    ref = F.interpolate(image.movedim(-1, 1), size=(18, 24), mode=method).movedim(1, -1)
    assert out.shape == (2, 18, 24, 3)
    torch.testing.assert_close(out, ref)


def test_image_scale_zero_side_keeps_aspect_and_center_crop() -> None:
    image = _img(1, 10, 20)
    assert ImageScale().upscale(image, "bilinear", 0, 0, "disabled")[0] is image
    assert ImageScale().upscale(image, "bilinear", 0, 5, "disabled")[0].shape == (1, 5, 10, 3)
    assert ImageScale().upscale(image, "bilinear", 40, 0, "disabled")[0].shape == (1, 20, 40, 3)
    # center crop 20x10 to a square: columns 5..14 survive, then nearest to 10x10 is identity
    (out,) = ImageScale().upscale(image, "nearest-exact", 10, 10, "center")
    torch.testing.assert_close(out, image[:, :, 5:15, :])


def test_lanczos_matches_pil() -> None:
    image = _img(2, 9, 13)
    (out,) = ImageScaleBy().upscale(image, "lanczos", 2.0)
    assert out.shape == (2, 18, 26, 3)
    for k in range(2):
        u8 = np.clip(255.0 * image[k].numpy(), 0, 255).astype(np.uint8)
        ref = np.asarray(Image.fromarray(u8).resize((26, 18), Image.Resampling.LANCZOS))
        np.testing.assert_allclose(out[k].numpy(), ref.astype(np.float32) / 255.0, atol=1e-6)


def test_image_scale_by_rounds_like_comfyui() -> None:
    image = _img(1, 10, 15)
    (out,) = ImageScaleBy().upscale(image, "area", 0.5)
    assert out.shape == (1, 5, 8, 3)  # round(7.5) == 8 (banker's rounding gives 8)


def _ref_slerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """ComfyUI's slerp rule for one pair of channel vectors, in float64."""
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    ua = a / na if na else np.zeros_like(a)
    ub = b / nb if nb else np.zeros_like(b)
    dot = float(ua @ ub)
    if dot > 1 - 1e-5:
        return a
    if dot < 1e-5 - 1:
        return a * (1 - t) + b * t
    om = np.arccos(dot)
    v = np.sin((1 - t) * om) / np.sin(om) * ua + np.sin(t * om) / np.sin(om) * ub
    return v * (na * (1 - t) + nb * t)


def _ref_resize_axis(x: np.ndarray, new: int) -> np.ndarray:
    """Resize the last axis of [C, H, W] with per-pixel slerps (half-pixel centres, clamped)."""
    c, h, w = x.shape
    out = np.zeros((c, h, new))
    for j in range(new):
        pos = min(max((j + 0.5) * w / new - 0.5, 0.0), w - 1)
        lo = int(np.floor(pos))
        hi = min(lo + 1, w - 1)
        for i in range(h):
            out[:, i, j] = _ref_slerp(x[:, i, lo], x[:, i, hi], pos - lo)
    return out


@pytest.mark.parametrize("size", [(10, 14), (3, 4), (9, 6)])
def test_bislerp_matches_per_pixel_reference(size: tuple[int, int]) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 5, 7, generator=g)
    x[0, :, 1, 1] = 0.0  # a zero vector
    x[1, :, 2, 3] = -x[1, :, 2, 2]  # opposite neighbours
    out = bislerp(x, size[1], size[0])
    assert out.shape == (2, 4, *size)
    for k in range(2):
        ref = _ref_resize_axis(x[k].double().numpy(), size[1])  # width first
        ref = _ref_resize_axis(ref.transpose(0, 2, 1), size[0]).transpose(0, 2, 1)
        np.testing.assert_allclose(out[k].numpy(), ref, atol=1e-4, rtol=1e-4)


def test_bislerp_keeps_unit_norms() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.nn.functional.normalize(torch.randn(1, 4, 6, 6, generator=g), dim=1)
    out = common_upscale(x, 15, 11, "bislerp", "disabled")
    assert out.shape == (1, 4, 11, 15)
    norms = torch.linalg.vector_norm(out, dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-4, rtol=0)
    # plain bilinear shrinks them: bislerp is not just bilinear
    lin = torch.linalg.vector_norm(F.interpolate(x, size=(11, 15), mode="bilinear"), dim=1)
    assert lin.min() < 0.95


def test_common_upscale_5d_frames() -> None:
    x = torch.rand(1, 3, 2, 4, 4)  # [B, C, T, H, W]
    out = common_upscale(x, 8, 6, "bilinear", "disabled")
    assert out.shape == (1, 3, 2, 6, 8)
    ref = F.interpolate(x[:, :, 1], size=(6, 8), mode="bilinear")
    torch.testing.assert_close(out[:, :, 1], ref)


def test_image_invert_keeps_alpha() -> None:
    rgb = _img(1, 4, 4, 3)
    torch.testing.assert_close(ImageInvert().invert(rgb)[0], 1.0 - rgb)
    rgba = _img(1, 4, 4, 4)
    out = ImageInvert().invert(rgba)[0]
    torch.testing.assert_close(out[..., :3], 1.0 - rgba[..., :3])
    torch.testing.assert_close(out[..., 3], rgba[..., 3])


def test_image_batch_resizes_second_like_comfyui() -> None:
    a, b = _img(2, 8, 8), _img(3, 4, 8, seed=3)
    (out,) = ImageBatch().batch(a, b)
    assert out.shape == (5, 8, 8, 3)
    torch.testing.assert_close(out[:2], a)
    # center crop 4x8 -> 4x4 (columns 2..5), then bilinear up to 8x8
    ref = F.interpolate(b[:, :, 2:6, :].movedim(-1, 1), size=(8, 8), mode="bilinear")
    torch.testing.assert_close(out[2:], ref.movedim(1, -1))
    (mixed,) = ImageBatch().batch(_img(1, 4, 4, 4), _img(1, 4, 4, 3))
    assert mixed.shape == (2, 4, 4, 4) and torch.all(mixed[1, ..., 3] == 1.0)


def test_empty_image_colour() -> None:
    (out,) = EmptyImage().generate(5, 3, 2, 0xFF8000)
    assert out.shape == (2, 3, 5, 3) and out.dtype == torch.float32
    torch.testing.assert_close(out[1, 2, 4], torch.tensor([1.0, 128 / 255, 0.0]))


def test_pad_for_outpaint_mask_matches_loop_formula() -> None:
    image = _img(1, 20, 24)
    left, top, right, bottom, feather = 8, 0, 16, 8, 5
    out, mask = ImagePadForOutpaint().expand_image(image, left, top, right, bottom, feather)
    assert out.shape == (1, 28, 48, 3) and mask.shape == (1, 28, 48)
    torch.testing.assert_close(out[:, 0:20, 8:32], image)
    assert torch.all(out[:, 20:, :] == 0.5) and torch.all(out[:, :, :8] == 0.5)
    assert torch.all(mask[0, 20:, :] == 1) and torch.all(mask[0, :, 32:] == 1)
    # ComfyUI's per-pixel rule, written out plainly
    h, w = 20, 24
    for i in range(h):
        for j in range(w):
            dt = i if top != 0 else h
            db = h - i if bottom != 0 else h
            dl = j if left != 0 else w
            dr = w - j if right != 0 else w
            d = min(dt, db, dl, dr)
            expect = 0.0 if d >= feather else ((feather - d) / feather) ** 2
            assert mask[0, i, left + j].item() == pytest.approx(expect)
    # feathering too large for the image: no feather at all
    _, m2 = ImagePadForOutpaint().expand_image(_img(1, 8, 8), 8, 8, 8, 8, 40)
    assert torch.all(m2[0, 8:16, 8:16] == 0)


def test_image_crop_clamps() -> None:
    image = _img(2, 10, 10)
    (out,) = ImageCrop().crop(image, 4, 3, 2, 5)
    torch.testing.assert_close(out, image[:, 5:8, 2:6])
    (edge,) = ImageCrop().crop(image, 512, 512, 50, 50)
    assert edge.shape == (2, 1, 1, 3)


def test_node_classes_declare_comfyui_inputs() -> None:
    assert list(NODE_CLASS_MAPPINGS) == [
        "ImageScale", "ImageScaleBy", "ImageInvert", "ImageBatch",
        "ImagePadForOutpaint", "EmptyImage", "ImageCrop",
    ]
    req = ImageScale.INPUT_TYPES()["required"]
    assert list(req) == ["image", "upscale_method", "width", "height", "crop"]
    assert req["upscale_method"][0] == ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
    assert ImagePadForOutpaint.RETURN_TYPES == ("IMAGE", "MASK")
    assert EmptyImage.INPUT_TYPES()["required"]["color"][1]["max"] == 0xFFFFFF
