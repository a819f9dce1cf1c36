"""Control binding at sampling time: ComfyUI's hint, batch, strength, window and chaining rules,
and the file layouts ControlNetLoader reads."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
import torch

from comfy_notebook.models.unet import ControlResiduals
from comfy_notebook.runtime.control_run import (
    AppliedControl,
    BoundControl,
    _merge,
    broadcast_image_to,
    resize_hint,
)
from comfy_notebook.sampling.controls import controls_to_uncond
from comfy_notebook.sampling.schedules import DiscreteSchedule


def test_broadcast_image_to_follows_comfyui():
    hint = torch.arange(3.0).view(3, 1, 1, 1)
    # 2 chunks (cond + uncond) of 4 images from a batch of 3 hints: 0 1 2 0 | 0 1 2 0
    out = broadcast_image_to(hint, 8, 2)
    assert out.flatten().tolist() == [0, 1, 2, 0, 0, 1, 2, 0]
    assert broadcast_image_to(hint[:1], 8, 2).shape[0] == 1  # one hint broadcasts by itself
    assert broadcast_image_to(torch.arange(4.0).view(4, 1, 1, 1), 4, 2).flatten().tolist() == [0, 1, 0, 1]


def test_resize_hint_crops_the_centre_to_the_target_aspect():
    img = torch.zeros(1, 1, 4, 8)
    img[..., 2:6] = 1.0  # a bright centre band, 4 of 8 columns
    out = resize_hint(img, 4, 4)  # square target: the centre 4x4 is kept
    assert torch.equal(out, torch.ones(1, 1, 4, 4))
    assert resize_hint(torch.rand(2, 3, 10, 10), 16, 8, "nearest-exact").shape == (2, 3, 8, 16)


def test_merge_sums_chains_entry_by_entry():
    a = ControlResiduals(output=(torch.ones(1), None), middle=torch.ones(1))
    b = ControlResiduals(input=(None, torch.ones(1)), output=(torch.ones(1) * 2, torch.ones(1) * 3, torch.ones(1)))
    m = _merge(a, b)
    assert [None if x is None else float(x) for x in m.output] == [3.0, 3.0, 1.0]
    assert m.input[1] is not None and float(m.middle) == 1.0
    assert _merge(a, None) is a


def test_controls_go_to_uncond_only_for_control_net_apply():
    pos = [[torch.zeros(1), {"control": "A", "control_apply_to_uncond": True}]]
    neg = [[torch.zeros(1), {}], [torch.zeros(1), {"area": (8, 8, 0, 0)}]]
    out = controls_to_uncond(pos, neg)
    assert out[0][1]["control"] == "A" and "control" not in out[1][1]
    assert "control" not in neg[0][1]  # the input list is not modified
    advanced = [[torch.zeros(1), {"control": "A", "control_apply_to_uncond": False}]]
    assert controls_to_uncond(advanced, neg) is neg
    has_own = [[torch.zeros(1), {"control": "B"}]]
    assert controls_to_uncond(pos, has_own) is has_own


class _Echo(torch.nn.Module):
    """A stand-in control net that returns its hint as the middle residual."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, x: Any, hint: Any, t: Any, ctx: Any, y: Any = None) -> ControlResiduals:
        return ControlResiduals(middle=hint * self.w, output=(x,))


def _net(**kw: Any) -> Any:
    from comfy_notebook.runtime.control_files import ControlNetValue

    return ControlNetValue(ref=None, manager=None, **kw)  # type: ignore[arg-type]


def test_bound_control_strength_window_and_chain():
    sched = DiscreteSchedule()
    hint = torch.rand(1, 3, 20, 12)
    first = AppliedControl(_net(), hint, strength=2.0)
    second = AppliedControl(_net(), hint, strength=0.5, start_percent=0.5, end_percent=1.0, previous=first)
    b1 = BoundControl(first, _Echo(), None, sched, torch.device("cpu"))
    b2 = BoundControl(second, _Echo(), b1, sched, torch.device("cpu"))
    x = torch.rand(2, 4, 2, 2)
    t = torch.zeros(2)
    high, low = torch.full((2,), float(sched.sigma_max)), torch.full((2,), 0.5)
    res_high = b2(x, t, high, torch.zeros(2, 1, 1), 2, {})
    res_low = b2(x, t, low, torch.zeros(2, 1, 1), 2, {})
    want = resize_hint(hint, 16, 16)
    # early (high sigma): only the first control, at strength 2
    assert torch.allclose(res_high.middle, 2 * want.expand(2, -1, -1, -1))
    # late: both, summed
    assert torch.allclose(res_low.middle, 2.5 * want.expand(2, -1, -1, -1))
    assert torch.allclose(res_low.output[0], 2.5 * x)


def test_global_average_pooling_for_shuffle_nets():
    sched = DiscreteSchedule()
    b = BoundControl(AppliedControl(_net(global_average_pooling=True), torch.rand(1, 3, 8, 8)), _Echo(), None,
                     sched, torch.device("cpu"))
    res = b(torch.rand(1, 4, 1, 1), torch.zeros(1), torch.ones(1), torch.zeros(1, 1, 1), 1, {})
    m = res.middle
    assert torch.allclose(m, m.mean(dim=(2, 3), keepdim=True).expand_as(m))


def test_diffusers_table_agrees_with_diffusers_converter(tmp_path: pathlib.Path):
    """Our diffusers names for a ControlNet are the ones diffusers' own LDM converter writes."""
    import dataclasses

    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    from comfy_notebook.models.unet import UNetConfig
    from comfy_notebook.runtime.loading import open_state_dict
    from comfy_notebook.testing import make_checkpoint, make_controlnet

    unet = dataclasses.replace(UNetConfig.sd1_tiny_linear(), context_dim=64)
    ckpt = make_checkpoint(tmp_path / "c.safetensors", preset="sd1-tiny-linear", unet=unet)
    orig = dict(open_state_dict(make_controlnet(tmp_path / "o.safetensors", ckpt)))
    ours = dict(open_state_dict(make_controlnet(tmp_path / "d.safetensors", ckpt, layout="diffusers")))
    theirs = convert_controlnet_checkpoint(orig, {"layers_per_block": unet.num_res_blocks})
    assert set(ours) == set(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_control_lora_marker_and_unknown_files():
    from comfy_notebook.errors import UnsupportedModelError
    from comfy_notebook.runtime.control_files import read_control_file

    assert read_control_file({"lora_controlnet": torch.zeros(1)})[0] == "control_lora"
    with pytest.raises(UnsupportedModelError, match=r"not a ControlNet.*Fix"):
        read_control_file({"model.diffusion_model.x": torch.zeros(1)})


def _denoiser_with_control(device: str) -> tuple[Any, Any]:
    """A CFG denoiser over a tiny UNet whose positive and negative share one bound ControlNet."""
    from comfy_notebook.models.controlnet import ControlNetConfig, ControlNetModel
    from comfy_notebook.models.unet import UNetConfig, UNetModel
    from comfy_notebook.sampling.denoisers import CFGDenoiser, ModelDenoiser, resolve_conditioning
    from comfy_notebook.sampling.model_sampling import ModelSampling
    from comfy_notebook.testing import random_state_dict

    torch.manual_seed(0)
    cfg = UNetConfig.sd1_tiny()
    unet, cn = UNetModel(cfg).eval(), ControlNetModel(ControlNetConfig(cfg)).eval()
    unet.load_state_dict(random_state_dict(unet, 0, tag="unet"))
    cn.load_state_dict(random_state_dict(cn, 1, tag="controlnet"))
    unet, cn = unet.to(device), cn.to(device)
    sched = DiscreteSchedule()
    applied = AppliedControl(_net(), torch.rand(1, 3, 40, 56), strength=0.8)
    bound = BoundControl(applied, cn, None, sched, torch.device(device))
    ctx = torch.randn(1, 3, 32)
    pos, neg = resolve_conditioning([[ctx, {"control": applied}]], [[ctx * 0.5, {"control": applied}]],
                                    (8, 8), ModelSampling(sched), device, torch.float32, control_fn=lambda a: bound)
    den = CFGDenoiser(ModelDenoiser(lambda x, t, c, **kw: unet(x, t, c, **kw), ModelSampling(sched)), pos, neg, 7.0)
    return den, sched


def test_shared_control_keeps_the_one_forward_fast_path():
    den, sched = _denoiser_with_control("cpu")
    assert den.fast  # positive and negative share the control: one batched forward per step
    x, sigma = torch.randn(1, 4, 8, 8), torch.full((1,), float(sched.sigmas[500]))
    with torch.no_grad():
        den(x, sigma)
    assert den.forward_count == 1


@pytest.mark.gpu
def test_controlled_step_on_cuda_matches_cpu_and_makes_no_host_sync():
    x, sigma = torch.randn(1, 4, 8, 8), torch.full((1,), 3.0)
    out = {}
    for device in ("cpu", "cuda"):
        den, _ = _denoiser_with_control(device)
        with torch.no_grad():
            den(x.to(device), sigma.to(device))  # first call prepares the hint (host work allowed)
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.set_sync_debug_mode("error")
                try:
                    out[device] = den(x.to(device), sigma.to(device))
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            else:
                out[device] = den(x, sigma)
    torch.testing.assert_close(out["cuda"].cpu(), out["cpu"], rtol=1e-4, atol=1e-4)


def test_controlnet_of_another_family_is_named():
    from comfy_notebook.models.controlnet import ControlNetConfig, ControlNetModel
    from comfy_notebook.models.unet import UNetConfig

    cn = ControlNetModel(ControlNetConfig(UNetConfig.sd1_tiny())).eval()  # attends to 32-wide text
    b = BoundControl(AppliedControl(_net(), torch.rand(1, 3, 8, 8)), cn, None, DiscreteSchedule(), torch.device("cpu"))
    with pytest.raises(ValueError, match=r"attends to 32-wide text.*48 wide.*Fix"):
        b(torch.rand(1, 4, 1, 1), torch.zeros(1), torch.ones(1), torch.zeros(1, 2, 48), 1, {})


def _diffusers_union(seed: int = 0) -> tuple[Any, dict[str, torch.Tensor]]:
    from diffusers import ControlNetUnionModel

    from comfy_notebook.testing import random_state_dict

    ref = ControlNetUnionModel(
        in_channels=4, down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32, attention_head_dim=8,
        transformer_layers_per_block=1, conditioning_embedding_out_channels=(16, 32, 96, 256),
        addition_time_embed_dim=256, num_control_type=6, num_trans_channel=32, num_trans_head=8,
        num_proj_channel=32).eval()
    sd = random_state_dict(ref, seed, tag="union")
    ref.load_state_dict(sd, strict=True)
    return ref, sd


def test_union_controlnet_loads_from_diffusers_keys_and_its_block_matches():
    from comfy_notebook.families.control import describe_control
    from comfy_notebook.runtime.control_files import (
        _build,
        convert_diffusers_controlnet,
        read_control_file,
    )

    ref, dsd = _diffusers_union()
    kind, tensors = read_control_file(dsd)
    assert kind == "controlnet" and "transformer_layes.0.attn.in_proj.weight" in tensors
    assert tensors.keys() == convert_diffusers_controlnet(dsd).keys()
    _, config = describe_control(kind, tensors)
    assert config.union_types == 6
    ours = _build(kind, tensors, config, torch.float32)  # strict: every key used, none missing
    # the transformer block on one control token (as ComfyUI runs it) equals diffusers' block
    x = torch.randn(1, 1, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours.transformer_layes[0](x), ref.transformer_layes[0](x), rtol=0, atol=1e-6)


def test_union_control_type_changes_the_residuals_and_is_checked():
    from comfy_notebook.families.control import describe_control
    from comfy_notebook.runtime.control_files import _build, read_control_file

    _, dsd = _diffusers_union(1)
    kind, tensors = read_control_file(dsd)
    net = _build(kind, tensors, describe_control(kind, tensors)[1], torch.float32)
    gen = torch.Generator().manual_seed(0)
    x, hint = torch.randn(2, 4, 8, 8, generator=gen), torch.rand(2, 3, 64, 64, generator=gen)
    t, ctx = torch.tensor([10.0, 10.0]), torch.randn(2, 3, 32, generator=gen)
    with torch.no_grad():
        auto = net(x, hint, t, ctx)
        depth = net(x, hint, t, ctx, control_type=(1,))
        canny = net(x, hint, t, ctx, control_type=(3,))
    assert (auto.middle - depth.middle).abs().max() > 1e-3
    assert (depth.middle - canny.middle).abs().max() > 1e-3
    with pytest.raises(ValueError, match=r"control type \[7\] is out of range.*knows 6.*Fix"):
        net(x, hint, t, ctx, control_type=(7,))
