"""CONTROL_NET values: ControlNet and T2I-Adapter files, read and registered with the model manager.

What ComfyUI's ``comfy/controlnet.py: load_controlnet_state_dict`` (a125cd8) accepts for the SD
UNet families, in our words:

- original ControlNets, keys ``control_model.*`` (``.pth`` / ``.safetensors`` from lllyasviel) or
  bare (``zero_convs.0.0.weight`` ...); "diff" ControlNets (a ``difference`` key) hold weights
  relative to a base UNet, which ``DiffControlNetLoader`` adds back;
- diffusers single-file ControlNets (``controlnet_cond_embedding.*``, ``controlnet_down_blocks.*``),
  renamed with the same diffusers -> LDM UNet table LoRA loading uses plus the ControlNet's own
  parts (:func:`convert_diffusers_controlnet`);
- T2I-Adapters (full, XL, light; original or diffusers keys);
- control-LoRA files (Stability's ``control-lora-*``: a ``lora_controlnet`` marker, the hint
  block and zero convs in full, low-rank ``.up`` / ``.down`` deltas on the UNet's weights): the
  ControlNet is assembled per sampling run from the sampling model's UNet
  (:func:`build_control_lora`); the file is read lazily, the value holds no weights.

- transformer (DiT) ControlNets, read by the caller's ``read`` (the families know their layouts:
  Flux's XLabs, Mistoline and InstantX / diffusers files, ``families/flux_control.py``), kind
  ``"dit_controlnet"``; their config says whether the hint goes through the VAE (a latent format)
  and whether a mask channel rides with it.

A file whose name ends in ``_shuffle`` (``_shuffle_fp16``) pools its residuals globally, as
ComfyUI does for the shuffle ControlNet.  Union (ControlNet++) files (diffusers keys plus
``task_embedding``, ``transformer_layes``, ...) load as ComfyUI loads them; their control type
comes from ``SetUnionControlNetType`` (``extra_args["control_type"]``).
"""

from __future__ import annotations

import os
import re
import threading
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from comfy_notebook._units import human_bytes
from comfy_notebook.errors import UnsupportedModelError
from comfy_notebook.runtime.manager import ModelManager
from comfy_notebook.runtime.patches import ModelRef

__all__ = ["ControlNetValue", "build_control_lora", "convert_diffusers_controlnet", "diffusers_controlnet_modules", "load_controlnet_value",
           "read_control_file"]

_lock = threading.Lock()
_PTH_PREFIX = "control_model."
_UNION_KEYS = ("task_embedding", "transformer_layes.", "spatial_ch_projs.", "control_add_embedding.")


@dataclass(frozen=True, eq=False)
class ControlNetValue:
    """A CONTROL_NET: a managed ControlNet or T2I-Adapter plus how its hints are prepared.

    Like MODEL values it never holds weights (the manager does), so a cached value stays valid
    after an unload.  ``extra_args`` carries per-use options (``SetUnionControlNetType``).
    """

    ref: ModelRef | None  # None for a control-LoRA (built from the sampling model's UNet)
    manager: ModelManager = field(repr=False)
    kind: str = "controlnet"  # "controlnet" | "t2i_adapter" | "control_lora"
    family: str | None = None  # the model family it was made for, when its shapes say
    config: Any = field(default=None, repr=False)
    global_average_pooling: bool = False
    compression_ratio: int = 8
    upscale_algorithm: str = "nearest-exact"
    extra_args: Mapping[str, Any] = field(default_factory=dict)

    def with_extra_args(self, **args: Any) -> ControlNetValue:
        """A copy with more per-use options (the weights stay shared)."""
        return replace(self, extra_args={**self.extra_args, **args})

    source: str = ""

    def summary(self) -> str:
        """One line: kind, family, file, dtype, where it lives, bytes."""
        if self.ref is None:
            return f"CONTROL_NET control-LoRA '{os.path.basename(self.source)}' (built on the model at sampling)"
        base = self.ref.base
        dtype = str(base.dtype).replace("torch.", "") if base.dtype is not None else "?"
        what = "T2I-Adapter" if self.kind == "t2i_adapter" else "ControlNet"
        family = f" {self.family}" if self.family else ""
        return f"CONTROL_NET {what}{family} '{base.name}' {dtype} on {base.where} ({human_bytes(base.nbytes)})"

    def __repr__(self) -> str:
        return f"<{self.summary()}>"


# -- diffusers -> original names --------------------------------------------------------------

def _diffusers_layout(sd: Mapping[str, Any]) -> Any:
    """The UNet block layout of a diffusers ControlNet, counted from its keys."""
    from comfy_notebook.runtime.lora import UNetLayout

    def count(pattern: str) -> int:
        rx = re.compile(pattern)
        return len({m.group(1) for k in sd if (m := rx.match(k))})

    levels = count(r"down_blocks\.(\d+)\.")
    nrb = count(r"down_blocks\.0\.resnets\.(\d+)\.")
    depth = tuple(count(rf"down_blocks\.{lv}\.attentions\.0\.transformer_blocks\.(\d+)\.") for lv in range(levels))
    mid = count(r"mid_block\.attentions\.0\.transformer_blocks\.(\d+)\.")
    return UNetLayout(levels=levels, num_res_blocks=nrb, depth=depth, depth_output=depth, depth_middle=mid)


def diffusers_controlnet_modules(layout: Any, hint_blocks: int = 6) -> dict[str, str]:
    """diffusers ControlNet module -> original module, for a UNet ``layout`` (``runtime.lora.UNetLayout``).

    The UNet part uses the diffusers -> LDM UNet table (``runtime.lora.unet_diffusers_to_ldm``);
    the ControlNet's own parts map as ComfyUI's loader maps them: ``controlnet_down_blocks.N`` ->
    ``zero_convs.N.0``, ``controlnet_mid_block`` -> ``middle_block_out.0``,
    ``controlnet_cond_embedding.{conv_in, blocks.K, conv_out}`` -> ``input_hint_block.{0, 2K+2, last}``,
    and the label embedding's ``add_embedding.linear_{1,2}`` -> ``label_emb.0.{0,2}``.
    """
    from comfy_notebook.runtime.lora import unet_diffusers_to_ldm

    modules = {k: v for k, v in unet_diffusers_to_ldm(layout).items()
               if v.startswith(("time_embed.", "input_blocks.", "middle_block."))}
    modules |= {"controlnet_mid_block": "middle_block_out.0",
                "controlnet_cond_embedding.conv_in": "input_hint_block.0",
                "controlnet_cond_embedding.conv_out": f"input_hint_block.{2 * hint_blocks + 2}",
                "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}
    for k in range(hint_blocks):
        modules[f"controlnet_cond_embedding.blocks.{k}"] = f"input_hint_block.{2 * k + 2}"
    n_inputs = 1 + layout.levels * (layout.num_res_blocks + 1) - 1
    for n in range(n_inputs):
        modules[f"controlnet_down_blocks.{n}"] = f"zero_convs.{n}.0"
    return modules


def convert_diffusers_controlnet(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """diffusers ``ControlNetModel`` keys -> original (``cldm``) keys (see :func:`diffusers_controlnet_modules`)."""
    hint_blocks = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("controlnet_cond_embedding.blocks."))
    modules = diffusers_controlnet_modules(_diffusers_layout(sd), hint_blocks)
    out: dict[str, Tensor] = {}
    unknown = []
    for key, value in sd.items():
        module, _, leaf = key.rpartition(".")
        if module in modules:
            out[f"{modules[module]}.{leaf}"] = value
        elif key.startswith(_UNION_KEYS):  # union (ControlNet++) parts keep their names
            out[key.replace(".attn.in_proj_", ".attn.in_proj.")] = value
        else:
            unknown.append(key)
    if unknown:
        raise UnsupportedModelError(
            f"diffusers ControlNet with {len(unknown)} keys outside the SD ControlNet layout "
            f"({', '.join(unknown[:6])}{', ...' if len(unknown) > 6 else ''}). Fix: use a UNet "
            "ControlNet in the original or diffusers layout")
    return out


# -- reading files ----------------------------------------------------------------------------

# ``describe(kind, tensors) -> (family name or None, config)``: the model family a control file
# was made for and its architecture's sizes (the head rule is a family fact); see nodes/controlnet.
Describe = Callable[[str, Mapping[str, Tensor]], tuple[str | None, Any]]


# ``read(sd) -> (kind, tensors) | None``: the layouts only a family knows (DiT ControlNets).
Read = Callable[[Mapping[str, Tensor]], "tuple[str, dict[str, Tensor]] | None"]


def read_control_file(sd: Mapping[str, Tensor], source: str = "",
                      read: Read | None = None) -> tuple[str, dict[str, Tensor]]:
    """``(kind, original-layout state dict)`` of a ControlNet / T2I-Adapter / control-LoRA file.

    ``kind`` is ``"controlnet"``, ``"t2i_adapter"``, ``"control_lora"`` (whose tensors are read
    at sampling time: an empty dict here) or what ``read`` (tried first) says (``"dit_controlnet"``).
    """
    from comfy_notebook.models.t2i_adapter import convert_diffusers_adapter, is_adapter_state_dict

    where = f" {source}" if source else ""
    if read is not None:
        found = read(sd)
        if found is not None:
            return found
    if "lora_controlnet" in sd:
        return "control_lora", {}
    if "controlnet_cond_embedding.conv_in.weight" in sd:
        return "controlnet", convert_diffusers_controlnet(sd)
    if _PTH_PREFIX + "zero_convs.0.0.weight" in sd:
        tensors = {k[len(_PTH_PREFIX):]: v for k, v in sd.items() if k.startswith(_PTH_PREFIX)}
        if "difference" in sd:
            tensors["difference"] = sd["difference"]
        return "controlnet", tensors
    if "zero_convs.0.0.weight" in sd:
        return "controlnet", dict(sd)
    if is_adapter_state_dict(sd):
        tensors = convert_diffusers_adapter(sd) if "adapter.body.0.resnets.0.block1.weight" in sd else dict(sd)
        return "t2i_adapter", tensors
    keys = list(sd)
    raise UnsupportedModelError(
        f"not a ControlNet or T2I-Adapter file{where}: expected control_model.* / zero_convs.* "
        f"(ControlNet), controlnet_cond_embedding.* (diffusers ControlNet) or conv_in / body.* "
        f"(T2I-Adapter) keys, or a Flux ControlNet's (controlnet_blocks.*); found {len(keys)} keys "
        f"such as {keys[:5]}. Fix: put ControlNet "
        "files in models/controlnet")


def _build(kind: str, tensors: Mapping[str, Tensor], config: Any, dtype: torch.dtype) -> torch.nn.Module:
    """The module on the host, weights assigned from ``tensors`` (strict)."""
    from comfy_notebook.models.controlnet import ControlNetModel
    from comfy_notebook.models.controlnet_flux import FluxControlNet
    from comfy_notebook.models.t2i_adapter import T2IAdapter

    cls = {"controlnet": ControlNetModel, "dit_controlnet": FluxControlNet}.get(kind, T2IAdapter)
    with torch.device("meta"):
        module = cls(config)
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected) - {"difference"})
    if missing or unexpected:
        raise UnsupportedModelError(
            f"{kind} file keys do not match the architecture read from its shapes: missing "
            f"{missing[:6]} ({len(missing)}), unexpected {unexpected[:6]} ({len(unexpected)}). "
            "Fix: use a ControlNet or T2I-Adapter file in one of the supported layouts")
    cast = {k: tensors[k].to(dtype=dtype if tensors[k].is_floating_point() else tensors[k].dtype)
            for k in expected}
    module.load_state_dict(cast, strict=True, assign=True)
    return module.eval().requires_grad_(False)


def _add_base_weights(tensors: dict[str, Tensor], model: Any) -> dict[str, Tensor]:
    """A diff ControlNet's weights plus the base UNet's (with its patches), as ComfyUI's loader."""
    def read(unet: torch.nn.Module) -> dict[str, Tensor]:
        sd = unet.state_dict()
        return {k: sd[k].detach().float().cpu() for k in tensors if k in sd}

    base = model.manager.run(model.ref, read)
    return {k: (v.float() + base[k]).to(v.dtype) if k in base else v for k, v in tensors.items()
            if k != "difference"}


def build_control_lora(source: str, unet: torch.nn.Module, unet_config: Any, device: Any) -> torch.nn.Module:
    """A control-LoRA's ControlNet on ``device``, on the sampling model's UNet (ComfyUI ``ControlLora.pre_run``).

    The architecture is the UNet's encoder; each weight is, in order: the file's full tensor
    (hint block, zero convs, norms, biases), else the UNet's (with its patches) plus the file's
    ``up @ down`` delta when it has one.  Weights without a delta share the UNet's tensors.
    """
    from comfy_notebook.models.controlnet import ControlNetConfig, ControlNetModel
    from comfy_notebook.runtime.loading import open_state_dict

    weights = open_state_dict(source)
    if unet_config is None:
        raise UnsupportedModelError(
            f"control-LoRA {source} needs the sampling model's UNet layout, which this MODEL does not "
            "carry. Fix: load the model with CheckpointLoaderSimple")
    config = ControlNetConfig(unet_config, int(weights["input_hint_block.0.weight"].shape[1]))
    with torch.device("meta"):
        module = ControlNetModel(config)
    base = unet.state_dict()
    dtype = next(unet.parameters()).dtype
    tensors: dict[str, Tensor] = {}
    for key in module.state_dict():
        if key in weights:
            t = weights[key].to(device=device, dtype=dtype)
        elif key in base:
            t = base[key].to(device=device)
            up_key = key.removesuffix(".weight") + ".up"
            if key.endswith(".weight") and up_key in weights:
                up = weights[up_key].to(device=device, dtype=torch.float32).flatten(1)
                down = weights[key.removesuffix(".weight") + ".down"].to(device=device, dtype=torch.float32).flatten(1)
                t = (t.float() + (up @ down).reshape(t.shape)).to(dtype)
        else:
            raise UnsupportedModelError(
                f"control-LoRA {source} does not fit this model: no weight for '{key}' in the file or "
                "the UNet. Fix: use a control-LoRA made for this model's family")
        tensors[key] = t
    module.load_state_dict(tensors, strict=True, assign=True)
    return module.eval().requires_grad_(False)


def load_controlnet_value(manager: ModelManager, path: str | os.PathLike[str], *, describe: Describe,
                          name: str | None = None, model: Any = None, read: Read | None = None) -> ControlNetValue:
    """``ControlNetLoader`` / ``DiffControlNetLoader``: a ControlNet or T2I-Adapter file as CONTROL_NET.

    The weights are registered with ``manager`` under ``"controlnet:<name>"`` (a diff ControlNet
    per base model and patch set) with a factory that rereads the file after an unload; loading
    the same file again reuses them.  ``describe`` says the family and sizes of the file;
    ``read`` reads the layouts only a family knows (see :func:`read_control_file`).
    """
    from comfy_notebook.runtime.loading import open_state_dict

    source = os.fspath(path)
    stem = os.path.splitext(os.path.basename(source))[0]
    kind, tensors = read_control_file(open_state_dict(source), source, read)
    if kind == "control_lora":
        return ControlNetValue(ref=None, manager=manager, kind=kind, family=None, source=source,
                               global_average_pooling=stem.endswith(("_shuffle", "_shuffle_fp16")))
    diff = "difference" in tensors
    if diff and model is None:
        warnings.warn(f"{stem} is a diff ControlNet loaded without a model; it will very likely not work. "
                      "Fix: load it with DiffControlNetLoader and the checkpoint's MODEL", stacklevel=2)
    key = f"controlnet:{name or stem}"
    if diff and model is not None:
        key += f"+{model.ref.base.name}#{hash(model.ref.patches_id) & 0xFFFFFF:x}"
    family, config = describe(kind, tensors)
    dtype = manager.policy.dtype_for("unet", getattr(config, "dtypes", ()))

    def factory() -> torch.nn.Module:
        k, t = read_control_file(open_state_dict(source), source, read)
        c = describe(k, t)[1]
        if "difference" in t:
            t = _add_base_weights(t, model) if model is not None else {a: b for a, b in t.items() if a != "difference"}
        return _build(k, t, c, dtype)

    with _lock:
        if key in manager:
            ref = manager[key].ref(holder=key)
        else:
            if diff:
                tensors = _add_base_weights(tensors, model) if model is not None else {
                    a: b for a, b in tensors.items() if a != "difference"}
            module = _build(kind, tensors, config, dtype)
            ref = manager.register(key, factory, kind="controlnet", source=source, dtype=dtype,
                                   module=module, family=None).ref(holder=key)
    return ControlNetValue(ref=ref, manager=manager, kind=kind, family=family, config=config, source=source,
                           global_average_pooling=stem.endswith(("_shuffle", "_shuffle_fp16")))
