"""ControlNet and T2I-Adapter nodes (ComfyUI ``nodes.py`` / ``comfy_extras/nodes_controlnet.py`` /
``comfy_extras/nodes_sd3.py`` at a125cd8: names, inputs, defaults and results).

The loaders read SD1/SD2/SDXL ControlNets, T2I-Adapters and control-LoRAs, and Flux ControlNets
(XLabs, Mistoline, InstantX / Union Pro, AliMama inpainting); Flux nets that take a latent need
the VAE on the apply node.

A CONTROL_NET is applied by putting an :class:`~comfy_notebook.runtime.control_run.AppliedControl`
into each conditioning entry's ``"control"`` option; the KSampler runs it.
"""

from __future__ import annotations

from typing import Any

from comfy_notebook.errors import NodeError
from comfy_notebook.families.control import describe_control, read_family_control
from comfy_notebook.nodes._services import (
    file_fingerprint,
    folders,
    listing,
    model_manager,
    services,
)
from comfy_notebook.runtime.control_files import ControlNetValue, load_controlnet_value
from comfy_notebook.runtime.control_run import AppliedControl

# ComfyUI comfy/cldm/control_types.py: the control types of union (ControlNet++) models.
UNION_CONTROLNET_TYPES = {
    "openpose": 0,
    "depth": 1,
    "hed/pidi/scribble/ted": 2,
    "canny/lineart/anime_lineart/mlsd": 3,
    "normal": 4,
    "segment": 5,
    "tile": 6,
    "repaint": 7,
}


def _load(control_net_name: str, model: Any = None) -> ControlNetValue:
    svc = services()
    path = folders(svc).resolve("controlnet", control_net_name)
    return load_controlnet_value(model_manager(svc), path, describe=describe_control,
                                 name=str(control_net_name).rsplit(".", 1)[0], model=model,
                                 read=read_family_control)


def _hint(image: Any) -> Any:
    """IMAGE [B, H, W, C] -> the hint, channels first [B, C, H, W], on the host."""
    import torch

    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        raise NodeError(
            "the control image must be an IMAGE", input_name="image",
            expected="an IMAGE tensor [B, H, W, C]",
            received=f"{type(image).__name__} {tuple(getattr(image, 'shape', ()))}",
            fix="connect LoadImage (or another node giving IMAGE) to image")
    return image.movedim(-1, 1).float().cpu()


def _check_net(control_net: Any) -> None:
    if not isinstance(control_net, ControlNetValue):
        raise NodeError(
            "control_net is not a CONTROL_NET", input_name="control_net",
            expected="a CONTROL_NET from ControlNetLoader", received=type(control_net).__name__,
            fix="connect ControlNetLoader's output to control_net")


class ControlNetLoader:
    """Load a ControlNet or T2I-Adapter file from models/controlnet."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"control_net_name": (listing("controlnet"),)}}

    RETURN_TYPES = ("CONTROL_NET",)
    FUNCTION = "load_controlnet"
    CATEGORY = "loaders"

    @classmethod
    def IS_CHANGED(cls, control_net_name: str, **_: Any) -> str:
        return file_fingerprint("controlnet", control_net_name)

    def load_controlnet(self, control_net_name: str) -> tuple[ControlNetValue]:
        return (_load(control_net_name),)


class DiffControlNetLoader:
    """Load a ControlNet; a "diff" ControlNet gets the model's weights added back."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"model": ("MODEL",), "control_net_name": (listing("controlnet"),)}}

    RETURN_TYPES = ("CONTROL_NET",)
    FUNCTION = "load_controlnet"
    CATEGORY = "loaders"

    @classmethod
    def IS_CHANGED(cls, control_net_name: str, **_: Any) -> str:
        return file_fingerprint("controlnet", control_net_name)

    def load_controlnet(self, model: Any, control_net_name: str) -> tuple[ControlNetValue]:
        return (_load(control_net_name, model),)


class ControlNetApply:
    """Apply a ControlNet to one conditioning (the negative gets it too, at sampling time)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "conditioning": ("CONDITIONING",),
            "control_net": ("CONTROL_NET",),
            "image": ("IMAGE",),
            "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01}),
        }}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "apply_controlnet"
    DEPRECATED = True
    CATEGORY = "conditioning/controlnet"

    def apply_controlnet(self, conditioning: list[Any], control_net: ControlNetValue, image: Any,
                         strength: float) -> tuple[list[Any]]:
        if strength == 0:
            return (conditioning,)
        _check_net(control_net)
        hint = _hint(image)
        out = []
        for cond, opts in conditioning:
            applied = AppliedControl(control_net, hint, float(strength), previous=opts.get("control"))
            out.append([cond, {**opts, "control": applied, "control_apply_to_uncond": True}])
        return (out,)


#: the strength and start/end percent widgets every "apply ControlNet" node ends with (ComfyUI's)
def _strength_window() -> dict[str, Any]:
    return {  # fresh dicts per call: callers may annotate their copies
        "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01}),
        "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001}),
        "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001}),
    }


class ControlNetApplyAdvanced:
    """Apply a ControlNet to positive and negative conditioning over a part of the sampling."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "positive": ("CONDITIONING",),
            "negative": ("CONDITIONING",),
            "control_net": ("CONTROL_NET",),
            "image": ("IMAGE",),
            **_strength_window(),
        }, "optional": {"vae": ("VAE",)}}

    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")
    FUNCTION = "apply_controlnet"
    CATEGORY = "conditioning/controlnet"

    def apply_controlnet(self, positive: list[Any], negative: list[Any], control_net: ControlNetValue,
                         image: Any, strength: float, start_percent: float, end_percent: float,
                         vae: Any = None, extra_concat: tuple[Any, ...] = ()) -> tuple[list[Any], list[Any]]:
        if strength == 0:
            return (positive, negative)
        _check_net(control_net)
        if vae is None and getattr(control_net.config, "latent_format", None) is not None:
            raise NodeError(
                "this ControlNet takes its control image through the VAE, and none is connected",
                input_name="vae", expected="the model's VAE (VAELoader / the checkpoint's VAE)",
                received="nothing", fix="connect the VAE to the vae input (ComfyUI fails at sampling "
                "without it: 'This Controlnet needs a VAE')")
        hint = _hint(image)
        extra = tuple(extra_concat)
        made: dict[int, AppliedControl] = {}  # one applied control per previous control, shared
        out = []
        for conditioning in (positive, negative):
            c = []
            for cond, opts in conditioning:
                prev = opts.get("control")
                applied = made.get(id(prev))
                if applied is None:
                    applied = made[id(prev)] = AppliedControl(
                        control_net, hint, float(strength), float(start_percent), float(end_percent),
                        vae=vae, previous=prev, extra_concat=extra)
                c.append([cond, {**opts, "control": applied, "control_apply_to_uncond": False}])
            out.append(c)
        return (out[0], out[1])


class ControlNetApplySD3(ControlNetApplyAdvanced):
    """``ControlNetApplyAdvanced`` with the VAE required ("Apply Controlnet with VAE", deprecated in
    ComfyUI but what its published Flux ControlNet example uses; comfy_extras/nodes_sd3.py)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "positive": ("CONDITIONING",),
            "negative": ("CONDITIONING",),
            "control_net": ("CONTROL_NET",),
            "vae": ("VAE",),
            "image": ("IMAGE",),
            **_strength_window(),
        }}

    DEPRECATED = True


class ControlNetInpaintingAliMamaApply(ControlNetApplyAdvanced):
    """Apply an inpainting ControlNet (AliMama's Flux net): the masked image and the mask steer it.

    For a net with a mask input the masked area of ``image`` is blacked out (the mask resized
    bilinearly and rounded) and the kept area (``1 - mask``) goes beside the hint latent; other
    nets get the plain image, as ``ControlNetApplyAdvanced`` with the VAE.
    """

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "positive": ("CONDITIONING",),
            "negative": ("CONDITIONING",),
            "control_net": ("CONTROL_NET",),
            "vae": ("VAE",),
            "image": ("IMAGE",),
            "mask": ("MASK",),
            **_strength_window(),
        }}

    FUNCTION = "apply_inpaint_controlnet"
    CATEGORY = "conditioning/controlnet"

    def apply_inpaint_controlnet(self, positive: list[Any], negative: list[Any], control_net: ControlNetValue,
                                 vae: Any, image: Any, mask: Any, strength: float, start_percent: float,
                                 end_percent: float) -> tuple[list[Any], list[Any]]:
        _check_net(control_net)
        extra: tuple[Any, ...] = ()
        if getattr(control_net.config, "concat_mask", False):
            import torch

            from comfy_notebook.runtime.control_run import resize_hint

            if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3):
                raise NodeError("mask must be a MASK", input_name="mask", expected="a MASK tensor [B, H, W]",
                                received=f"{type(mask).__name__} {tuple(getattr(mask, 'shape', ()))}",
                                fix="connect LoadImage's MASK output (or another mask node) to mask")
            keep = 1.0 - mask.float().cpu().reshape(-1, 1, mask.shape[-2], mask.shape[-1])  # [B, 1, H, W]
            apply = resize_hint(keep, image.shape[2], image.shape[1], "bilinear").round()
            image = image * apply.movedim(1, -1).repeat(1, 1, 1, image.shape[3])
            extra = (keep,)
        return self.apply_controlnet(positive, negative, control_net, image, strength, start_percent,
                                     end_percent, vae=vae, extra_concat=extra)


class SetUnionControlNetType:
    """Choose the control type of a union (ControlNet++) model; "auto" lets the model decide."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"control_net": ("CONTROL_NET",),
                             "type": (["auto", *UNION_CONTROLNET_TYPES],)}}

    RETURN_TYPES = ("CONTROL_NET",)
    FUNCTION = "set_controlnet_type"
    CATEGORY = "conditioning/controlnet"

    def set_controlnet_type(self, control_net: ControlNetValue, type: str) -> tuple[ControlNetValue]:
        _check_net(control_net)
        number = UNION_CONTROLNET_TYPES.get(type, -1)
        return (control_net.with_extra_args(control_type=[number] if number >= 0 else []),)


NODE_CLASS_MAPPINGS = {
    "ControlNetLoader": ControlNetLoader,
    "DiffControlNetLoader": DiffControlNetLoader,
    "ControlNetApply": ControlNetApply,
    "ControlNetApplyAdvanced": ControlNetApplyAdvanced,
    "SetUnionControlNetType": SetUnionControlNetType,
    "ControlNetInpaintingAliMamaApply": ControlNetInpaintingAliMamaApply,
    "ControlNetApplySD3": ControlNetApplySD3,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "ControlNetLoader": "Load ControlNet Model",
    "DiffControlNetLoader": "Load ControlNet Model (diff)",
    "ControlNetApply": "Apply ControlNet (OLD)",
    "ControlNetApplyAdvanced": "Apply ControlNet",
    "SetUnionControlNetType": "SetUnionControlNetType",
    "ControlNetInpaintingAliMamaApply": "ControlNetInpaintingAliMamaApply",
    "ControlNetApplySD3": "Apply Controlnet with VAE",
}
