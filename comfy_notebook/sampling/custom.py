"""The SAMPLER and NOISE values of ComfyUI's custom-sampling nodes, and the SIGMAS operations.

- :class:`SamplerSpec` (SAMPLER): a sampler of ``registry.SAMPLERS`` with its options (ComfyUI's
  ``KSAMPLER`` object from ``ksampler(name, extra_options)`` / ``sampler_object(name)``).
  :meth:`SamplerSpec.run` prepares the sampler's per-step noise exactly as ``ksample`` does
  (seeded generator, Brownian tree, ...) and calls the sampler function with the options.
- :class:`RandomNoise` / :class:`EmptyNoise` (NOISE): ``generate_noise(latent)`` and ``seed``,
  the duck type ComfyUI's ``SamplerCustomAdvanced`` uses (so NOISE values of ComfyUI node packs
  work here too).  The seed also seeds the sampler's per-step noise; ``EmptyNoise`` has seed 0.
- SIGMAS is a plain 1-D float tensor, as in ComfyUI; the functions below are the sigma nodes'
  arithmetic (``comfy_extras/nodes_custom_sampler.py`` at c079b69 and Comfy-Org 4be318a).

Family-agnostic: the model's schedule is an argument wherever one is needed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from comfy_notebook.sampling.noise import (
    BrownianTreeNoiseSampler,
    default_noise_sampler,
    prepare_noise,
)
from comfy_notebook.sampling.registry import (
    NODE_SAMPLERS,
    NODE_SAMPLERS_NEED_UNCOND,
    SAMPLER_NEEDS_SCHEDULE,
    SAMPLER_NEEDS_UNCOND,
    SAMPLER_NOISE,
    SAMPLERS,
)
from comfy_notebook.sampling.samplers import StepCallback
from comfy_notebook.sampling.samplers_rf import for_model_sampling
from comfy_notebook.sampling.schedules import SamplingConfigError, _beta, calculate_sigmas

__all__ = [
    "EmptyNoise",
    "RandomNoise",
    "SamplerSpec",
    "add_noise",
    "basic_sigmas",
    "beta_sigmas",
    "extend_intermediate_sigmas",
    "fix_empty_latent_channels",
    "flip_sigmas",
    "sd_turbo_sigmas",
    "set_first_sigma",
    "split_sigmas",
    "split_sigmas_denoise",
]


@dataclass(frozen=True, eq=False)
class SamplerSpec:
    """SAMPLER: a sampler function of ``SAMPLERS`` by name, and keyword options for it.

    Parameters
    ----------
    name:
        One of ``SAMPLERS`` (ComfyUI's ``KSampler.SAMPLERS`` names).  The name also says which
        per-step noise the sampler gets (``registry.SAMPLER_NOISE``): ``dpmpp_2m_sde_gpu`` builds
        its Brownian tree on the device, ``dpmpp_2m_sde`` on the CPU.
    options:
        Extra keyword arguments of the sampler function (``eta``, ``s_noise``, ``solver_type``,
        ``r``, ``order``, ``tau_func``, ...), as ComfyUI's ``extra_options``.
    """

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in SAMPLERS and self.name not in NODE_SAMPLERS:
            raise SamplingConfigError(
                f"unknown sampler {self.name!r}; expected one of {sorted(SAMPLERS)} (or {sorted(NODE_SAMPLERS)}, "
                "made by SamplerLCMUpscale / SamplerEulerCFGpp). "
                "Fix: pass one of the names in comfy_notebook.sampling.SAMPLERS.")
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))

    @property
    def needs_uncond(self) -> bool:
        """CFG++ samplers: the denoiser must also return the unconditional prediction."""
        return self.name in SAMPLER_NEEDS_UNCOND or self.name in NODE_SAMPLERS_NEED_UNCOND

    def run(self, model: Any, x: Tensor, sigmas: Tensor, *, seed: int, callback: StepCallback | None = None,
            cpu_noise: bool = False, model_sampling: Any = None) -> Tensor:
        """Run the sampler from ``x`` (already noised to ``sigmas[0]``) down ``sigmas``.

        Per-step noise as ComfyUI prepares it for this sampler, seeded with ``seed``:
        ancestral samplers draw from a generator on ``x``'s device (``cpu_noise``: on the
        CPU), SDE samplers from a Brownian tree over the sigmas' range.  SA-Solver also gets
        ``model_sampling`` as its ``schedule`` (for its default stochastic window).  This is
        the one place that picks the sampler function for a model sampling.
        """
        kind = SAMPLER_NOISE.get(self.name)
        noise_sampler = None
        generator: torch.Generator | None = None
        if kind == "ancestral":
            noise_sampler = default_noise_sampler(x, seed, cpu=cpu_noise)
        elif kind == "generator":
            device = torch.device("cpu") if cpu_noise else x.device
            generator = torch.Generator(device=device)
            generator.manual_seed(seed)
        elif kind in ("sde", "sde_gpu") and len(sigmas) > 1:
            noise_sampler = BrownianTreeNoiseSampler(
                x, sigmas[sigmas > 0].min(), sigmas.max(), seed=seed, cpu=cpu_noise or kind == "sde")
            noise_sampler.know(sigmas)  # per-step times from a host copy: no sync per step
        options = dict(self.options)
        if self.name in SAMPLER_NEEDS_SCHEDULE and "schedule" not in options:
            options["schedule"] = model_sampling
        if generator is not None:
            options["generator"] = generator
        fn = SAMPLERS.get(self.name) or NODE_SAMPLERS[self.name]
        fn = for_model_sampling(self.name, fn, model_sampling)  # *_RF on flow models
        with torch.no_grad():
            return fn(model, x, sigmas, callback=callback, noise_sampler=noise_sampler, **options)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"SamplerSpec({self.name!r}{', ' + opts if opts else ''})"


def _samples(latent: Mapping[str, Any]) -> Tensor:
    samples = latent.get("samples") if isinstance(latent, Mapping) else None
    if not isinstance(samples, Tensor):
        raise SamplingConfigError(
            f"latent must be a dict with 'samples' [B, C, H, W], received {type(latent).__name__}. "
            "Fix: pass a LATENT such as EmptyLatentImage's output.")
    return samples


@dataclass(frozen=True)
class RandomNoise:
    """NOISE of ``RandomNoise(noise_seed)``: ComfyUI's initial noise for a latent and a seed.

    ``generate_noise(latent)`` is ``torch.manual_seed(seed)`` and one CPU ``randn`` of the
    latent's shape, honouring ``batch_index`` (:func:`~comfy_notebook.sampling.noise.prepare_noise`).
    """

    seed: int

    def generate_noise(self, input_latent: Mapping[str, Any]) -> Tensor:
        """Noise [B, C, H, W] on the CPU in the samples' dtype."""
        return prepare_noise(_samples(input_latent), self.seed, input_latent.get("batch_index"))


@dataclass(frozen=True)
class EmptyNoise:
    """NOISE of ``DisableNoise``: zeros (sampling starts from the latent itself); seed 0."""

    seed: int = 0

    def generate_noise(self, input_latent: Mapping[str, Any]) -> Tensor:
        """Zeros of the samples' shape and dtype on the CPU."""
        samples = _samples(input_latent)
        return torch.zeros(samples.shape, dtype=samples.dtype, device="cpu")


def fix_empty_latent_channels(samples: Tensor, channels: int) -> Tensor:
    """An all-zero latent with the wrong channel count becomes zeros with ``channels`` (ComfyUI's
    ``fix_empty_latent_channels``: an empty latent of one family works with another's model)."""
    if samples.ndim == 4 and samples.shape[1] != channels and torch.count_nonzero(samples) == 0:
        return samples.new_zeros((samples.shape[0], channels, *samples.shape[2:]))
    return samples


def add_noise(samples: Tensor, noise: Tensor, sigmas: Tensor, *, model_sampling: Any, latent_format: Any) -> Tensor:
    """``AddNoise``: ``samples`` noised to the span of ``sigmas``, in ComfyUI scale.

    The noise level is ``|sigmas[0] - sigmas[-1]|`` (one sigma: that sigma); the model
    sampling's noise scaling (diffusion models: ``latent + noise * sigma``; flow models:
    ``sigma * noise + (1 - sigma) * latent``) applies in model scale, non-finite values become 0.
    Empty ``sigmas``: ``samples`` unchanged.
    """
    if len(sigmas) == 0:
        return samples
    scale = (sigmas[0] - sigmas[-1]).abs() if len(sigmas) > 1 else sigmas[0]
    x0 = samples.float()
    if torch.count_nonzero(x0) > 0:  # an empty latent is not scaled (as ComfyUI)
        x0 = latent_format.process_in(x0)
    noisy = latent_format.process_out(model_sampling.noise_scaling(scale.float(), noise.float(), x0))
    return torch.nan_to_num(noisy, nan=0.0, posinf=0.0, neginf=0.0)


# -- SIGMAS ----------------------------------------------------------------------------------------
def basic_sigmas(schedule: Any, scheduler: str, steps: int, denoise: float = 1.0) -> Tensor:
    """``BasicScheduler``: the last ``steps + 1`` sigmas of an ``int(steps / denoise)``-step schedule.

    ``denoise <= 0`` gives an empty tensor.  Unlike KSampler, no sampler-specific adjustment
    (ComfyUI's penultimate-sigma discard for dpm_2 / uni_pc happens only inside KSampler).
    """
    total = steps
    if denoise < 1.0:
        if denoise <= 0.0:
            return torch.zeros([0])
        total = int(steps / denoise)
    return calculate_sigmas(schedule, scheduler, total).cpu()[-(steps + 1):]


def beta_sigmas(schedule: Any, steps: int, alpha: float = 0.6, beta: float = 0.6) -> Tensor:
    """``BetaSamplingScheduler``: the schedule's sigmas at quantiles of Beta(alpha, beta), then 0."""
    return _beta(schedule, steps, alpha=alpha, beta=beta).float()


def sd_turbo_sigmas(schedule: Any, steps: int, denoise: float = 1.0) -> Tensor:
    """``SDTurboScheduler``: sigmas of timesteps 999, 899, ..., 99 from ``10 - int(10 * denoise)`` on.

    At most ``steps`` of them (fewer when the window runs past timestep 99), then 0.
    """
    start = 10 - int(10 * denoise)
    timesteps = torch.flip(torch.arange(1, 11) * 100 - 1, (0,))[start:start + steps]
    sigmas = schedule.sigma(timesteps)
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def split_sigmas(sigmas: Tensor, step: int) -> tuple[Tensor, Tensor]:
    """``SplitSigmas``: ``(sigmas[:step + 1], sigmas[step:])``; both share the sigma at ``step``."""
    return sigmas[:step + 1], sigmas[step:]


def split_sigmas_denoise(sigmas: Tensor, denoise: float) -> tuple[Tensor, Tensor]:
    """``SplitSigmasDenoise``: the low part keeps the last ``round(steps * denoise)`` steps.

    As ComfyUI: ``high = sigmas[:-n]``, ``low = sigmas[-(n + 1):]`` with ``n = round(steps *
    denoise)`` (so ``n == 0`` gives an empty high part and only the final sigma as the low one).
    """
    steps = max(sigmas.shape[-1] - 1, 0)
    n = round(steps * denoise)
    return sigmas[:-n], sigmas[-(n + 1):]


def flip_sigmas(sigmas: Tensor) -> Tensor:
    """``FlipSigmas``: reversed (ascending, for unsampling); a leading 0 becomes 0.0001.

    Returns a new tensor (the input is not modified).
    """
    if len(sigmas) == 0:
        return sigmas
    flipped = sigmas.flip(0)
    if flipped[0] == 0:
        flipped[0] = 0.0001
    return flipped


def set_first_sigma(sigmas: Tensor, sigma: float) -> Tensor:
    """``SetFirstSigma``: a copy of ``sigmas`` whose first value is ``sigma``."""
    out = sigmas.clone()
    out[0] = sigma
    return out


_SPACINGS = {
    "linear": lambda t: t,
    "cosine": lambda t: torch.sin(t * math.pi / 2),
    "sine": lambda t: 1 - torch.cos(t * math.pi / 2),
}


def extend_intermediate_sigmas(sigmas: Tensor, steps: int, start_at_sigma: float, end_at_sigma: float,
                               spacing: str) -> Tensor:
    """``ExtendIntermediateSigmas``: ``steps - 1`` extra sigmas inside each step that starts in range.

    A step from ``sigmas[i]`` with ``end_at_sigma <= sigmas[i] <= start_at_sigma`` (a negative
    ``start_at_sigma``: no upper bound) gets the points ``sigmas[i] + f(k / steps) (sigmas[i+1] -
    sigmas[i])`` for k = 1 .. steps - 1, ``f`` the spacing (linear; cosine ``sin(pi t / 2)``:
    denser at the end; sine ``1 - cos(pi t / 2)``: denser at the start).  Float32 on the CPU.
    """
    if spacing not in _SPACINGS:
        raise SamplingConfigError(f"spacing must be one of {sorted(_SPACINGS)}, received {spacing!r}. "
                                  "Fix: pick linear, cosine or sine.")
    upper = math.inf if start_at_sigma < 0 else start_at_sigma
    fractions = _SPACINGS[spacing](torch.linspace(0, 1, steps + 1, device=sigmas.device)[1:-1])
    out: list[float] = []
    for i in range(len(sigmas) - 1):
        cur, nxt = sigmas[i], sigmas[i + 1]
        out.append(float(cur))
        if end_at_sigma <= cur <= upper:
            out.extend((fractions * (nxt - cur) + cur).tolist())
    if len(sigmas) > 0:
        out.append(float(sigmas[-1]))
    return torch.tensor(out, dtype=torch.float32)
