"""CUDA checks of upscale models and merges (skipped without a GPU): the device path of the
manager (separate device memory, in-place patching, streamed partial loads)."""

from __future__ import annotations

import pathlib

import pytest
import torch

from comfy_notebook.families import load_checkpoint_values
from comfy_notebook.runtime import DevicePolicy, ModelManager
from comfy_notebook.runtime import upscale as up
from comfy_notebook.runtime.merge import checkpoint_state_dict, merge_refs
from comfy_notebook.testing import make_checkpoint, make_esrgan

pytestmark = pytest.mark.gpu


def test_upscale_on_cuda_matches_spandrel_and_tiles(tmp_path: pathlib.Path) -> None:
    path = make_esrgan(tmp_path / "m.pth", layout="realesrgan", seed=1)
    mgr = ModelManager(DevicePolicy.cuda(0), reserve_bytes=0)
    value = up.load_upscale_model_value(mgr, path)
    image = torch.rand(2, 40, 36, 3, generator=torch.Generator().manual_seed(0))
    out = value.upscale(image)
    assert out.device.type == "cpu" and out.shape == (2, 160, 144, 3)
    direct = up.import_spandrel().ModelLoader().load_from_file(path).eval().to("cuda")
    with torch.inference_mode():
        ref = direct(image.movedim(-1, 1).cuda()).clamp(0, 1).movedim(1, -1).cpu()
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    tiled = value.upscale(image, tile=24, overlap=8)
    assert (tiled - out).abs().max() <= 0.1
    assert value.ref.base.location == "gpu"


def _unet_out(mgr: ModelManager, ref, x, t, ctx, **kw) -> torch.Tensor:
    with torch.no_grad(), mgr.use(ref, **kw) as unet:
        return unet(x, t, ctx).float().cpu()


def test_merge_on_cuda_full_and_streamed_equals_saved_weights(tmp_path: pathlib.Path) -> None:
    a = make_checkpoint(tmp_path / "a.safetensors", seed=0)
    b = make_checkpoint(tmp_path / "b.safetensors", seed=1)
    mgr = ModelManager(DevicePolicy.cuda(0), reserve_bytes=0)
    ma, _, _ = load_checkpoint_values(mgr, a)
    mb, _, _ = load_checkpoint_values(mgr, b)
    merged = merge_refs(ma.ref, mb.ref, lambda key: (0.7, 0.3))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=g).cuda().to(ma.ref.base.dtype)
    t = torch.tensor([500.0], device="cuda")
    ctx = torch.randn(1, 77, ma.unet_config.context_dim, generator=g).cuda().to(ma.ref.base.dtype)
    full = _unet_out(mgr, merged, x, t, ctx)
    plain = _unet_out(mgr, ma.ref, x, t, ctx)  # un-patches in place on the device
    again = _unet_out(mgr, merged, x, t, ctx)
    torch.testing.assert_close(again, full, rtol=0, atol=0)
    assert not torch.equal(plain, full)
    mgr.offload(ma.ref)
    streamed = _unet_out(mgr, merged, x, t, ctx, weight_budget=ma.ref.base.nbytes // 3)
    assert ma.ref.base.location == "partial"
    torch.testing.assert_close(streamed, full, rtol=1e-4, atol=1e-4)
    # the reference: the merged weights written out and loaded as a plain UNet
    from comfy_notebook.models.unet import UNetModel

    sd = checkpoint_state_dict({"unet": (merged, "")})
    ref_unet = UNetModel(ma.unet_config).to(ma.ref.base.dtype)
    ref_unet.load_state_dict(sd)
    with torch.no_grad():
        ref = ref_unet.cuda().eval()(x, t, ctx).float().cpu()
    torch.testing.assert_close(full, ref, rtol=1e-4, atol=1e-4)


def test_clip_vision_on_cuda_matches_cpu(tmp_path: pathlib.Path) -> None:
    from safetensors.torch import save_file

    from comfy_notebook.models.clip_vision import CLIPVisionConfig, CLIPVisionModel
    from comfy_notebook.runtime.clip_vision import load_clip_vision_value

    torch.manual_seed(0)
    model = CLIPVisionModel(CLIPVisionConfig(width=64, layers=3, intermediate=128, patch_size=7,
                                             image_size=28, projection_dim=32))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "v.safetensors"))
    image = torch.rand(2, 30, 40, 3, generator=torch.Generator().manual_seed(1))
    cpu = load_clip_vision_value(ModelManager(DevicePolicy.cpu()), tmp_path / "v.safetensors").encode_image(image)
    gpu = load_clip_vision_value(ModelManager(DevicePolicy.cuda(0), reserve_bytes=0),
                                 tmp_path / "v.safetensors").encode_image(image)
    torch.testing.assert_close(gpu.image_embeds, cpu.image_embeds, rtol=2e-2, atol=2e-2)  # fp16 on CUDA
