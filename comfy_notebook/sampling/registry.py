"""Name -> sampler function, with ComfyUI's names (``KSampler.SAMPLERS``), only those that run.

``SAMPLER_NOISE`` says which per-step noise ``ksample`` prepares for a sampler: ``"ancestral"``
(seeded generator on the latent's device), ``"sde"`` (seeded Brownian tree on the CPU),
``"sde_gpu"`` (tree on the device) or ``"inpaint_random"`` (ComfyUI's ``ddim``: Euler whose
inpainting noise is a fresh CPU draw seeded with ``seed + 1``).

What else a sampler needs from ``ksample``, beyond the common signature:

- ``SAMPLER_NEEDS_UNCOND`` (the CFG++ samplers): a guided denoiser
  ``model(x, sigma) -> (denoised, uncond_denoised)`` (``CFGDenoiser(..., keep_uncond=True).guided``),
  which evaluates the negative prompt even at cfg 1, as ComfyUI does for them.
- ``SAMPLER_NEEDS_SCHEDULE`` (SA-Solver): the keyword ``schedule=`` (the model's
  ``DiscreteSchedule``), for defaults derived from it.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from comfy_notebook.sampling import samplers as s
from comfy_notebook.sampling import samplers_advanced as adv
from comfy_notebook.sampling import samplers_cfg_pp as c
from comfy_notebook.sampling import samplers_exp as e
from comfy_notebook.sampling import samplers_multistep as m
from comfy_notebook.sampling import samplers_res as r
from comfy_notebook.sampling import samplers_sa as a
from comfy_notebook.sampling import samplers_unipc as u

__all__ = ["NODE_SAMPLERS", "NODE_SAMPLERS_NEED_UNCOND", "SAMPLERS", "SAMPLER_NEEDS_SCHEDULE", "SAMPLER_NEEDS_UNCOND", "SAMPLER_NOISE"]

# In the order of ComfyUI's KSampler.SAMPLERS (a125cd8): KSAMPLER_NAMES + ddim, uni_pc, uni_pc_bh2.
SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "euler": s.sample_euler,
    "euler_cfg_pp": c.sample_euler_cfg_pp,
    "euler_ancestral": s.sample_euler_ancestral,
    "euler_ancestral_cfg_pp": c.sample_euler_ancestral_cfg_pp,
    "heun": s.sample_heun,
    "heunpp2": s.sample_heunpp2,
    "dpm_2": s.sample_dpm_2,
    "dpm_2_ancestral": s.sample_dpm_2_ancestral,
    "lms": m.sample_lms,
    "dpm_fast": m.sample_dpm_fast,
    "dpm_adaptive": m.sample_dpm_adaptive,
    "dpmpp_2s_ancestral": s.sample_dpmpp_2s_ancestral,
    "dpmpp_2s_ancestral_cfg_pp": c.sample_dpmpp_2s_ancestral_cfg_pp,
    "dpmpp_sde": s.sample_dpmpp_sde,
    "dpmpp_sde_gpu": s.sample_dpmpp_sde,
    "dpmpp_2m": s.sample_dpmpp_2m,
    "dpmpp_2m_cfg_pp": c.sample_dpmpp_2m_cfg_pp,
    "dpmpp_2m_sde": s.sample_dpmpp_2m_sde,
    "dpmpp_2m_sde_gpu": s.sample_dpmpp_2m_sde,
    "dpmpp_2m_sde_heun": s.sample_dpmpp_2m_sde_heun,
    "dpmpp_2m_sde_heun_gpu": s.sample_dpmpp_2m_sde_heun,
    "dpmpp_3m_sde": s.sample_dpmpp_3m_sde,
    "dpmpp_3m_sde_gpu": s.sample_dpmpp_3m_sde,
    "ddpm": m.sample_ddpm,
    "lcm": m.sample_lcm,
    "ipndm": m.sample_ipndm,
    "ipndm_v": m.sample_ipndm_v,
    "deis": m.sample_deis,
    "res_multistep": r.sample_res_multistep,
    "res_multistep_cfg_pp": r.sample_res_multistep_cfg_pp,
    "res_multistep_ancestral": r.sample_res_multistep_ancestral,
    "res_multistep_ancestral_cfg_pp": r.sample_res_multistep_ancestral_cfg_pp,
    "gradient_estimation": m.sample_gradient_estimation,
    "gradient_estimation_cfg_pp": c.sample_gradient_estimation_cfg_pp,
    "er_sde": e.sample_er_sde,
    "seeds_2": e.sample_seeds_2,
    "seeds_3": e.sample_seeds_3,
    "sa_solver": a.sample_sa_solver,
    "sa_solver_pece": a.sample_sa_solver_pece,
    "ddim": s.sample_euler,
    "uni_pc": u.sample_uni_pc,
    "uni_pc_bh2": u.sample_uni_pc_bh2,
}

SAMPLER_NOISE: dict[str, str] = {
    **{k: "ancestral" for k in ("euler_ancestral", "euler_ancestral_cfg_pp", "dpm_2_ancestral", "dpmpp_2s_ancestral",
                                 "dpmpp_2s_ancestral_cfg_pp", "ddpm", "lcm", "dpm_fast", "dpm_adaptive", "res_multistep_ancestral",
                                 "res_multistep_ancestral_cfg_pp", "er_sde", "seeds_2", "seeds_3", "sa_solver",
                                 "sa_solver_pece")},
    **{k: "sde" for k in ("dpmpp_sde", "dpmpp_2m_sde", "dpmpp_2m_sde_heun", "dpmpp_3m_sde")},
    **{k: "sde_gpu" for k in ("dpmpp_sde_gpu", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde_gpu")},
    "ddim": "inpaint_random",
}

# Samplers that only sampler-object nodes make (not in KSampler's list): SamplerLCMUpscale and
# SamplerEulerCFGpp ("alternative") of ComfyUI's nodes_advanced_samplers.py.  ``"generator"``
# noise: the sampler gets ``generator=`` (a seeded generator on the latent's device).
NODE_SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "lcm_upscale": adv.sample_lcm_upscale,
    "euler_pp": adv.sample_euler_pp,
}
SAMPLER_NOISE["lcm_upscale"] = "generator"

SAMPLER_NEEDS_UNCOND: frozenset[str] = frozenset(k for k in SAMPLERS if k.endswith("_cfg_pp"))
NODE_SAMPLERS_NEED_UNCOND: frozenset[str] = frozenset({"euler_pp"})
SAMPLER_NEEDS_SCHEDULE: frozenset[str] = frozenset({"sa_solver", "sa_solver_pece"})
