"""``object_info()`` of the built-in pack against ComfyUI's definitions of the issue-14 classes.

``comfyui_object_info_a125cd8.json`` records, for each class, the inputs (in order, with
category, type and default/min/max/step), outputs and category that ComfyUI's ``INPUT_TYPES`` /
``define_schema`` give at Comfy-Org/ComfyUI@a125cd8 (nodes.py, comfy_extras/nodes_mask.py,
nodes_model_merging*.py, nodes_post_processing.py, nodes_latent.py, nodes_rebatch.py,
nodes_upscale_model.py, nodes_controlnet.py, nodes_hypernetwork.py, nodes_custom_sampler.py).
Combos listing a models folder are recorded as ``FILES:<folder>`` (their options depend on the
installation); KSamplerSelect's sampler list as ``SAMPLER_NAMES``.  Classes of the table the pack
does not have yet are skipped; those this branch added must all be present.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from comfy_notebook._session import Session
from comfy_notebook.nodes import register_builtins

TABLE = json.loads((Path(__file__).parent / "comfyui_object_info_a125cd8.json").read_text())

OURS = {
    "UpscaleModelLoader", "ImageUpscaleWithModel", "ImageScaleToTotalPixels", "LatentUpscaleBy",
    "ModelMergeSimple", "ModelMergeBlocks", "ModelMergeSubtract", "ModelMergeAdd", "ModelMergeSD1",
    "ModelMergeSDXL", "CLIPMergeSimple", "CLIPMergeSubtract", "CLIPMergeAdd", "CheckpointSave",
    "ImageCompositeMasked", "ImageBlend", "ImageBlur", "ImageSharpen", "ImageQuantize",
    "MaskToImage", "ImageToMask", "SolidMask", "InvertMask", "CropMask", "MaskComposite",
    "FeatherMask", "GrowMask", "ThresholdMask", "LatentAdd", "LatentSubtract", "LatentMultiply",
    "LatentInterpolate", "LatentBatch", "LatentCrop", "LatentFlip", "LatentRotate",
    "RebatchLatents", "RebatchImages", "ConditioningSetAreaStrength", "CLIPVisionLoader",
    "CLIPVisionEncode", "unCLIPConditioning", "unCLIPCheckpointLoader", "HypernetworkLoader", "GLIGENLoader",
    "GLIGENTextBoxApply", "StyleModelLoader", "StyleModelApply",
}


@pytest.fixture(scope="module")
def info() -> dict[str, Any]:
    s = Session()
    register_builtins(s)
    return s.registry.object_info()


def test_table_covers_this_branchs_nodes(info: dict[str, Any]) -> None:
    assert set(TABLE) >= OURS
    assert set(info) >= OURS, sorted(OURS - set(info))


@pytest.mark.parametrize("class_type", sorted(TABLE))
def test_inputs_outputs_and_category_match_comfyui(info: dict[str, Any], class_type: str) -> None:
    if class_type not in info:
        pytest.skip(f"{class_type} is not in the built-in pack yet")
    ref, ours = TABLE[class_type], info[class_type]
    order = [(cat, name) for cat in ("required", "optional") for name in ours["input_order"].get(cat, [])]
    assert order == [(spec["category"], name) for name, spec in ref["input"]]
    for name, spec in ref["input"]:
        entry = ours["input"][spec["category"]][name]
        kind, opts = entry[0], (entry[1] if len(entry) > 1 else {})
        want = spec["type"]
        if isinstance(want, str) and (want.startswith("FILES:") or want == "SAMPLER_NAMES"):
            assert isinstance(kind, list), f"{name}: expected a combo, found {kind!r}"
        else:
            assert kind == want, f"{class_type}.{name}: type {kind!r} != ComfyUI's {want!r}"
        for key in ("default", "min", "max", "step"):
            if key in spec:
                assert opts.get(key) == spec[key], f"{class_type}.{name}.{key}: {opts.get(key)!r} != {spec[key]!r}"
    assert ours["output"] == ref["output"]
    assert ours["category"] == ref["category"]
