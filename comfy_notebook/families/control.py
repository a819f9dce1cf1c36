"""Which family a ControlNet / T2I-Adapter file was made for, and its architecture's sizes.

A ControlNet copies its UNet's encoder, so the family's UNet detection applies to it unchanged
(the cross-attention width, the label embedding, the head rule: ``Family.detect``).  A
T2I-Adapter carries no text width; only the SDXL adapter's 16x16 pixel unshuffle names a family
(ComfyUI ``comfy/controlnet.py: load_t2i_adapter`` at a125cd8: ``conv_in`` taking 256 or 768
channels).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["describe_control", "read_family_control"]


def read_family_control(sd: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """``(kind, tensors)`` of a control file only a DiT family can read (Flux: ``families/flux_control.py``),
    else None (the UNet layouts are read by ``runtime.control_files``)."""
    from comfy_notebook.families.flux_control import read_flux_control

    return read_flux_control(sd)


def describe_control(kind: str, tensors: Mapping[str, Any]) -> tuple[str | None, Any]:
    """``(family name or None, config)`` of a control file's original-layout tensors.

    Parameters
    ----------
    kind:
        ``"controlnet"`` (config: :class:`~comfy_notebook.models.controlnet.ControlNetConfig`),
        ``"t2i_adapter"`` (config: :class:`~comfy_notebook.models.t2i_adapter.AdapterConfig`) or
        ``"dit_controlnet"`` (a Flux ControlNet: :class:`~comfy_notebook.models.controlnet_flux.FluxControlNetConfig`).
    tensors:
        Key -> tensor (or anything with ``.shape``), keys without ``control_model.``.
    """
    from comfy_notebook.families import SDXL, detect
    from comfy_notebook.models.controlnet import ControlNetConfig
    from comfy_notebook.models.t2i_adapter import AdapterConfig

    if kind == "dit_controlnet":
        from comfy_notebook.families.flux import FLUX
        from comfy_notebook.families.flux_control import describe_flux_control

        return FLUX.name, describe_flux_control(tensors, FLUX.latent_format)
    if kind == "t2i_adapter":
        config = AdapterConfig.from_state_dict(tensors)
        return (SDXL.name if config.kind == "full_xl" else None), config
    found = detect({k: v for k, v in tensors.items() if k != "difference"})
    hint_channels = int(tensors["input_hint_block.0.weight"].shape[1])
    union = int(tensors["task_embedding"].shape[0]) if "task_embedding" in tensors else None
    family = found.family.name if found.family is not None else None
    return family, ControlNetConfig(found.unet, hint_channels, union_types=union)
