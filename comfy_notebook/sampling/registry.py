"""Name -> sampler function, with ComfyUI's names (``KSampler.SAMPLERS``), only those that run.

``SAMPLER_NOISE`` says which per-step noise ``ksample`` prepares for a sampler: ``"ancestral"``
(seeded generator on the latent's device), ``"sde"`` (seeded Brownian tree on the CPU),
``"sde_gpu"`` (tree on the device) or ``"inpaint_random"`` (ComfyUI's ``ddim``: Euler whose
inpainting noise is a fresh CPU draw seeded with ``seed + 1``).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from comfy_notebook.sampling import samplers as s
from comfy_notebook.sampling import samplers_exp as e
from comfy_notebook.sampling import samplers_multistep as m
from comfy_notebook.sampling import samplers_res as r
from comfy_notebook.sampling import samplers_unipc as u

__all__ = ["SAMPLERS", "SAMPLER_NOISE"]

# In the order of ComfyUI's KSampler.SAMPLERS (a125cd8), leaving out the names not implemented here:
# the *_cfg_pp variants, sa_solver and sa_solver_pece.
SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "euler": s.sample_euler,
    "euler_ancestral": s.sample_euler_ancestral,
    "heun": s.sample_heun,
    "heunpp2": s.sample_heunpp2,
    "dpm_2": s.sample_dpm_2,
    "dpm_2_ancestral": s.sample_dpm_2_ancestral,
    "lms": m.sample_lms,
    "dpm_fast": m.sample_dpm_fast,
    "dpm_adaptive": m.sample_dpm_adaptive,
    "dpmpp_2s_ancestral": s.sample_dpmpp_2s_ancestral,
    "dpmpp_sde": s.sample_dpmpp_sde,
    "dpmpp_sde_gpu": s.sample_dpmpp_sde,
    "dpmpp_2m": s.sample_dpmpp_2m,
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
    "res_multistep_ancestral": r.sample_res_multistep_ancestral,
    "gradient_estimation": m.sample_gradient_estimation,
    "er_sde": e.sample_er_sde,
    "seeds_2": e.sample_seeds_2,
    "seeds_3": e.sample_seeds_3,
    "ddim": s.sample_euler,
    "uni_pc": u.sample_uni_pc,
    "uni_pc_bh2": u.sample_uni_pc_bh2,
}

SAMPLER_NOISE: dict[str, str] = {
    **{k: "ancestral" for k in ("euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "ddpm", "lcm", "dpm_fast",
                                 "res_multistep_ancestral", "er_sde", "seeds_2", "seeds_3")},
    **{k: "sde" for k in ("dpmpp_sde", "dpmpp_2m_sde", "dpmpp_2m_sde_heun", "dpmpp_3m_sde")},
    **{k: "sde_gpu" for k in ("dpmpp_sde_gpu", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde_gpu")},
    "ddim": "inpaint_random",
}
