"""Half-log-SNR time of the exponential-integrator samplers, for diffusion and flow models.

The DPM-Solver++ SDE, SEEDS, ER-SDE, SA-Solver and CFG++ Euler samplers step in
``lambda = log(alpha / sigma)`` (half the log signal-to-noise ratio).  ComfyUI
(``comfy/k_diffusion/sampling.py`` at a125cd8: ``sigma_to_half_log_snr``,
``half_log_snr_to_sigma``, ``offset_first_sigma_for_snr``) computes it per model sampling:

- diffusion models (variance exploding in k-diffusion's scaling, alpha = 1):
  ``lambda = -log(sigma)`` and back ``sigma = exp(-lambda)``;
- rectified-flow models (``CONST``: ``x = (1 - sigma) x0 + sigma noise``, alpha = 1 - sigma):
  ``lambda = -logit(sigma) = log((1 - sigma) / sigma)`` and back ``sigma = sigmoid(-lambda)``.
  A schedule starting at sigma >= 1 (lambda = -inf) first has its first sigma moved to the
  model sampling's ``percent_to_sigma(1e-4)`` (just below 1), which is also where the model is
  evaluated first.

In both cases ``alpha = sigma * exp(lambda)``, the form the samplers use.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

__all__ = ["half_log_snr", "is_flow", "offset_first_sigma", "sigma_from_half_log_snr"]


def is_flow(model_sampling: Any) -> bool:
    """Whether a model sampling is a rectified flow (ComfyUI's ``CONST``)."""
    return getattr(model_sampling, "prediction", None) == "const"


def half_log_snr(sigma: Tensor, flow: bool) -> Tensor:
    """``lambda(sigma)``: ``-logit(sigma)`` for flow models, ``-log(sigma)`` otherwise."""
    return sigma.logit().neg() if flow else sigma.log().neg()


def sigma_from_half_log_snr(lam: Tensor, flow: bool) -> Tensor:
    """The inverse of :func:`half_log_snr`: ``sigmoid(-lambda)`` (flow) or ``exp(-lambda)``."""
    return lam.neg().sigmoid() if flow else lam.neg().exp()


def offset_first_sigma(sigmas: Tensor, model_sampling: Any, percent: float = 1e-4) -> Tensor:
    """``sigmas`` with a first sigma >= 1 of a flow model replaced by ``percent_to_sigma(percent)``.

    A new tensor when changed (the caller's is left as it is); otherwise ``sigmas`` itself.
    Diffusion models and schedules of one sigma are returned unchanged.
    """
    if len(sigmas) <= 1 or not is_flow(model_sampling) or float(sigmas[0]) < 1:
        return sigmas
    out = sigmas.clone()
    out[0] = model_sampling.percent_to_sigma(percent)
    return out
