from __future__ import annotations

import math

import pytest
import torch

from comfy_notebook.families.sd1 import SD15_LATENT
from comfy_notebook.sampling import (
    SAMPLERS,
    DiscreteSchedule,
    SamplingConfigError,
    default_noise_sampler,
    ksample,
    ksampler_sigmas,
    prepare_noise,
)
from comfy_notebook.sampling.model_sampling import ModelSampling

S = DiscreteSchedule()


class Stub:
    """apply_model stub: eps depends on x, timestep and the context's mean; counts forwards."""

    def __init__(self):
        self.calls, self.batches = 0, []

    def __call__(self, x, t, context, **kw):
        self.calls += 1
        self.batches.append(x.shape[0])
        c = context.mean(dim=(1, 2)).view(-1, 1, 1, 1)
        return torch.tanh(x) * 0.5 + c * (t.view(-1, 1, 1, 1) / 1000.0)


def cond(v, t=77):
    return torch.full((1, t, 8), float(v))


def run(**kw):
    base = dict(model_sampling=ModelSampling(S), latent_format=SD15_LATENT, latent={"samples": torch.zeros(1, 4, 8, 8)},
                positive=[[cond(1.0), {}]], negative=[[cond(-1.0), {}]], seed=7, steps=4, cfg=5.0,
                sampler_name="euler", scheduler="normal")
    base.update(kw)
    model = base.pop("model", Stub())
    return ksample(model, **base), model


def test_prepare_noise_batch_index_hand_computed():
    lat = torch.zeros(2, 4, 3, 3)
    torch.manual_seed(11)
    draws = [torch.randn(1, 4, 3, 3) for _ in range(4)]
    got = prepare_noise(lat, 11, batch_index=[3, 1])
    torch.testing.assert_close(got, torch.cat([draws[3], draws[1]]), atol=0, rtol=0)
    torch.manual_seed(11)
    expected = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(prepare_noise(lat, 11), expected, atol=0, rtol=0)


def test_initial_noise_scaling_denoise_and_add_noise_disable():
    seen = {}

    def grab(info):
        seen.setdefault("x", info.x)

    run(callback=grab)
    sig = ksampler_sigmas(S, "normal", "euler", 4)
    noise = prepare_noise(torch.zeros(1, 4, 8, 8), 7)
    torch.testing.assert_close(seen["x"], noise * math.sqrt(1 + float(sig[0]) ** 2))
    seen.clear()
    lat = torch.randn(1, 4, 8, 8)
    run(latent={"samples": lat}, denoise=0.5, callback=grab)
    sig = ksampler_sigmas(S, "normal", "euler", 4, 0.5)
    torch.testing.assert_close(seen["x"], noise * sig[0] + lat * 0.18215)
    seen.clear()
    run(latent={"samples": lat}, add_noise=False, callback=grab)
    torch.testing.assert_close(seen["x"], lat * 0.18215)


def test_output_scale_and_keys_kept():
    lat = {"samples": torch.zeros(1, 4, 8, 8), "batch_index": [0], "extra": "kept"}
    got = []
    out, _ = run(latent=lat, callback=lambda i: got.append(i.x))
    assert out["extra"] == "kept" and out["batch_index"] == [0] and out is not lat
    # euler's final x = x_last + d * (0 - sigma_last) = denoised of the last step; / latent_scale
    assert out["samples"].dtype == torch.float32 and out["samples"].shape == (1, 4, 8, 8)


def test_cfg_one_single_pass_and_cfg_batched():
    _, m = run(cfg=1.0)
    assert m.calls == 4 and m.batches == [1] * 4
    _, m = run(cfg=5.0)
    assert m.calls == 4 and m.batches == [2] * 4  # cond and uncond in one forward


def test_cfg_formula_and_strength_weighted_average():
    from comfy_notebook.sampling import CFGDenoiser, ModelDenoiser, resolve_conditioning

    md = ModelDenoiser(Stub(), ModelSampling(S, "eps"))
    x, sigma = torch.randn(1, 4, 8, 8), torch.tensor([3.0])
    pos, neg = resolve_conditioning([[cond(1.0), {"strength": 2.0}], [cond(3.0), {"strength": 0.5}]],
                                    [[cond(-1.0), {}]], (8, 8), S)
    got = CFGDenoiser(md, pos, neg, 7.0)(x, sigma)
    a, b, u = md(x, sigma, cond(1.0)), md(x, sigma, cond(3.0)), md(x, sigma, cond(-1.0))
    c = (2.0 * a + 0.5 * b) / 2.5
    torch.testing.assert_close(got, u + (c - u) * 7.0, atol=1e-5, rtol=1e-5)
    # different token lengths are evaluated separately and give the same average
    pos2, _ = resolve_conditioning([[cond(1.0, 77), {}], [cond(3.0, 154), {}]], [], (8, 8), S)
    got2 = CFGDenoiser(md, pos2, [], 1.0)(x, sigma)
    torch.testing.assert_close(got2, (a + md(x, sigma, cond(3.0, 154))) / 2, atol=1e-5, rtol=1e-5)


def test_area_entry_changes_only_its_region_and_timestep_range():
    from comfy_notebook.sampling import CFGDenoiser, ModelDenoiser, resolve_conditioning

    md = ModelDenoiser(Stub(), ModelSampling(S, "eps"))
    x, sigma = torch.randn(1, 4, 16, 16), torch.tensor([2.0])
    base_pos, _ = resolve_conditioning([[cond(1.0), {}]], [], (16, 16), S)
    base = CFGDenoiser(md, base_pos, [], 1.0)(x, sigma)
    pos, _ = resolve_conditioning([[cond(1.0), {}], [cond(5.0), {"area": (4, 4, 0, 0)}]], [], (16, 16), S)
    got = CFGDenoiser(md, pos, [], 1.0)(x, sigma)
    outside = torch.ones(16, 16, dtype=torch.bool)
    outside[:4, :4] = False
    torch.testing.assert_close(got[..., outside], base[..., outside])
    assert not torch.allclose(got[..., :4, :4], base[..., :4, :4])
    # an entry active only for the last half of the run (small sigmas) is ignored at sigma = 2 > start
    pos, _ = resolve_conditioning([[cond(1.0), {}], [cond(5.0), {"start_percent": 0.9}]], [], (16, 16), S)
    torch.testing.assert_close(CFGDenoiser(md, pos, [], 1.0)(x, sigma), base)
    small = torch.tensor([S.percent_to_sigma(0.95)])
    assert not torch.allclose(CFGDenoiser(md, pos, [], 1.0)(x, small), CFGDenoiser(md, base_pos, [], 1.0)(x, small))


def test_noise_mask_keeps_unmasked_pixels():
    lat = torch.randn(1, 4, 8, 8)
    mask = torch.zeros(1, 64, 64)
    mask[:, :, 32:] = 1.0  # pixel-space mask, resized to the latent
    out, _ = run(latent={"samples": lat, "noise_mask": mask}, denoise=0.6)
    torch.testing.assert_close(out["samples"][..., :3], lat[..., :3], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out["samples"][..., 5:], lat[..., 5:])
    assert "noise_mask" in out  # ComfyUI copies the dict and replaces only "samples"


def test_advanced_step_windows():
    sig = ksampler_sigmas(S, "karras", "euler", 10)
    seen = []
    run(scheduler="karras", steps=10, start_step=3, end_step=7, callback=lambda i: seen.append(float(i.sigma)))
    assert seen == pytest.approx(sig[3:7].tolist())
    lat = torch.randn(1, 4, 8, 8)
    out, m = run(latent={"samples": lat}, steps=10, start_step=10)
    assert m.calls == 0 and torch.equal(out["samples"], lat)
    # leftover noise: end at sigma[7] unless force_full_denoise
    xs = {}
    a, _ = run(scheduler="karras", steps=10, end_step=7, force_full_denoise=False, callback=lambda i: xs.__setitem__("a", i))
    b, _ = run(scheduler="karras", steps=10, end_step=7, force_full_denoise=True, callback=lambda i: xs.__setitem__("b", i))
    # same last step input; euler then steps to sigma[7] or to 0 (= the step's denoised)
    last = xs["a"]
    d = (last.x - last.denoised) / last.sigma
    torch.testing.assert_close(a["samples"], (last.x + d * (sig[7] - last.sigma)) / 0.18215)
    torch.testing.assert_close(b["samples"], xs["b"].denoised / 0.18215, atol=1e-4, rtol=1e-5)


def test_ancestral_generator_on_latent_device_and_cpu_noise():
    x = torch.zeros(1, 4, 4, 4)
    ns = default_noise_sampler(x, seed=5)
    g = torch.Generator().manual_seed(5)  # ComfyUI a125cd8: the seed itself, on every device
    torch.testing.assert_close(ns(None, None), torch.randn(1, 4, 4, 4, generator=g), atol=0, rtol=0)
    torch.testing.assert_close(ns(None, None), torch.randn(1, 4, 4, 4, generator=g), atol=0, rtol=0)
    torch.testing.assert_close(default_noise_sampler(x, 5, cpu=True)(None, None),
                               torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(5)), atol=0, rtol=0)
    # on the CPU the first ancestral draw therefore equals the initial noise (ComfyUI does the same)
    torch.testing.assert_close(default_noise_sampler(x, 5)(None, None), prepare_noise(x, 5), atol=0, rtol=0)
    a, _ = run(sampler_name="euler_ancestral", cpu_noise=True)
    b, _ = run(sampler_name="euler_ancestral", cpu_noise=False)
    torch.testing.assert_close(a["samples"], b["samples"])  # on the CPU both are the same


@pytest.mark.gpu
def test_cpu_noise_device_independent():
    a, _ = run(sampler_name="dpmpp_2m_sde_gpu", cpu_noise=True, device="cuda")
    b, _ = run(sampler_name="dpmpp_2m_sde_gpu", cpu_noise=True, device="cpu")
    torch.testing.assert_close(a["samples"], b["samples"], atol=1e-4, rtol=1e-4)


def test_sde_brownian_tree_seeded():
    a, _ = run(sampler_name="dpmpp_2m_sde", seed=3)
    b, _ = run(sampler_name="dpmpp_2m_sde", seed=3)
    c, _ = run(sampler_name="dpmpp_2m_sde", seed=4)
    torch.testing.assert_close(a["samples"], b["samples"], atol=0, rtol=0)
    assert not torch.allclose(a["samples"], c["samples"])


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_runs_through_ksample(name):
    out, _ = run(sampler_name=name, steps=3)
    assert torch.isfinite(out["samples"]).all()


def test_errors_name_what_to_fix():
    with pytest.raises(SamplingConfigError, match="unknown sampler 'eulr'"):
        run(sampler_name="eulr")
    with pytest.raises(SamplingConfigError, match="LATENT"):
        run(latent={"x": 1})


@pytest.mark.parametrize("cfg", [1.0, 7.5])
def test_cfg_fast_path_equals_general_path(cfg):
    """Single plain entries take the fast path; it is bit-identical to calc_cond_batch's path."""
    from comfy_notebook.sampling import CFGDenoiser, ModelDenoiser, resolve_conditioning

    def y_of(opts):
        return {"y": opts["pooled_output"]}

    md = ModelDenoiser(Stub(), ModelSampling(S, "eps"))
    pos, neg = resolve_conditioning([[cond(1.0), {"pooled_output": torch.ones(1, 3)}]],
                                    [[cond(-2.0), {"pooled_output": torch.zeros(1, 3)}]], (8, 8), S, kwargs_fn=y_of)
    fast, general = CFGDenoiser(md, pos, neg, cfg), CFGDenoiser(md, pos, neg, cfg, fast_path=False)
    assert fast.fast and not general.fast
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    for sig in (14.6, 3.0, 0.03):
        sigma = torch.full((2,), sig)
        torch.testing.assert_close(fast(x, sigma), general(x, sigma), atol=0, rtol=0)
    assert fast.forward_count == general.forward_count == 3
    # anything but one plain entry per list takes the general path
    for p, n in (([[cond(1.0), {"strength": 0.5}]], [[cond(-1.0), {}]]),
                 ([[cond(1.0), {}], [cond(2.0), {}]], [[cond(-1.0), {}]]),
                 ([[cond(1.0), {"start_percent": 0.5}]], [[cond(-1.0), {}]]),
                 ([[cond(1.0, 77), {}]], [[cond(-1.0, 154), {}]])):
        pe, ne = resolve_conditioning(p, n, (8, 8), S)
        assert not CFGDenoiser(md, pe, ne, 7.5).fast


def test_general_path_plan_cache_follows_timestep_ranges():
    """Cached per-active-set plans give the same result as fresh denoisers at every sigma."""
    from comfy_notebook.sampling import CFGDenoiser, ModelDenoiser, resolve_conditioning

    md = ModelDenoiser(Stub(), ModelSampling(S, "eps"))
    conds = [[cond(1.0), {"strength": 0.6}], [cond(4.0), {"end_percent": 0.5}], [cond(2.0), {"area": (4, 4, 2, 2)}]]
    pos, neg = resolve_conditioning(conds, [[cond(-1.0), {}]], (8, 8), S)
    cached = CFGDenoiser(md, pos, neg, 5.0)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    mid = S.percent_to_sigma(0.5)
    for sig in (14.0, mid * 1.5, mid * 0.5, 14.0, mid * 0.5):
        sigma = torch.tensor([sig])
        torch.testing.assert_close(cached(x, sigma), CFGDenoiser(md, pos, neg, 5.0)(x, sigma), atol=0, rtol=0)
    assert len(cached._plans) == 2  # one plan per set of active entries


def test_offset_area_feathered_weights_hand_computed():
    """An area away from the origin: ComfyUI's feathered weights (rr = min(8, size // 4)) by hand."""
    from comfy_notebook.sampling import CFGDenoiser, ModelDenoiser, resolve_conditioning

    md = ModelDenoiser(Stub(), ModelSampling(S, "eps"))
    x, sigma = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(5)), torch.tensor([2.0])
    pos, _ = resolve_conditioning([[cond(1.0), {}], [cond(5.0), {"area": (8, 8, 4, 4)}]], [], (16, 16), S)
    got = CFGDenoiser(md, pos, [], 1.0)(x, sigma)
    a, b = md(x, sigma, cond(1.0)), md(x, sigma, cond(5.0))  # the stub is elementwise in x
    f = torch.tensor([0.5, 1, 1, 1, 1, 1, 1, 0.5])  # rr = 2: edge rows/cols * 1/2, next * 2/2
    m = torch.zeros(16, 16)
    m[4:12, 4:12] = f[:, None] * f[None, :]
    torch.testing.assert_close(got, (a + b * m) / (1 + m), atol=1e-6, rtol=1e-6)
