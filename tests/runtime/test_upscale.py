"""Upscale models through spandrel: tiny RRDBNet files in the released key layouts, loaded by
our loader and compared with spandrel's own model on the same file; tiling and the
out-of-memory retry of ComfyUI's ImageUpscaleWithModel (tile 512, overlap 32, down to 128)."""

from __future__ import annotations

import pathlib
import sys

import pytest
import torch

from comfy_notebook.errors import ModelLoadError, UnsupportedModelError
from comfy_notebook.runtime import DevicePolicy, ModelManager
from comfy_notebook.runtime import upscale as up
from comfy_notebook.testing import make_esrgan


def _spandrel_direct(path: str) -> torch.nn.Module:
    spandrel = up.import_spandrel()
    return spandrel.ModelLoader().load_from_file(path).eval()


def _image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, h, w, 3, generator=torch.Generator().manual_seed(seed))


def test_spandrel_imports_without_torchvision_and_leaves_no_stub() -> None:
    spandrel = up.import_spandrel()
    assert hasattr(spandrel, "ModelLoader")
    mod = sys.modules.get("torchvision")
    assert mod is None or getattr(mod, "__file__", None) is not None  # a real one, or none


@pytest.mark.parametrize(("layout", "scale", "suffix"), [
    ("realesrgan", 4, ".pth"), ("esrgan", 2, ".pth"), ("esrgan", 4, ".safetensors")])
def test_loaded_model_equals_spandrel_direct(tmp_path: pathlib.Path, layout: str, scale: int,
                                             suffix: str) -> None:
    path = make_esrgan(tmp_path / f"m{suffix}", layout=layout, scale=scale, seed=3)
    manager = ModelManager(DevicePolicy.cpu())
    value = up.load_upscale_model_value(manager, path)
    assert value.scale == scale and value.architecture == "ESRGAN"
    image = _image(20, 24)
    out = value.upscale(image)
    assert out.shape == (1, 20 * scale, 24 * scale, 3)
    direct = _spandrel_direct(path)
    with torch.inference_mode():
        ref = direct(image.movedim(-1, 1)).clamp(0, 1).movedim(1, -1)
    assert torch.equal(out, ref)
    assert (out >= 0).all() and (out <= 1).all()


def test_tiled_equals_untiled_within_bound(tmp_path: pathlib.Path) -> None:
    """Tiling changes pixels by at most 0.01 here (measured 1.7e-3 max, 3e-5 mean: RRDB's
    receptive field exceeds the 8-pixel overlap, so tile borders differ slightly).

    With a per-pixel model tiling must be exact: checked on a 1x1-conv function too.
    """
    path = make_esrgan(tmp_path / "t.pth", layout="realesrgan", seed=5)
    manager = ModelManager(DevicePolicy.cpu())
    value = up.load_upscale_model_value(manager, path)
    image = _image(40, 36, seed=1)
    whole = value.upscale(image, tile=512, overlap=32)
    tiled = value.upscale(image, tile=24, overlap=8)
    diff = (whole - tiled).abs()
    assert diff.max() <= 0.01 and diff.mean() <= 2e-4
    assert diff.max() > 0  # the tiles really were blended
    # pointwise function: the feathered blend reproduces it exactly (up to fp rounding)
    x = image.movedim(-1, 1)

    def pointwise(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(t, scale_factor=2, mode="nearest") * 0.5

    ref = pointwise(x)
    got = up.tiled_scale(x, pointwise, tile=16, overlap=4, scale=2)
    assert torch.allclose(got, ref, atol=1e-6)


def test_tile_grid_is_comfyuis() -> None:
    seen: list[tuple[int, int]] = []

    def fn(t: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(t.shape[-2:]))
        return t

    up.tiled_scale(torch.zeros(1, 3, 100, 70), fn, tile=64, overlap=16, scale=1)
    # rows start at 0, 48 (range(0, 100-16, 48)); cols at 0, 48 (range(0, 54, 48)); clipped ends
    assert seen == [(64, 64), (64, 22), (52, 64), (52, 22)]


def test_oom_retry_halves_tile_down_to_128(tmp_path: pathlib.Path) -> None:
    path = make_esrgan(tmp_path / "o.pth", layout="esrgan", scale=2, seed=7)
    manager = ModelManager(DevicePolicy.cpu())
    value = up.load_upscale_model_value(manager, path)
    image = _image(300, 260, seed=2)
    module = manager[value.ref.name]._module
    real_forward = module.forward
    calls: list[int] = []

    def flaky(t: torch.Tensor) -> torch.Tensor:  # simulated: tiles over 128 px do not fit
        calls.append(max(t.shape[-2:]))
        if max(t.shape[-2:]) > 128:
            raise torch.OutOfMemoryError("simulated CUDA out of memory")
        return real_forward(t)

    module.forward = flaky
    retries: list[int] = []
    try:
        out = value.upscale(image, on_retry=retries.append)
    finally:
        module.forward = real_forward
    assert retries == [256, 128]
    assert max(calls[-1:]) <= 128 and out.shape == (1, 600, 520, 3)
    ref = value.upscale(image, tile=128)
    assert torch.equal(out, ref)

    def always(t: torch.Tensor) -> torch.Tensor:
        raise torch.OutOfMemoryError("simulated")

    module.forward = always
    try:
        with pytest.raises(Exception, match="out of memory"):
            value.upscale(image)
    finally:
        module.forward = real_forward


def test_value_survives_unload_and_reuses_managed_model(tmp_path: pathlib.Path) -> None:
    path = make_esrgan(tmp_path / "u.pth", layout="realesrgan", seed=9)
    manager = ModelManager(DevicePolicy.cpu())
    a = up.load_upscale_model_value(manager, path, name="u")
    b = up.load_upscale_model_value(manager, path, name="u")
    assert a.ref.base is b.ref.base and len(manager) == 1
    image = _image(16, 16)
    before = a.upscale(image)
    manager.unload(a.ref)
    assert a.ref.base.location == "unloaded"
    assert torch.equal(a.upscale(image), before)
    assert "ESRGAN x4" in repr(a)


def test_unrecognised_and_non_commercial(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import save_file

    bad = tmp_path / "bad.safetensors"
    save_file({"foo.weight": torch.zeros(2, 2)}, str(bad))
    monkeypatch.delenv("COMFY_NOTEBOOK_SPANDREL_EXTRAS", raising=False)
    with pytest.raises(UnsupportedModelError, match="Non-commercial architectures are off"):
        up.load_upscale_model_value(ModelManager(DevicePolicy.cpu()), bad)
    with pytest.raises(ModelLoadError, match="not found"):
        up.read_upscale_state_dict(tmp_path / "missing.pth")
    # opting in without the package installed says what to install
    up.allow_noncommercial_upscale_models(True)
    try:
        try:
            import spandrel_extra_arches  # noqa: F401
        except ImportError:
            with pytest.raises(ModelLoadError, match="spandrel_extra_arches"):
                up.import_spandrel()
    finally:
        up.allow_noncommercial_upscale_models(False)
