"""Schedules, samplers (functions that own their loop) and the KSampler core."""

from comfy_notebook.sampling.custom import (
    EmptyNoise,
    RandomNoise,
    SamplerSpec,
    add_noise,
    basic_sigmas,
    beta_sigmas,
    extend_intermediate_sigmas,
    fix_empty_latent_channels,
    flip_sigmas,
    sd_turbo_sigmas,
    set_first_sigma,
    split_sigmas,
    split_sigmas_denoise,
)
from comfy_notebook.sampling.denoisers import (
    CFGDenoiser,
    CondEntry,
    ModelDenoiser,
    resolve_conditioning,
)
from comfy_notebook.sampling.guidance import DualCFGDenoiser, Guidance
from comfy_notebook.sampling.ksampler import inpaint_inputs, ksample, prepare_mask, sample_sigmas
from comfy_notebook.sampling.model_sampling import EPS, LCM, X0, ModelSampling, VPrediction
from comfy_notebook.sampling.noise import (
    BrownianTreeNoiseSampler,
    default_noise_sampler,
    prepare_noise,
)
from comfy_notebook.sampling.registry import (
    SAMPLER_NEEDS_SCHEDULE,
    SAMPLER_NEEDS_UNCOND,
    SAMPLER_NOISE,
    SAMPLERS,
)
from comfy_notebook.sampling.samplers import StepInfo
from comfy_notebook.sampling.samplers_cfg_pp import GuidedDenoiser, unguided
from comfy_notebook.sampling.schedules import (
    DISCARD_PENULTIMATE_SIGMA_SAMPLERS,
    SCHEDULERS,
    DiscreteSchedule,
    SamplingConfigError,
    calculate_sigmas,
    ksampler_sigmas,
)

__all__ = [
    "DISCARD_PENULTIMATE_SIGMA_SAMPLERS",
    "EPS",
    "LCM",
    "SAMPLERS",
    "SAMPLER_NEEDS_SCHEDULE",
    "SAMPLER_NEEDS_UNCOND",
    "SAMPLER_NOISE",
    "SCHEDULERS",
    "X0",
    "BrownianTreeNoiseSampler",
    "CFGDenoiser",
    "CondEntry",
    "DiscreteSchedule",
    "DualCFGDenoiser",
    "EmptyNoise",
    "Guidance",
    "GuidedDenoiser",
    "ModelDenoiser",
    "ModelSampling",
    "RandomNoise",
    "SamplerSpec",
    "SamplingConfigError",
    "StepInfo",
    "VPrediction",
    "add_noise",
    "basic_sigmas",
    "beta_sigmas",
    "calculate_sigmas",
    "default_noise_sampler",
    "extend_intermediate_sigmas",
    "fix_empty_latent_channels",
    "flip_sigmas",
    "inpaint_inputs",
    "ksample",
    "ksampler_sigmas",
    "prepare_mask",
    "prepare_noise",
    "resolve_conditioning",
    "sample_sigmas",
    "sd_turbo_sigmas",
    "set_first_sigma",
    "split_sigmas",
    "split_sigmas_denoise",
    "unguided",
]
