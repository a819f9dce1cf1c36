"""KSampler and KSamplerAdvanced: the model manager puts the UNet on the device and
:func:`comfy_notebook.sampling.ksample` runs ComfyUI's sampling with ComfyUI's seeds."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Any, TypeVar

from comfy_notebook.engine import current_context
from comfy_notebook.runtime.control_run import bind_controls, control_memory
from comfy_notebook.runtime.values import ModelValue
from comfy_notebook.sampling import (
    SAMPLERS,
    SCHEDULERS,
    fix_empty_latent_channels,
    inpaint_inputs,
    ksample,
)

MAX_SEED = 0xFFFFFFFFFFFFFFFF
T = TypeVar("T")


def sampler_names() -> list[str]:
    """The sampler names KSampler offers: exactly those that run."""
    return list(SAMPLERS)


def scheduler_names() -> list[str]:
    """The scheduler names KSampler offers."""
    return list(SCHEDULERS)


def _graphs_option(ctx: Any) -> bool | None:
    """``session.options["cuda_graphs"]``: True / False, or unset (None: on where CUDA captures)."""
    session = getattr(ctx.services, "session", None)
    value = getattr(session, "options", {}).get("cuda_graphs")
    return None if value is None else bool(value)


def sample_on_model(model: ModelValue, latent: dict[str, Any], body: Callable[..., T], *,
                    evaluates_negative: bool = True, conditionings: Sequence[list[Any]] = ()) -> T:
    """``body(apply_model, callback=..., control_fn=..., **facts)`` with the UNet on the compute device.

    ``facts`` are what the sampling core needs to know about ``model`` (its model sampling,
    latent format, device and extra model inputs); progress and interrupts go through the node
    context.  The ControlNets / T2I-Adapters that ``conditionings`` carry are put on the device
    beside the UNet for the run; ``control_fn`` binds an entry's control (None without any).
    ``evaluates_negative`` sizes the memory estimate (a doubled batch per step); the controls'
    residuals are reserved with it (``control_memory``), so a budget accounts for them.
    ``conditionings`` are the lists sampled; their entries may also carry GLIGEN boxes.
    The MODEL's attention patches (hypernetworks) are active around every UNet call.
    """
    ctx = current_context()

    def callback(info: Any) -> None:
        # The preview is the first image's denoised latent (model scale) with the model's latent
        # format (its preview factors); views convert it on demand, so no host copy happens here.
        ctx.progress(info.step + 1, info.total,
                     preview={"samples": info.denoised[:1], "latent_format": model.latent_format})

    def run(unet: Any) -> T:
        from comfy_notebook.models.layers import ATTN_KV_PATCHES
        from comfy_notebook.runtime.gligen import gligen_for_sampling

        weight_dtype = model.ref.base.dtype
        facts = model_facts(model)
        facts["model_inputs"], gligen = gligen_for_sampling(
            [c for cond in conditionings for c in cond], [], facts["model_inputs"])
        patches = tuple(tuple(p for w, p in model.attn_patches if w == a) for a in ("attn1", "attn2"))
        patched = any(patches)

        def eager(x: Any, timestep: Any, context: Any, **kw: Any) -> Any:
            if gligen is not None:  # GLIGEN boxes ride on their entries' inputs (runtime.gligen)
                with gligen(unet, kw):
                    return plain(x, timestep, context, **kw)
            return plain(x, timestep, context, **kw)

        def plain(x: Any, timestep: Any, context: Any, **kw: Any) -> Any:
            if not patched:
                return unet(x.to(weight_dtype), timestep, context.to(weight_dtype), **kw).float()
            token = ATTN_KV_PATCHES.set(patches)
            try:
                return unet(x.to(weight_dtype), timestep, context.to(weight_dtype), **kw).float()
            finally:
                ATTN_KV_PATCHES.reset(token)

        # captured as a CUDA graph per shape where possible (runtime.graphs); eager otherwise
        # (a step with control residuals runs eagerly: they are not plain tensor inputs; always
        # eager with attention patches or GLIGEN: a graph captured for the same weights without
        # them would be replayed)
        graphs = False if patched or gligen is not None else _graphs_option(ctx)
        apply_model = model.manager.graphs.wrap(model.ref, unet, eager, enabled=graphs)
        with ExitStack() as held:
            if gligen is not None:  # the GLIGEN weights beside the UNet for the run
                held.enter_context(gligen.hold())
            for patch in {id(p): p for _, p in model.attn_patches}.values():  # managed hypernetworks
                if hasattr(patch, "hold"):
                    held.enter_context(patch.hold())
            bind = held.enter_context(bind_controls(conditionings, schedule=model.model_sampling,
                                                    device=model.manager.device, unet=unet,
                                                    unet_config=model.unet_config))
            return body(apply_model, callback=callback, control_fn=bind, **facts)

    shape = tuple(latent["samples"].shape)
    controls = control_memory(conditionings, shape, cfg=evaluates_negative, unet_config=model.unet_config)
    return model.run(run, latent_shape=shape, cfg=evaluates_negative, extra_memory=controls)


def model_inputs(model: ModelValue) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """ComfyUI's ``extra_conds`` for the sampling core: the family's inputs
    (``Family.model_inputs``: a ``y`` vector, ...) and, for an inpainting UNet, ``c_concat``."""
    concat = inpaint_inputs(model.in_channels, model.latent_format)
    family, config = model.family, model.unet_config

    def inputs(params: dict[str, Any]) -> dict[str, Any]:
        out = dict(family.model_inputs(config, params))  # every family is asked (most add none)
        if concat is not None:
            out.update(concat(params))
        return out

    return inputs


def model_facts(model: ModelValue) -> dict[str, Any]:
    """The sampling core's keywords that describe ``model`` (the one place that reads them)."""
    return {"model_sampling": model.model_sampling, "latent_format": model.latent_format,
            "device": model.manager.device, "model_inputs": model_inputs(model), "post_cfg": model.post_cfg}


def common_ksampler(
    model: ModelValue, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
    positive: list[Any], negative: list[Any], latent: dict[str, Any], *, denoise: float = 1.0,
    add_noise: bool = True, start_step: int | None = None, last_step: int | None = None,
    force_full_denoise: bool = False,
) -> dict[str, Any]:
    """Sample ``latent`` with ``model``; progress and interrupts go through the node context."""
    latent = {**latent, "samples": fix_empty_latent_channels(latent["samples"], model.latent_format.channels)}

    def body(apply_model: Any, **facts: Any) -> dict[str, Any]:
        return ksample(
            apply_model, latent=latent, positive=positive, negative=negative, seed=seed, steps=steps, cfg=cfg,
            sampler_name=sampler_name, scheduler=scheduler, denoise=denoise, add_noise=add_noise,
            start_step=start_step, end_step=last_step, force_full_denoise=force_full_denoise, **facts)

    return sample_on_model(model, latent, body, evaluates_negative=cfg != 1.0, conditionings=(positive, negative))


class KSampler:
    """Denoise a latent with a model, guided by positive and negative conditioning."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "model": ("MODEL", {"tooltip": "The model used for denoising the input latent."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True,
                             "tooltip": "The random seed used for creating the noise."}),
            "steps": ("INT", {"default": 20, "min": 1, "max": 10000,
                              "tooltip": "The number of steps used in the denoising process."}),
            "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                              "tooltip": "Classifier-free guidance scale."}),
            "sampler_name": (sampler_names(), {"tooltip": "The sampling algorithm."}),
            "scheduler": (scheduler_names(), {"tooltip": "How noise levels are spaced over the steps."}),
            "positive": ("CONDITIONING", {"tooltip": "What to include in the image."}),
            "negative": ("CONDITIONING", {"tooltip": "What to exclude from the image."}),
            "latent_image": ("LATENT", {"tooltip": "The latent image to denoise."}),
            "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                  "tooltip": "How much denoising is applied (below 1: img2img)."}),
        }}

    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("The denoised latent.",)
    FUNCTION = "sample"
    CATEGORY = "sampling"
    DESCRIPTION = "Uses the provided model, positive and negative conditioning to denoise the latent image."

    def sample(self, model: ModelValue, seed: int, steps: int, cfg: float, sampler_name: str,
               scheduler: str, positive: list[Any], negative: list[Any], latent_image: dict[str, Any],
               denoise: float = 1.0) -> tuple[dict[str, Any]]:
        return (common_ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive, negative,
                                latent_image, denoise=denoise),)


class KSamplerAdvanced:
    """KSampler with control over noise and the window of steps that runs."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "model": ("MODEL",),
            "add_noise": (["enable", "disable"],),
            "noise_seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True}),
            "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
            "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
            "sampler_name": (sampler_names(),),
            "scheduler": (scheduler_names(),),
            "positive": ("CONDITIONING",),
            "negative": ("CONDITIONING",),
            "latent_image": ("LATENT",),
            "start_at_step": ("INT", {"default": 0, "min": 0, "max": 10000}),
            "end_at_step": ("INT", {"default": 10000, "min": 0, "max": 10000}),
            "return_with_leftover_noise": (["disable", "enable"],),
        }}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "sample"
    CATEGORY = "sampling"

    def sample(self, model: ModelValue, add_noise: str, noise_seed: int, steps: int, cfg: float,
               sampler_name: str, scheduler: str, positive: list[Any], negative: list[Any],
               latent_image: dict[str, Any], start_at_step: int, end_at_step: int,
               return_with_leftover_noise: str, denoise: float = 1.0) -> tuple[dict[str, Any]]:
        return (common_ksampler(
            model, noise_seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
            denoise=denoise, add_noise=add_noise != "disable", start_step=start_at_step,
            last_step=end_at_step, force_full_denoise=return_with_leftover_noise != "enable"),)


NODE_CLASS_MAPPINGS = {"KSampler": KSampler, "KSamplerAdvanced": KSamplerAdvanced}
NODE_DISPLAY_NAME_MAPPINGS = {"KSampler": "KSampler", "KSamplerAdvanced": "KSampler (Advanced)"}
