"""Post-CFG functions (ComfyUI ``sampler_post_cfg_function``: CFGNorm, CFGZeroStar) in the sampling core."""

from __future__ import annotations

import torch

from comfy_notebook.families.sd1 import SD15_LATENT
from comfy_notebook.nodes.cfg import cfg_norm, cfg_zero_star
from comfy_notebook.sampling import DiscreteSchedule, ksample
from comfy_notebook.sampling.model_sampling import ModelSampling

S = DiscreteSchedule()
MS = ModelSampling(S)
POS, NEG = [[torch.full((1, 77, 8), 1.0), {}]], [[torch.full((1, 77, 8), -1.0), {}]]


def stub(x, t, context, **kw):
    c = context.mean(dim=(1, 2)).view(-1, 1, 1, 1)
    return torch.tanh(x) * 0.5 + c * (t.view(-1, 1, 1, 1) / 1000.0)


def run(cfg: float = 5.0, post_cfg=(), **kw):
    return ksample(stub, model_sampling=MS, latent_format=SD15_LATENT, latent={"samples": torch.zeros(1, 4, 8, 8)},
                   positive=POS, negative=NEG, seed=7, steps=4, cfg=cfg, sampler_name="euler", scheduler="karras",
                   post_cfg=post_cfg, **kw)["samples"]


def test_post_cfg_functions_see_comfyui_args_and_replace_the_result():
    seen = []

    def identity(args):
        seen.append(args)
        return args["denoised"]

    assert torch.equal(run(post_cfg=(identity,)), run())  # an identity function changes nothing
    a = seen[0]
    assert set(a) == {"denoised", "cond_denoised", "uncond_denoised", "cond_scale", "input", "sigma"}
    assert torch.allclose(a["denoised"], a["uncond_denoised"] + (a["cond_denoised"] - a["uncond_denoised"]) * 5.0)
    assert a["cond_scale"] == 5.0 and len(seen) == 4
    halved = run(post_cfg=(lambda args: args["denoised"] * 0.5,))
    assert not torch.allclose(halved, run())
    # cfg 1 skips the negative list: the functions get zeros as the unconditional prediction
    seen.clear()
    run(cfg=1.0, post_cfg=(identity,))
    assert torch.equal(seen[0]["uncond_denoised"], torch.zeros_like(seen[0]["cond_denoised"]))
    assert torch.equal(seen[0]["denoised"], seen[0]["cond_denoised"])


def test_cfg_norm_caps_the_channel_norm_at_the_conditional_one():
    g = torch.Generator().manual_seed(0)
    cond, guided = torch.randn(2, 16, 4, 4, generator=g), 3 * torch.randn(2, 16, 4, 4, generator=g)
    out = cfg_norm(1.0)({"cond_denoised": cond, "denoised": guided})
    n_out, n_cond, n_guided = (t.norm(dim=1) for t in (out, cond, guided))
    assert torch.all(n_out <= torch.maximum(n_cond, torch.zeros(())) + 1e-5)
    assert torch.allclose(n_out, torch.minimum(n_cond, n_guided), atol=1e-5)
    assert torch.allclose(cfg_norm(0.5)({"cond_denoised": cond, "denoised": guided}), 0.5 * out)


def test_cfg_zero_star_is_plain_cfg_when_the_projection_is_one():
    x = torch.zeros(1, 4, 2, 2)
    cond, uncond = torch.ones(1, 4, 2, 2), torch.ones(1, 4, 2, 2)  # alpha = 1
    out = cfg_zero_star({"cond_scale": 4.0, "input": x, "cond_denoised": cond, "uncond_denoised": uncond,
                         "denoised": cond})
    assert torch.allclose(out, cond)

