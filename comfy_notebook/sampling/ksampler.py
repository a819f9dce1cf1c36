"""KSampler core: ComfyUI's ``common_ksampler`` -> ``comfy.sample.sample`` -> ``KSampler.sample``.

One function, ``ksample``, that the KSampler / KSamplerAdvanced nodes call.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from comfy_notebook.sampling.denoisers import CFGDenoiser, ModelDenoiser, resolve_conditioning
from comfy_notebook.sampling.noise import (
    BrownianTreeNoiseSampler,
    default_noise_sampler,
    prepare_noise,
)
from comfy_notebook.sampling.registry import SAMPLER_NOISE, SAMPLERS
from comfy_notebook.sampling.samplers import StepCallback
from comfy_notebook.sampling.schedules import DiscreteSchedule, SamplingConfigError, ksampler_sigmas

__all__ = ["ksample", "prepare_mask"]


def prepare_mask(mask: Tensor, shape: tuple[int, ...], device: Any) -> Tensor:
    """Resize a ``noise_mask`` ([H, W], [B, H, W] or [B, 1, H, W]) to ``shape`` = [B, C, h, w]."""
    m = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).float()
    m = F.interpolate(m, size=tuple(shape[2:]), mode="bilinear")
    if m.shape[1] < shape[1]:
        m = m.repeat(1, shape[1], 1, 1)[:, : shape[1]]
    b = shape[0]
    if m.shape[0] < b:
        m = m.repeat(math.ceil(b / m.shape[0]), 1, 1, 1)
    return m[:b].to(device)


class _Inpaint:
    """ComfyUI's ``KSamplerX0Inpaint``: keep unmasked areas at the (re-noised) original latent."""

    def __init__(self, inner: Callable[[Tensor, Tensor], Tensor], mask: Tensor, latent: Tensor, noise: Tensor) -> None:
        self.inner, self.mask, self.latent, self.noise = inner, mask, latent, noise
        self.keep = 1.0 - mask

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        s = sigma.view(-1, 1, 1, 1)
        x = x * self.mask + (self.noise * s + self.latent) * self.keep
        return self.inner(x, sigma) * self.mask + self.latent * self.keep


def ksample(
    apply_model: Callable[..., Tensor], *, prediction: str, schedule: DiscreteSchedule, latent: dict[str, Any],
    positive: list[Any], negative: list[Any], seed: int, steps: int, cfg: float, sampler_name: str,
    scheduler: str, denoise: float = 1.0, add_noise: bool = True, start_step: int | None = None,
    end_step: int | None = None, force_full_denoise: bool = False, latent_scale: float = 0.18215,
    device: Any = None, dtype: Any = None, callback: StepCallback | None = None, cpu_noise: bool = False,
    model_kwargs: Callable[[dict[str, Any]], dict[str, Tensor]] | None = None,
) -> dict[str, Any]:
    """Sample a LATENT as ComfyUI's KSampler / KSamplerAdvanced do.

    Parameters
    ----------
    apply_model:
        ``apply_model(x, timestep[B], context[B, T, D], **kw) -> eps or v`` (the UNet forward).
    prediction:
        ``"eps"`` or ``"v"``.
    schedule:
        The model's ``DiscreteSchedule``.
    latent:
        LATENT dict: ``samples`` [B, C, H, W] (ComfyUI scale), optional ``noise_mask`` and
        ``batch_index``.
    positive, negative:
        ComfyUI CONDITIONING lists ``[[cond [1, T, D], {options}], ...]``.
    seed, steps, cfg, sampler_name, scheduler, denoise:
        As the KSampler node.  ``denoise < 1`` keeps the last ``steps + 1`` sigmas of a
        ``int(steps / denoise)``-step schedule.
    add_noise, start_step, end_step, force_full_denoise:
        KSamplerAdvanced: ``add_noise=False`` samples from zero noise; the step window slices
        the sigmas; ``force_full_denoise`` (``return_with_leftover_noise`` off) ends at sigma 0.
    latent_scale:
        The family's latent scale: samples are multiplied by it on the way in (unless all zero)
        and divided on the way out.
    device, dtype:
        Where and in what dtype to run (defaults: the latent's device, float32).
    callback:
        Receives a ``StepInfo`` per step; it may raise to interrupt (no state is left behind).
    cpu_noise:
        Draw per-step (ancestral / SDE) noise on the CPU so that results do not depend on the
        device.  Off by default, as ComfyUI.
    model_kwargs:
        ``options -> {name: tensor}`` extra model inputs per conditioning entry (e.g. SDXL ``y``).

    Returns
    -------
    dict
        A copy of ``latent`` whose ``samples`` is the result (float32, ComfyUI scale, on the CPU).
    """
    if sampler_name not in SAMPLERS:
        raise SamplingConfigError(
            f"unknown sampler {sampler_name!r}; expected one of {sorted(SAMPLERS)}. "
            "Fix: pass one of the names in comfy_notebook.sampling.SAMPLERS."
        )
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if not isinstance(samples, Tensor) or samples.ndim != 4:
        raise SamplingConfigError(
            f"latent must be a dict with 'samples' [B, C, H, W], received {type(samples).__name__}. "
            "Fix: pass a LATENT such as EmptyLatentImage's output."
        )
    device = torch.device(device) if device is not None else samples.device
    dtype = dtype or torch.float32
    if add_noise:
        noise = prepare_noise(samples, seed, latent.get("batch_index"))
    else:
        noise = torch.zeros(samples.shape, dtype=samples.dtype)

    sigmas = ksampler_sigmas(schedule, scheduler, sampler_name, steps, denoise)
    out = dict(latent)
    if end_step is not None and end_step < len(sigmas) - 1:
        sigmas = sigmas[: end_step + 1].clone()
        if force_full_denoise:
            sigmas[-1] = 0
    if start_step is not None:
        if start_step < len(sigmas) - 1:
            sigmas = sigmas[start_step:]
        else:
            out["samples"] = samples
            return out
    if len(sigmas) == 0:
        out["samples"] = samples
        return out

    sigmas = sigmas.to(device)
    noise = noise.to(device=device, dtype=torch.float32)
    x0 = samples.to(device=device, dtype=torch.float32)
    if torch.count_nonzero(x0) > 0:
        x0 = x0 * latent_scale
    pos, neg = resolve_conditioning(positive, negative, tuple(samples.shape[2:]), schedule, device, dtype, model_kwargs)
    model: Callable[[Tensor, Tensor], Tensor] = CFGDenoiser(ModelDenoiser(apply_model, schedule, prediction), pos, neg, cfg)

    sampler = SAMPLERS[sampler_name]
    kind = SAMPLER_NOISE.get(sampler_name)
    mask = latent.get("noise_mask")
    inpaint_noise = noise
    if kind == "inpaint_random" and mask is not None:  # ComfyUI's ddim: fresh noise for the kept area
        gen = torch.manual_seed(seed + 1)
        inpaint_noise = torch.randn(noise.shape, generator=gen, device="cpu").to(device)
    if mask is not None:
        model = _Inpaint(model, prepare_mask(mask, tuple(noise.shape), device), x0, inpaint_noise)

    sigma_max = float(schedule.sigma_max)
    first = float(sigmas[0])
    max_denoise = math.isclose(sigma_max, first, rel_tol=1e-5) or first > sigma_max
    x = noise * (math.sqrt(1.0 + first**2) if max_denoise else first) + x0

    noise_sampler = None
    if kind == "ancestral":
        noise_sampler = default_noise_sampler(x, seed, cpu=cpu_noise)
    elif kind in ("sde", "sde_gpu") and len(sigmas) > 1:
        noise_sampler = BrownianTreeNoiseSampler(
            x, sigmas[sigmas > 0].min(), sigmas.max(), seed=seed, cpu=cpu_noise or kind == "sde")
    with torch.no_grad():
        result = sampler(model, x, sigmas, callback=callback, noise_sampler=noise_sampler)
    out["samples"] = (result.float() / latent_scale).cpu()
    return out
