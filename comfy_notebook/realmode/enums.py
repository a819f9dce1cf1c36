"""ComfyScript-style enums for completion: ``Checkpoints.v1_5_pruned_emaonly`` and friends.

Members are :class:`enum.StrEnum` members whose value is the file name (or sampler name), so
they are accepted anywhere a string is and validate as that name.  Member names follow one
stable rule (:func:`member_name`): the model extension is dropped, characters that cannot be in
an identifier become ``_``, a leading digit gets a ``_`` prefix, and names that clash get
``_2``, ``_3``... in sorted order of their values.

Global enums come from the session's folders (:func:`global_enums`); per-node enums from the
combo inputs of registered nodes (:func:`node_enum`).
"""

from __future__ import annotations

import keyword
import re
import sys
from collections.abc import Iterable, Sequence
from enum import StrEnum
from functools import lru_cache
from pathlib import PurePosixPath
from typing import Any

from comfy_notebook.errors import ComfyNotebookError
from comfy_notebook.folders import MODEL_EXTENSIONS, Folders, folders_service

__all__ = [
    "GLOBAL_ENUM_KINDS",
    "MAX_MEMBERS",
    "SAMPLER_NAMES",
    "SCHEDULER_NAMES",
    "EnumError",
    "global_enums",
    "make_enum",
    "member_name",
    "member_names",
    "node_enum",
    "sampler_names",
    "scheduler_names",
]

MAX_MEMBERS = 2000  # ComfyScript's cap; longer combos are not turned into enums

# Enum class name -> folder kind.
GLOBAL_ENUM_KINDS: dict[str, str] = {
    "Checkpoints": "checkpoints",
    "VAEs": "vae",
    "Loras": "loras",
    "Embeddings": "embeddings",
    "TextEncoders": "text_encoders",
    "UNETs": "diffusion_models",
    "UpscaleModels": "upscale_models",
    "ControlNets": "controlnet",
}

# Fallbacks when comfy_notebook.sampling does not (yet) export its lists (ComfyUI a125cd8).
SAMPLER_NAMES: tuple[str, ...] = (
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2",
    "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral",
    "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp",
    "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu",
    "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm", "ipndm_v", "deis",
    "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp",
    "er_sde", "seeds_2", "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc",
    "uni_pc_bh2",
)
SCHEDULER_NAMES: tuple[str, ...] = (
    "simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
    "linear_quadratic", "kl_optimal",
)

_NOT_IDENT = re.compile(r"\W")
_RESERVED = frozenset({"mro"})


class EnumError(ComfyNotebookError):
    """A node or input has no combo to make an enum from."""


def member_name(value: str) -> str:
    """The identifier for one value (before clash handling).

    >>> member_name("sd15/v1-5-pruned-emaonly.safetensors")
    'sd15_v1_5_pruned_emaonly'
    >>> member_name("4x-UltraSharp.pth")
    '_4x_UltraSharp'
    """
    path = PurePosixPath(value)
    if path.suffix.lower() in MODEL_EXTENSIONS:
        value = str(path.with_suffix(""))
    name = _NOT_IDENT.sub("_", value) or "_"
    if name[0].isdigit():
        name = "_" + name
    if len(name) > 1 and name.startswith("_") and name.endswith("_"):
        name = name.rstrip("_") or "_"  # _sunder_ names are reserved by Enum
    if keyword.iskeyword(name) or name in _RESERVED:
        name += "_"
    return name


def member_names(values: Iterable[str]) -> dict[str, str]:
    """Member name -> value for ``values``; clashes get ``_2``, ``_3``... by sorted value."""
    out: dict[str, str] = {}
    taken: set[str] = set()
    for value in sorted(set(values)):
        base = member_name(value)
        name, k = base, 1
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        taken.add(name)
        out[name] = value
    return out


@lru_cache(maxsize=256)
def _cached_enum(cls_name: str, values: tuple[str, ...]) -> type[StrEnum]:
    members = list(member_names(values).items())
    enum = StrEnum(cls_name, members)  # type: ignore[misc]
    enum.__module__ = "comfy_notebook.realmode.enums"
    return enum


def make_enum(cls_name: str, values: Iterable[str]) -> type[StrEnum]:
    """A ``StrEnum`` named ``cls_name`` with one member per value (same values -> same class).

    Parameters
    ----------
    cls_name:
        The enum's name, e.g. ``"Checkpoints"``.
    values:
        File names or options; at most :data:`MAX_MEMBERS` are kept (sorted).
    """
    vals = tuple(sorted({str(v) for v in values}))[:MAX_MEMBERS]
    return _cached_enum(cls_name, vals)


def sampler_names() -> tuple[str, ...]:
    """The sampling package's sampler names once it is imported, else ComfyUI's list (the same
    names: enums never import torch by themselves)."""
    sampling = sys.modules.get("comfy_notebook.sampling")
    names = getattr(sampling, "SAMPLER_NAMES", None)
    return tuple(names) if names else SAMPLER_NAMES


def scheduler_names() -> tuple[str, ...]:
    """The sampling package's scheduler names once it is imported, else ComfyUI's list."""
    sampling = sys.modules.get("comfy_notebook.sampling")
    names = getattr(sampling, "SCHEDULER_NAMES", None)
    return tuple(names) if names else SCHEDULER_NAMES


def _folders_of(source: Any) -> Folders:
    if isinstance(source, Folders):
        return source
    services = getattr(source, "services", None)
    if services is not None:
        return folders_service(services)
    raise EnumError(
        f"expected a Session or a Folders object, received {type(source).__name__}. "
        "Fix: pass comfy_notebook.session() or a Folders instance"
    )


def global_enums(
    source: Any,
    *,
    samplers: Sequence[str] | None = None,
    schedulers: Sequence[str] | None = None,
) -> dict[str, type[StrEnum]]:
    """``Checkpoints``, ``VAEs``, ``Loras``, ``Embeddings``, ``TextEncoders``, ``UNETs``,
    ``UpscaleModels``, ``ControlNets``, ``Samplers`` and ``Schedulers``.

    Parameters
    ----------
    source:
        A Session (its ``services.folders``) or a :class:`~comfy_notebook.folders.Folders`.
    samplers, schedulers:
        Override the sampler / scheduler lists (default: :func:`sampler_names`,
        :func:`scheduler_names`).

    Returns
    -------
    dict
        Enum name -> ``StrEnum`` class, rebuilt from the current folder listings (a listing
        that did not change gives the same class).
    """
    folders = _folders_of(source)
    out = {name: make_enum(name, folders.list(kind)) for name, kind in GLOBAL_ENUM_KINDS.items()}
    out["Samplers"] = make_enum("Samplers", samplers if samplers is not None else sampler_names())
    out["Schedulers"] = make_enum(
        "Schedulers", schedulers if schedulers is not None else scheduler_names()
    )
    return out


def node_enum(class_type: str, input_name: str, registry: Any = None) -> type[StrEnum]:
    """The enum of one combo input, e.g. ``node_enum("CheckpointLoaderSimple", "ckpt_name")``.

    Parameters
    ----------
    class_type, input_name:
        The node class and its combo input.
    registry:
        Defaults to the current session's registry.

    Raises
    ------
    EnumError
        When the node is not registered or the input is not a combo.
    """
    if registry is None:
        from comfy_notebook._session import session

        registry = session().registry
    spec = registry.get(class_type)
    if spec is None:
        raise EnumError(
            f"node {class_type!r} is not registered; expected one of the session's nodes. "
            "Fix: register its node pack with session.register(...)"
        )
    inp = spec.inputs.get(input_name)
    if inp is None or not isinstance(inp.type, tuple):
        combos = [n for n, i in spec.inputs.items() if isinstance(i.type, tuple)]
        raise EnumError(
            f"{class_type}.{input_name} is not a combo input; expected one of {combos}"
        )
    return make_enum(f"{class_type}.{input_name}", [str(v) for v in inp.type])
