"""KSampler core: ComfyUI's ``common_ksampler`` -> ``comfy.sample.sample`` -> ``KSampler.sample``.

One function, ``ksample``, that the KSampler / KSamplerAdvanced nodes call.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from comfy_notebook.sampling.custom import SamplerSpec
from comfy_notebook.sampling.denoisers import ModelDenoiser
from comfy_notebook.sampling.guidance import Guidance
from comfy_notebook.sampling.model_sampling import ModelSampling
from comfy_notebook.sampling.noise import prepare_noise
from comfy_notebook.sampling.registry import SAMPLER_NOISE, SAMPLERS
from comfy_notebook.sampling.samplers import StepCallback
from comfy_notebook.sampling.schedules import SamplingConfigError, ksampler_sigmas
from comfy_notebook.sampling.snr import is_flow

__all__ = ["LatentFormatLike", "inpaint_concat", "inpaint_inputs", "ksample", "prepare_mask", "sample_sigmas"]


class LatentFormatLike(Protocol):
    """What the sampler core reads of a latent format (``families.base.LatentFormat``)."""

    channels: int
    downscale: int
    inpaint_blank: tuple[float, ...] | None

    def process_in(self, latent: Tensor) -> Tensor: ...

    def process_out(self, latent: Tensor) -> Tensor: ...


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


def _upscale_center(t: Tensor, h: int, w: int) -> Tensor:
    """ComfyUI ``common_upscale(..., "bilinear", "center")``: crop to the target aspect, then resize."""
    oh, ow = t.shape[-2:]
    y = x = 0
    if ow / oh > w / h:
        x = round((ow - ow * ((w / h) / (ow / oh))) / 2)
    elif ow / oh < w / h:
        y = round((oh - oh * ((ow / oh) / (w / h))) / 2)
    return F.interpolate(t[:, :, y : oh - y, x : ow - x], size=(h, w), mode="bilinear")


def _resize_batch(t: Tensor, b: int) -> Tensor:
    """ComfyUI ``resize_to_batch_size``: pick evenly spaced batch items to make ``b`` of them."""
    n = t.shape[0]
    if n == b:
        return t
    if b <= 1:
        return t[:b]
    if b < n:
        idx = [min(round(i * (n - 1) / (b - 1)), n - 1) for i in range(b)]
    else:
        idx = [min(math.floor((i + 0.5) * n / b), n - 1) for i in range(b)]
    return t[idx]


def inpaint_concat(options: dict[str, Any], *, noise_shape: tuple[int, ...], latent_image: Tensor,
                   denoise_mask: Tensor | None, latent_format: LatentFormatLike, device: Any = None) -> Tensor:
    """The extra UNet input of an inpainting model for one conditioning entry: [B, 1 + C, h, w].

    ComfyUI's ``BaseModel.concat_cond`` with ``concat_keys = ("mask", "masked_image")``: the
    channels are the mask (1 where to paint), then the masked-image latent.

    Parameters
    ----------
    options:
        The entry's options; ``concat_mask`` (any [..., H, W] mask, e.g. pixel size from
        ``InpaintModelConditioning``) and ``concat_latent_image`` (a VAE latent, unscaled) are used
        when present.
    noise_shape:
        ``[B, C, h, w]`` of the sampled latent.
    latent_image:
        The input latent in model scale (``process_in`` applied unless all zero), [B, C, h, w]:
        the masked image when ``concat_latent_image`` is absent.
    denoise_mask:
        The latent's ``noise_mask`` prepared by :func:`prepare_mask` ([B, C, h, w]), or None.
    latent_format:
        ``process_in`` applies to ``concat_latent_image``; ``inpaint_blank`` is the masked image
        when there is no mask at all.
    device:
        Where the result lives.

    Returns
    -------
    Tensor
        ``cat([mask.round(), masked_latent], dim=1)``; with no mask at all (neither
        ``concat_mask`` nor a ``noise_mask``): a mask of ones and the format's blank latent.
    """
    b, c, h, w = noise_shape
    mask = options.get("concat_mask", denoise_mask)
    if mask is None:
        blank_values = latent_format.inpaint_blank
        if blank_values is None or c != len(blank_values):
            raise SamplingConfigError(
                f"the latent format has no {c}-channel blank inpainting latent (it has "
                f"{None if blank_values is None else len(blank_values)} values). Fix: give the "
                "inpainting model a mask (InpaintModelConditioning or SetLatentNoiseMask).")
        blank = torch.tensor(blank_values, dtype=torch.float32, device=device)
        return torch.cat([torch.ones((b, 1, h, w), device=device),
                          blank.view(1, c, 1, 1).expand(b, c, h, w)], dim=1)  # [B, 1 + C, h, w]
    image = options.get("concat_latent_image")
    if image is None:
        image = latent_image
    else:
        image = latent_format.process_in(image.to(device=device, dtype=torch.float32))
    image = image.to(device=device, dtype=torch.float32)
    if tuple(image.shape[1:]) != (c, h, w):
        image = _upscale_center(image, h, w)
    image = _resize_batch(image, b)  # [B, C, h, w]
    mask = mask.to(device=device, dtype=torch.float32)
    if mask.ndim == 4:
        mask = mask[:, :1]
    mask = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1])
    if tuple(mask.shape[-2:]) != (h, w):
        mask = _upscale_center(mask, h, w)
    mask = _resize_batch(mask.round(), b)  # [B, 1, h, w]
    return torch.cat([mask, image], dim=1)


def inpaint_inputs(in_channels: int | None, latent_format: LatentFormatLike
                   ) -> Callable[[dict[str, Any]], dict[str, Tensor]] | None:
    """Model inputs of a UNet taking ``in_channels``: ``c_concat`` for an inpainting UNet, else None.

    The returned function reads ComfyUI's ``extra_conds`` parameters (``noise``,
    ``latent_image``, ``denoise_mask``, ``device`` and the entry's options).  Only ComfyUI's
    inpainting layout (latent + mask + masked latent) is known.
    """
    c = latent_format.channels
    extra = 0 if in_channels is None else in_channels - c
    if extra == 0:
        return None
    if extra != c + 1:
        raise SamplingConfigError(
            f"the UNet takes {in_channels} input channels and the latent has {c}; "
            f"expected {c} (a regular model) or {2 * c + 1} (an inpainting model: latent, mask, "
            "masked-image latent). Fix: use a regular or an inpainting checkpoint, with a latent "
            "of the model's family.")

    def fn(params: dict[str, Any]) -> dict[str, Tensor]:
        noise = params["noise"]
        if noise.shape[1] != c:
            raise SamplingConfigError(
                f"the latent has {noise.shape[1]} channels, this inpainting model's latent format "
                f"{c}. Fix: use a latent of the model's family.")
        return {"c_concat": inpaint_concat(
            params, noise_shape=tuple(noise.shape), latent_image=params["latent_image"],
            denoise_mask=params.get("denoise_mask"), latent_format=latent_format,
            device=params.get("device"))}

    return fn


class _Inpaint:
    """ComfyUI's ``KSamplerX0Inpaint``: keep unmasked areas at the (re-noised) original latent.

    The kept area is the original latent noised to the step's sigma by the model sampling
    (ComfyUI's ``scale_latent_inpaint``): ``latent + sigma * noise`` for diffusion models,
    ``flow_scaling(sigma, noise, latent)`` = ``sigma * noise + (1 - sigma) * latent`` for flow models.
    """

    def __init__(self, inner: Callable[[Tensor, Tensor], Tensor], mask: Tensor, latent: Tensor, noise: Tensor,
                 flow_scaling: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None) -> None:
        self.inner, self.mask, self.latent, self.noise = inner, mask, latent, noise
        self.keep = 1.0 - mask
        self.flow_scaling = flow_scaling

    def _kept(self, sigma: Tensor) -> Tensor:
        s = sigma.view(-1, 1, 1, 1)
        if self.flow_scaling is not None:
            return self.flow_scaling(s, self.noise, self.latent)
        return self.noise * s + self.latent

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        x = x * self.mask + self._kept(sigma) * self.keep
        return self.inner(x, sigma) * self.mask + self.latent * self.keep


class _InpaintGuided(_Inpaint):
    """``_Inpaint`` over a guided denoiser: blends ``denoised``; ``uncond_denoised`` passes as is (as ComfyUI)."""

    def __call__(self, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        x = x * self.mask + self._kept(sigma) * self.keep
        denoised, uncond = self.inner(x, sigma)
        return denoised * self.mask + self.latent * self.keep, uncond


def ksample(
    apply_model: Callable[..., Tensor], *, model_sampling: ModelSampling, latent_format: LatentFormatLike,
    latent: dict[str, Any], positive: list[Any], negative: list[Any], seed: int, steps: int, cfg: float,
    sampler_name: str, scheduler: str, denoise: float = 1.0, add_noise: bool = True,
    start_step: int | None = None, end_step: int | None = None, force_full_denoise: bool = False,
    device: Any = None, dtype: Any = None, callback: StepCallback | None = None, cpu_noise: bool = False,
    model_inputs: Callable[[dict[str, Any]], dict[str, Tensor]] | None = None,
    control_fn: Callable[[Any], Any] | None = None,
    post_cfg: tuple[Callable[[dict[str, Any]], Tensor], ...] = (),
) -> dict[str, Any]:
    """Sample a LATENT as ComfyUI's KSampler / KSamplerAdvanced do.

    Parameters
    ----------
    apply_model:
        ``apply_model(x, timestep[B], context[B, T, D], **kw) -> network output`` (the UNet forward).
    model_sampling:
        The model's :class:`~comfy_notebook.sampling.model_sampling.ModelSampling`
        (parameterisation and schedule).
    latent_format:
        The model's latent format: ``process_in`` on the way in (unless the latent is all zero),
        ``process_out`` on the way out; ``downscale`` gives the default ``width``/``height`` of
        the model inputs.
    latent:
        LATENT dict: ``samples`` [B, C, H, W] (ComfyUI scale), optional ``noise_mask`` and
        ``batch_index``.
    positive, negative:
        ComfyUI CONDITIONING lists ``[[cond [1, T, D], {options}], ...]``.
    seed, steps, cfg, sampler_name, scheduler, denoise:
        As the KSampler node.  CFG++ samplers (``registry.SAMPLER_NEEDS_UNCOND``) get a guided
        denoiser that also returns the unconditional prediction (even at cfg 1); SA-Solver
        (``SAMPLER_NEEDS_SCHEDULE``) also gets ``schedule=``.  ``denoise < 1`` keeps the last
        ``steps + 1`` sigmas of a ``int(steps / denoise)``-step schedule.
    add_noise, start_step, end_step, force_full_denoise:
        KSamplerAdvanced: ``add_noise=False`` samples from zero noise; the step window slices
        the sigmas; ``force_full_denoise`` (``return_with_leftover_noise`` off) ends at sigma 0.
    device, dtype:
        Where and in what dtype to run (defaults: the latent's device, float32).
    callback:
        Receives a ``StepInfo`` per step; it may raise to interrupt (no state is left behind).
    cpu_noise:
        Draw per-step (ancestral / SDE) noise on the CPU so that results do not depend on the
        device.  Off by default, as ComfyUI.
    model_inputs:
        ComfyUI's ``extra_conds``: ``params -> {name: tensor}`` extra model inputs per
        conditioning entry (a ``y`` vector, ``c_concat``).  ``params`` is the entry's options
        plus ``width``/``height`` (default: the latent size times ``downscale``),
        ``prompt_type`` (``"positive"``/``"negative"``), ``noise``, ``latent_image`` (model
        scale), ``denoise_mask`` and ``device``; the function is called once per entry and run.
    control_fn:
        Binds an entry's ``control`` option (ControlNet / T2I-Adapter) for this run; see
        :func:`~comfy_notebook.sampling.denoisers.resolve_conditioning`.
    post_cfg:
        The MODEL's post-CFG functions (``CFGNorm`` ...), run after the CFG formula each step
        (see :class:`~comfy_notebook.sampling.guidance.PostCFGDenoiser`).

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
    samples = _latent_samples(latent)
    if add_noise:
        noise = prepare_noise(samples, seed, latent.get("batch_index"))
    else:
        noise = torch.zeros(samples.shape, dtype=samples.dtype)

    schedule = model_sampling
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

    out["samples"], _ = sample_sigmas(
        apply_model, model_sampling=model_sampling, latent_format=latent_format, latent=latent, noise=noise,
        sigmas=sigmas, guidance=Guidance.cfg_guided(positive, negative, cfg), sampler=SamplerSpec(sampler_name),
        seed=seed, device=device, dtype=dtype, callback=callback, cpu_noise=cpu_noise, model_inputs=model_inputs,
        control_fn=control_fn, post_cfg=post_cfg)
    return out


def _latent_samples(latent: Any) -> Tensor:
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if not isinstance(samples, Tensor) or samples.ndim != 4:
        raise SamplingConfigError(
            f"latent must be a dict with 'samples' [B, C, H, W], received {type(samples).__name__}. "
            "Fix: pass a LATENT such as EmptyLatentImage's output."
        )
    return samples


def sample_sigmas(
    apply_model: Callable[..., Tensor], *, model_sampling: ModelSampling, latent_format: LatentFormatLike,
    latent: dict[str, Any], noise: Tensor, sigmas: Tensor, guidance: Guidance, sampler: SamplerSpec, seed: int,
    device: Any = None, dtype: Any = None, callback: StepCallback | None = None, cpu_noise: bool = False,
    model_inputs: Callable[[dict[str, Any]], dict[str, Tensor]] | None = None,
    control_fn: Callable[[Any], Any] | None = None,
    post_cfg: tuple[Callable[[dict[str, Any]], Tensor], ...] = (),
) -> tuple[Tensor, Tensor | None]:
    """Sample ``latent`` along given ``sigmas`` from given initial ``noise``: ComfyUI's ``CFGGuider.sample``.

    The shared core of KSampler (:func:`ksample`) and the custom-sampling nodes: ``process_in``,
    inpainting mask and model inputs, the guided denoiser of ``guidance``, the model sampling's
    noise scaling to ``sigmas[0]``, ``sampler`` seeded with ``seed``, inverse noise scaling and
    ``process_out``.  Arguments not listed are as :func:`ksample`'s.

    Parameters
    ----------
    noise:
        Initial noise of the samples' shape (zeros: start from the latent itself).
    sigmas:
        The descending (or, for unsampling, ascending) noise levels to visit.
    guidance:
        How the conditioning lists combine (CFG, basic, dual CFG).
    sampler:
        The SAMPLER (name and options).
    seed:
        Seeds the sampler's per-step noise.

    Returns
    -------
    tuple
        ``(samples, denoised)``: float32, ComfyUI scale, on the CPU; ``denoised`` is the last
        step's prediction of the clean latent (``None`` when no step ran).  With empty
        ``sigmas`` the samples are the input's, untouched.
    """
    samples = _latent_samples(latent)
    if len(sigmas) == 0:
        return samples, None
    schedule = model_sampling
    if post_cfg:
        guidance = dataclasses.replace(guidance, post_cfg=(*guidance.post_cfg, *post_cfg))
    device = torch.device(device) if device is not None else samples.device
    dtype = dtype or torch.float32
    sigmas = sigmas.to(device)
    noise = noise.to(device=device, dtype=torch.float32)
    x0 = samples.to(device=device, dtype=torch.float32)
    if torch.count_nonzero(x0) > 0:
        x0 = latent_format.process_in(x0)
    mask = latent.get("noise_mask")
    denoise_mask = prepare_mask(mask, tuple(noise.shape), device) if mask is not None else None
    pos_fn = neg_fn = None
    if model_inputs is not None:
        fn = model_inputs
        ds = latent_format.downscale
        base = {"device": device, "noise": noise, "latent_image": x0, "denoise_mask": denoise_mask,
                "seed": seed}

        def entry_inputs(prompt_type: str) -> Callable[[dict[str, Any]], dict[str, Tensor]]:
            def inputs(options: dict[str, Any]) -> dict[str, Tensor]:
                params = {**options, **base}  # as ComfyUI's encode_model_conds
                params["width"] = options.get("width", noise.shape[3] * ds)
                params["height"] = options.get("height", noise.shape[2] * ds)
                params["prompt_type"] = options.get("prompt_type", prompt_type)
                return fn(params)
            return inputs

        pos_fn, neg_fn = entry_inputs("positive"), entry_inputs("negative")
    guided = sampler.needs_uncond  # CFG++: the sampler also gets uncond_denoised
    model: Callable[[Tensor, Tensor], Any] = guidance.denoiser(
        ModelDenoiser(apply_model, model_sampling), latent_hw=tuple(samples.shape[2:]), schedule=schedule,
        device=device, dtype=dtype, kwargs_fn=pos_fn, negative_kwargs_fn=neg_fn, keep_uncond=guided,
        control_fn=control_fn)

    inpaint_noise = noise
    if SAMPLER_NOISE.get(sampler.name) == "inpaint_random" and mask is not None:
        gen = torch.manual_seed(seed + 1)  # ComfyUI's ddim: fresh noise for the kept area
        inpaint_noise = torch.randn(noise.shape, generator=gen, device="cpu").to(device)
    if denoise_mask is not None:
        flow_scaling = model_sampling.noise_scaling if is_flow(model_sampling) else None
        model = (_InpaintGuided if guided else _Inpaint)(model, denoise_mask, x0, inpaint_noise, flow_scaling)

    sigma_max = float(schedule.sigma_max)
    first = float(sigmas[0])
    max_denoise = math.isclose(sigma_max, first, rel_tol=1e-5) or first > sigma_max
    x = model_sampling.noise_scaling(sigmas[0], noise, x0, max_denoise)

    last: list[Tensor] = []

    def report(info: Any) -> None:
        if last:
            last[0] = info.denoised
        else:
            last.append(info.denoised)
        if callback is not None:
            callback(info)

    result = sampler.run(model, x, sigmas, seed=seed, callback=report, cpu_noise=cpu_noise,
                         model_sampling=model_sampling)
    result = model_sampling.inverse_noise_scaling(sigmas[-1], result.float())
    denoised = latent_format.process_out(last[0].float()).cpu() if last else None
    return latent_format.process_out(result).cpu(), denoised
