"""Samplers only reachable through sampler-object nodes (ComfyUI ``comfy_extras/nodes_advanced_samplers.py``).

Behaviour as ComfyUI a125cd8:

- ``lcm_upscale`` (``SamplerLCMUpscale``): LCM steps (jump to the prediction, add
  ``sigma_next * noise``) that also resize the prediction over the first ``upscale_steps`` steps,
  by factors evenly spaced from 1 to ``total_upscale`` (the first factor skipped).  ``upscale``
  is the resize function ``(x, width, height) -> x`` (the node passes ComfyUI's
  ``common_upscale`` for its method, crop disabled).  ComfyUI draws the step noise with
  ``torch.randn_like`` from the global generator; here it comes from ``generator`` (seeded with
  the sampling seed by :class:`~comfy_notebook.sampling.custom.SamplerSpec`), so results do not
  depend on what ran before.
- ``euler_pp`` (``SamplerEulerCFGpp``, version "alternative"): Euler with ComfyUI's derivative
  ``to_d(x - denoised + uncond_denoised, sigma, denoised)`` = ``(x - 2 denoised + uncond) / sigma``
  (a guided denoiser ``model(x, sigma) -> (denoised, uncond)``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from comfy_notebook.sampling.noise import NoiseSampler
from comfy_notebook.sampling.samplers import StepCallback, _Loop, to_d
from comfy_notebook.sampling.samplers_cfg_pp import GuidedDenoiser, _GuidedLoop
from comfy_notebook.sampling.schedules import SamplingConfigError

__all__ = ["sample_euler_pp", "sample_lcm_upscale", "upscale_factors"]

Resize = Callable[[Tensor, int, int], Tensor]


def upscale_factors(n_sigmas: int, total_upscale: float, upscale_steps: int | None) -> list[float]:
    """The scale factor after each of the first steps (``upscale_steps`` None: about half of them)."""
    if upscale_steps is None:
        count = max(n_sigmas // 2 + 1, 2)
    else:
        count = min(upscale_steps + 1, n_sigmas + 1)
    return [float(v) for v in np.linspace(1.0, total_upscale, count)[1:]]


@torch.no_grad()
def sample_lcm_upscale(model: Callable[[Tensor, Tensor], Tensor], x: Tensor, sigmas: Tensor, *,
                       callback: StepCallback | None = None, noise_sampler: NoiseSampler | None = None,
                       total_upscale: float = 2.0, upscale: Resize | None = None,
                       upscale_steps: int | None = None, generator: torch.Generator | None = None) -> Tensor:
    """LCM sampling that grows the latent to ``total_upscale`` times its size on the way down."""
    if upscale is None:
        raise SamplingConfigError(
            "lcm_upscale needs upscale=(x, width, height) -> x. Fix: build it with the SamplerLCMUpscale node.")
    factors = upscale_factors(len(sigmas), total_upscale, upscale_steps)
    h0, w0 = x.shape[-2], x.shape[-1]
    loop = _Loop(model, x, sigmas, callback)
    for i in range(loop.n):
        x = loop.denoise(x, i)
        if i < len(factors):
            x = upscale(x, round(w0 * factors[i]), round(h0 * factors[i]))
        if loop.sv[i + 1] > 0:
            noise = torch.randn(x.shape, dtype=x.dtype, device=generator.device if generator is not None else x.device,
                                generator=generator).to(x.device)
            x = x + sigmas[i + 1] * noise
    return x


@torch.no_grad()
def sample_euler_pp(model: GuidedDenoiser, x: Tensor, sigmas: Tensor, *, callback: StepCallback | None = None,
                    noise_sampler: NoiseSampler | None = None) -> Tensor:
    """Euler with ComfyUI's "alternative" CFG++ derivative ``(x - 2 denoised + uncond) / sigma``."""
    loop = _GuidedLoop(model, x, sigmas, callback)
    for i in range(loop.n):
        denoised, uncond = loop.denoise_pair(x, i)
        d = to_d(x - denoised + uncond, sigmas[i], denoised)
        x = x + d * (sigmas[i + 1] - sigmas[i])
    return x
