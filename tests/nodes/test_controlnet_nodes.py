"""The ControlNet nodes' object_info against ComfyUI's definitions (nodes.py and
comfy_extras/nodes_controlnet.py at Comfy-Org/ComfyUI a125cd8, recorded by hand below)."""

from __future__ import annotations

from typing import Any

import pytest

from comfy_notebook.engine.registry import Registry
from comfy_notebook.nodes.controlnet import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

STRENGTH = ["FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01}]
PERCENT = {"min": 0.0, "max": 1.0, "step": 0.001}
UNION = ["auto", "openpose", "depth", "hed/pidi/scribble/ted", "canny/lineart/anime_lineart/mlsd",
         "normal", "segment", "tile", "repaint"]

# class -> (required inputs without combo lists, optional, outputs, output names, category, display, deprecated)
COMFYUI: dict[str, tuple[dict[str, Any], dict[str, Any], list[str], list[str], str, str, bool]] = {
    "ControlNetLoader": ({"control_net_name": "COMBO"}, {}, ["CONTROL_NET"], ["CONTROL_NET"], "loaders",
                         "Load ControlNet Model", False),
    "DiffControlNetLoader": ({"model": ["MODEL"], "control_net_name": "COMBO"}, {}, ["CONTROL_NET"],
                             ["CONTROL_NET"], "loaders", "Load ControlNet Model (diff)", False),
    "ControlNetApply": ({"conditioning": ["CONDITIONING"], "control_net": ["CONTROL_NET"], "image": ["IMAGE"],
                         "strength": STRENGTH}, {}, ["CONDITIONING"], ["CONDITIONING"],
                        "conditioning/controlnet", "Apply ControlNet (OLD)", True),
    "ControlNetApplyAdvanced": ({"positive": ["CONDITIONING"], "negative": ["CONDITIONING"],
                                 "control_net": ["CONTROL_NET"], "image": ["IMAGE"], "strength": STRENGTH,
                                 "start_percent": ["FLOAT", {"default": 0.0, **PERCENT}],
                                 "end_percent": ["FLOAT", {"default": 1.0, **PERCENT}]},
                                {"vae": ["VAE"]}, ["CONDITIONING", "CONDITIONING"], ["positive", "negative"],
                                "conditioning/controlnet", "Apply ControlNet", False),
    "SetUnionControlNetType": ({"control_net": ["CONTROL_NET"], "type": [UNION]}, {}, ["CONTROL_NET"],
                               ["CONTROL_NET"], "conditioning/controlnet", "SetUnionControlNetType", False),
    "ControlNetInpaintingAliMamaApply": (
        {"positive": ["CONDITIONING"], "negative": ["CONDITIONING"], "control_net": ["CONTROL_NET"],
         "vae": ["VAE"], "image": ["IMAGE"], "mask": ["MASK"], "strength": STRENGTH,
         "start_percent": ["FLOAT", {"default": 0.0, **PERCENT}], "end_percent": ["FLOAT", {"default": 1.0, **PERCENT}]},
        {}, ["CONDITIONING", "CONDITIONING"], ["positive", "negative"], "conditioning/controlnet",
        "ControlNetInpaintingAliMamaApply", False),
    # comfy_extras/nodes_sd3.py (a V3 node: outputs named by their display names)
    "ControlNetApplySD3": (
        {"positive": ["CONDITIONING"], "negative": ["CONDITIONING"], "control_net": ["CONTROL_NET"],
         "vae": ["VAE"], "image": ["IMAGE"], "strength": STRENGTH,
         "start_percent": ["FLOAT", {"default": 0.0, **PERCENT}], "end_percent": ["FLOAT", {"default": 1.0, **PERCENT}]},
        {}, ["CONDITIONING", "CONDITIONING"], ["positive", "negative"], "conditioning/controlnet",
        "Apply Controlnet with VAE", True),
}


@pytest.mark.parametrize("name", sorted(COMFYUI))
def test_object_info_matches_comfyui(name: str) -> None:
    reg = Registry()
    reg.register({name: NODE_CLASS_MAPPINGS[name]}, display_names=NODE_DISPLAY_NAME_MAPPINGS)
    info = reg.object_info(name)[name]
    required, optional, outputs, names, category, display, deprecated = COMFYUI[name]
    got = info["input"]["required"]
    assert list(got) == list(required) and info["input_order"]["required"] == list(required)
    for k, want in required.items():
        if want == "COMBO":
            assert isinstance(got[k][0], list)  # the controlnet folder listing
        else:
            assert list(got[k]) == want, k
    assert {k: list(v) for k, v in info["input"].get("optional", {}).items()} == optional
    assert info["output"] == outputs and info["output_name"] == names
    assert info["category"] == category and info["display_name"] == display
    assert bool(info.get("deprecated", False)) == deprecated


def test_describe_reads_the_family_and_head_rule_from_shapes():
    import dataclasses

    import torch

    from comfy_notebook.families.control import describe_control
    from comfy_notebook.models.controlnet import ControlNetConfig, ControlNetModel
    from comfy_notebook.models.unet import UNetConfig

    sd15 = dataclasses.replace(UNetConfig.sd15(), channel_mult=(1, 2), transformer_depth=(1, 1))
    cases = {"sd1": sd15,
             "sd2": dataclasses.replace(sd15, context_dim=1024, num_heads=-1, num_head_channels=64),
             "sdxl": dataclasses.replace(sd15, context_dim=2048, num_heads=-1, num_head_channels=64,
                                         adm_in_channels=2816, use_linear_in_transformer=True)}
    for name, cfg in cases.items():
        with torch.device("meta"):
            sd = ControlNetModel(ControlNetConfig(cfg)).state_dict()
        family, config = describe_control("controlnet", sd)
        assert family == name and config.unet == cfg
