"""Inpainting-model inputs (ComfyUI ``c_concat``): what the UNet sees for each conditioning entry.

ComfyUI (comfy/model_base.py ``BaseModel.concat_cond`` with ``set_inpaint``'s concat keys
("mask", "masked_image"), ``_apply_model``) feeds an inpainting UNet
``cat([x / sqrt(sigma^2 + 1), mask.round(), masked_latent * 0.18215], dim=1)``; with no mask at
all, a mask of ones and a constant "blank" latent.  Every test captures the tensor handed to
``apply_model`` and compares it with one built by hand.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from comfy_notebook.families.sd1 import SD15_LATENT
from comfy_notebook.sampling import DiscreteSchedule, ksample
from comfy_notebook.sampling.denoisers import CFGDenoiser, ModelDenoiser, resolve_conditioning
from comfy_notebook.sampling.ksampler import inpaint_concat, inpaint_inputs
from comfy_notebook.sampling.model_sampling import ModelSampling
from comfy_notebook.sampling.schedules import SamplingConfigError

INPAINT_BLANK_LATENT = SD15_LATENT.inpaint_blank

SCALE = 0.18215
INPAINT_BLANK_LATENT = SD15_LATENT.inpaint_blank
H = W = 8


class Recorder:
    """apply_model stub: records every input, returns an eps that depends on the first 4 channels."""

    def __init__(self) -> None:
        self.inputs: list[torch.Tensor] = []

    def __call__(self, x, t, context, **kw):
        assert not kw, f"unexpected model kwargs {sorted(kw)}"
        self.inputs.append(x.clone())
        return 0.1 * x[:, :4] + 0.01 * context.mean() + 0.001 * x[:, 4:].sum(1, keepdim=True)


def cond(value: float, **opts):
    return [torch.full((1, 3, 8), value), opts]


def run(rec: Recorder, latent: dict, positive, negative, *, cfg: float = 7.0, in_channels: int | None = 9,
        steps: int = 2, device: str | None = None):
    return ksample(rec, model_sampling=ModelSampling(DiscreteSchedule()), latent_format=SD15_LATENT, latent=latent, positive=positive,
                   negative=negative, seed=3, steps=steps, cfg=cfg, sampler_name="euler",
                   scheduler="normal", model_inputs=inpaint_inputs(in_channels, SD15_LATENT), device=device)


def first_sigma(steps: int = 2) -> float:
    from comfy_notebook.sampling.schedules import ksampler_sigmas

    return float(ksampler_sigmas(DiscreteSchedule(), "normal", "euler", steps, 1.0)[0])


def pixel_mask(b: int = 1) -> torch.Tensor:
    """A 64x64 pixel mask [B, 1, 64, 64]: 1 on the left 24 columns and a soft edge (0.3) at 24..27."""
    m = torch.zeros(b, 1, 64, 64)
    m[..., :24] = 1.0
    m[..., 24:28] = 0.3
    return m


def test_entry_with_concat_inputs_hand_built_comfy_order_and_scale():
    torch.manual_seed(0)
    samples = torch.randn(2, 4, H, W)
    pos_img, neg_img = torch.randn(1, 4, H, W), torch.randn(1, 4, H, W)
    mask = pixel_mask()
    pos = [cond(0.5, concat_latent_image=pos_img, concat_mask=mask)]
    neg = [cond(-0.5, concat_latent_image=neg_img, concat_mask=mask)]
    rec = Recorder()
    run(rec, {"samples": samples}, pos, neg)
    assert len(rec.inputs) == 2  # fast path: one batched forward per step

    # mask: bilinear to the latent size (align_corners False), then rounded
    m = F.interpolate(mask, size=(H, W), mode="bilinear").round()  # [1, 1, 8, 8]
    assert torch.equal(m[0, 0, 0], torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]))
    want_pos = torch.cat([m, pos_img * SCALE], 1).expand(2, 5, H, W)
    want_neg = torch.cat([m, neg_img * SCALE], 1).expand(2, 5, H, W)
    x = rec.inputs[0]  # [2B, 9, H, W]: cond batch, then uncond batch
    assert x.shape == (4, 9, H, W)
    assert torch.equal(x[:2, 4:], want_pos) and torch.equal(x[2:, 4:], want_neg)
    assert torch.equal(rec.inputs[1][:, 4:], x[:, 4:])  # fixed for the whole run

    # the latent part is ComfyUI's calculate_input of the initial x = noise * sqrt(1 + s^2) + x0
    from comfy_notebook.sampling.noise import prepare_noise

    s = first_sigma()
    x_init = prepare_noise(samples, 3, None) * math.sqrt(1.0 + s * s) + samples * SCALE
    torch.testing.assert_close(x[:2, :4], x_init / math.sqrt(s * s + 1.0), rtol=1e-6, atol=1e-6)


def test_model_denoiser_appends_c_concat_unscaled_after_the_input_scaling():
    seen = []
    model = ModelDenoiser(lambda x, t, c: seen.append(x) or x[:, :4], ModelSampling(DiscreteSchedule()))
    x, concat = torch.randn(2, 4, 4, 4), torch.randn(2, 5, 4, 4)
    sigma = torch.tensor([2.0, 2.0])
    model(x, sigma, torch.zeros(2, 3, 8), c_concat=concat)
    assert torch.equal(seen[0], torch.cat([x / math.sqrt(5.0), concat], 1))


def test_without_concat_inputs_blank_default_and_ones_mask():
    rec = Recorder()
    run(rec, {"samples": torch.zeros(1, 4, H, W)}, [cond(0.5)], [cond(-0.5)])
    x = rec.inputs[0]
    assert x.shape == (2, 9, H, W)
    assert torch.equal(x[:, 4], torch.ones(2, H, W))
    for ch, value in enumerate((0.8223, -0.6876, 0.6364, 0.1380)):
        assert torch.equal(x[:, 5 + ch], torch.full((2, H, W), value))
    assert INPAINT_BLANK_LATENT == (0.8223, -0.6876, 0.6364, 0.1380)


def test_noise_mask_without_concat_inputs_uses_the_noise_mask_and_the_input_latent():
    # ComfyUI: concat_mask falls back to the sampler's denoise mask, concat_latent_image to the
    # (process_in'd) input latent
    torch.manual_seed(1)
    samples = torch.randn(1, 4, H, W)
    mask = pixel_mask()
    rec = Recorder()
    run(rec, {"samples": samples, "noise_mask": mask}, [cond(0.5)], [cond(-0.5)])
    m = F.interpolate(mask, size=(H, W), mode="bilinear").round()
    want = torch.cat([m, samples * SCALE], 1).expand(2, 5, H, W)
    assert torch.equal(rec.inputs[0][:, 4:], want)


def test_entry_concat_mask_overrides_the_noise_mask():
    samples = torch.randn(1, 4, H, W)
    noise_mask = torch.ones(1, 64, 64)
    concat_mask = pixel_mask()
    rec = Recorder()
    run(rec, {"samples": samples, "noise_mask": noise_mask},
        [cond(0.5, concat_mask=concat_mask)], [cond(-0.5)])
    m = F.interpolate(concat_mask, size=(H, W), mode="bilinear").round()
    x = rec.inputs[0]
    assert torch.equal(x[:1, 4:5], m)  # positive: its own concat mask
    assert torch.equal(x[1:, 4:5], torch.ones(1, 1, H, W))  # negative: the noise mask


def test_area_entry_gets_its_crop_of_the_concat():
    torch.manual_seed(2)
    img = torch.randn(1, 4, H, W)
    mask = pixel_mask()
    opts = {"concat_latent_image": img, "concat_mask": mask}
    pos = [cond(0.5, **opts), cond(0.2, area=(4, 4, 2, 3), **opts)]
    rec = Recorder()
    run(rec, {"samples": torch.randn(1, 4, H, W)}, pos, [cond(-0.5, **opts)], steps=1)
    full = torch.cat([F.interpolate(mask, size=(H, W), mode="bilinear").round(), img * SCALE], 1)
    crops = [x for x in rec.inputs if tuple(x.shape[2:]) == (4, 4)]
    assert len(crops) == 1
    for row in crops[0]:
        assert torch.equal(row[4:], full[0, :, 2:6, 3:7])
    fulls = [x for x in rec.inputs if tuple(x.shape[2:]) == (H, W)]
    assert fulls and all(torch.equal(row[4:], full[0]) for x in fulls for row in x)


def test_concat_latent_other_aspect_is_centre_cropped_and_batch_resized():
    # ComfyUI common_upscale(..., "center") then resize_to_batch_size: a [2, 4, 8, 16] latent
    # for noise [3, 4, 8, 8] is cropped to columns 4..11 and batch items (0, 1, 1) are used
    img = torch.randn(2, 4, H, 16)
    mask = torch.ones(1, 1, H, W)
    out = inpaint_concat({"concat_latent_image": img, "concat_mask": mask}, noise_shape=(3, 4, H, W),
                         latent_image=torch.zeros(3, 4, H, W), denoise_mask=None, latent_format=SD15_LATENT)
    want = (img[:, :, :, 4:12] * SCALE)[[0, 1, 1]]
    assert torch.equal(out[:, 1:], want) and torch.equal(out[:, :1], torch.ones(3, 1, H, W))
    # fewer items than the mask has: evenly spaced picks (round(i * (n-1) / (b-1)))
    masks = torch.stack([torch.full((1, H, W), float(i % 2)) for i in range(5)])  # [5, 1, H, W]
    out = inpaint_concat({"concat_mask": masks}, noise_shape=(3, 4, H, W),
                         latent_image=torch.zeros(3, 4, H, W), denoise_mask=None, latent_format=SD15_LATENT)
    assert [float(out[i, 0, 0, 0]) for i in range(3)] == [0.0, 0.0, 0.0]  # items 0, 2, 4


def test_regular_model_ignores_concat_inputs_bit_identical():
    torch.manual_seed(4)
    samples = torch.randn(1, 4, H, W)
    opts = {"concat_latent_image": torch.randn(1, 4, H, W), "concat_mask": pixel_mask()}
    for cfg in (1.0, 7.0):
        a, b = Recorder(), Recorder()
        with_opts = run(a, {"samples": samples}, [cond(0.5, **opts)], [cond(-0.5, **opts)], cfg=cfg, in_channels=4)
        plain = run(b, {"samples": samples}, [cond(0.5)], [cond(-0.5)], cfg=cfg, in_channels=None)
        assert torch.equal(with_opts["samples"], plain["samples"])
        assert all(x.shape[1] == 4 for x in a.inputs)


def test_general_path_equals_fast_path_with_concat():
    torch.manual_seed(5)
    opts = {"concat_latent_image": torch.randn(1, 4, H, W), "concat_mask": pixel_mask()}
    schedule = DiscreteSchedule()
    latent = torch.randn(2, 4, H, W)

    def kw(o):
        return {"c_concat": inpaint_concat(o, noise_shape=(2, 4, H, W), latent_image=latent,
                                           denoise_mask=None, latent_format=SD15_LATENT)}

    pos, neg = resolve_conditioning([cond(0.5, **opts)], [cond(-0.5, **opts)], (H, W), schedule, kwargs_fn=kw)
    rec = Recorder()
    model = ModelDenoiser(rec, ModelSampling(schedule))
    x, sigma = torch.randn(2, 4, H, W), torch.tensor([3.0, 3.0])
    fast = CFGDenoiser(model, pos, neg, 5.0)
    slow = CFGDenoiser(model, pos, neg, 5.0, fast_path=False)
    assert fast.fast and not slow.fast
    torch.testing.assert_close(fast(x, sigma), slow(x, sigma), rtol=1e-6, atol=1e-6)
    assert torch.equal(rec.inputs[0][:, 4:], rec.inputs[1][:, 4:])


def test_unknown_extra_channel_count_is_refused():
    with pytest.raises(SamplingConfigError, match=r"takes 8 input channels.*expected 4 .* or 9"):
        run(Recorder(), {"samples": torch.zeros(1, 4, H, W)}, [cond(0.5)], [cond(-0.5)], in_channels=8)


@pytest.mark.gpu
def test_concat_on_cuda_equals_cpu():
    torch.manual_seed(6)
    samples = torch.randn(2, 4, H, W)
    opts = {"concat_latent_image": torch.randn(1, 4, H, W), "concat_mask": pixel_mask()}
    inputs = {}
    for device in ("cpu", "cuda"):
        rec = Recorder()
        run(rec, {"samples": samples, "noise_mask": pixel_mask()}, [cond(0.5, **opts)], [cond(-0.5)], device=device)
        assert rec.inputs[0].device.type == device
        inputs[device] = rec.inputs[0].cpu()
    assert torch.equal(inputs["cuda"][:, 4:], inputs["cpu"][:, 4:])
    torch.testing.assert_close(inputs["cuda"], inputs["cpu"], rtol=1e-5, atol=1e-5)
