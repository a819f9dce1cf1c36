"""API <-> UI workflow conversion and PNG metadata reading (ComfyUI formats)."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from comfy_notebook.engine import Registry
from comfy_notebook.nodes.image_io import NODE_CLASS_MAPPINGS as IO_NODES
from comfy_notebook.nodes.latent import NODE_CLASS_MAPPINGS as LATENT_NODES
from comfy_notebook.pnginfo import (
    MetadataError,
    api_to_workflow,
    png_text_chunks,
    read_prompt,
    read_workflow,
    workflow_to_api,
)

# ComfyUI's default prompt (shared/fixtures/default_txt2img_api.json, packaged with the demo).
FIXTURE = Path(__file__).parents[1] / "comfy_notebook" / "data" / "default_txt2img_api.json"


def _node(inputs: dict[str, Any], returns: tuple[str, ...], names: tuple[str, ...] | None = None) -> type:
    """A stand-in node class with ComfyUI's declared inputs (behaviour is not needed here)."""
    attrs: dict[str, Any] = {
        "INPUT_TYPES": classmethod(lambda cls: {"required": inputs}),
        "RETURN_TYPES": returns,
        "FUNCTION": "run",
        "run": lambda self, **kw: (None,) * len(returns),
    }
    if names:
        attrs["RETURN_NAMES"] = names
    return type("Node", (), attrs)


SAMPLERS = ["euler", "euler_ancestral", "dpmpp_2m"]
SCHEDULERS = ["normal", "karras"]


@pytest.fixture
def registry() -> Registry:
    reg = Registry()
    reg.register(
        {
            "CheckpointLoaderSimple": _node(
                {"ckpt_name": (["v1-5-pruned-emaonly.safetensors"],)}, ("MODEL", "CLIP", "VAE")
            ),
            "CLIPTextEncode": _node(
                {"text": ("STRING", {"multiline": True}), "clip": ("CLIP",)}, ("CONDITIONING",)
            ),
            "KSampler": _node(
                {
                    "model": ("MODEL",),
                    "seed": ("INT", {"default": 0, "min": 0, "max": 2**64 - 1,
                                     "control_after_generate": True}),
                    "steps": ("INT", {"default": 20}),
                    "cfg": ("FLOAT", {"default": 8.0}),
                    "sampler_name": (SAMPLERS,),
                    "scheduler": (SCHEDULERS,),
                    "positive": ("CONDITIONING",),
                    "negative": ("CONDITIONING",),
                    "latent_image": ("LATENT",),
                    "denoise": ("FLOAT", {"default": 1.0}),
                },
                ("LATENT",),
            ),
            "VAEDecode": _node({"samples": ("LATENT",), "vae": ("VAE",)}, ("IMAGE",)),
            "Lister": _node({"values": ("STRING", {"default": ""}), "n": ("INT", {"forceInput": True})},
                            ("STRING",)),
        },
        {"CLIPTextEncode": "CLIP Text Encode (Prompt)", "CheckpointLoaderSimple": "Load Checkpoint"},
    )
    reg.register(LATENT_NODES, {"EmptyLatentImage": "Empty Latent Image"})
    reg.register(IO_NODES, {"SaveImage": "Save Image"})
    return reg


def test_default_prompt_to_workflow_shape(registry: Registry) -> None:
    api = json.loads(FIXTURE.read_text())
    wf = api_to_workflow(api, registry)
    assert set(wf) == {"last_node_id", "last_link_id", "nodes", "links", "groups", "config",
                       "extra", "version"}
    assert wf["version"] == 0.4 and wf["last_node_id"] == 9
    nodes = {n["id"]: n for n in wf["nodes"]}
    assert sorted(nodes) == [3, 4, 5, 6, 7, 8, 9]
    # 4 KSampler inputs + 2 clip + 2 VAEDecode + 1 SaveImage
    assert len(wf["links"]) == wf["last_link_id"] == 9
    ks = nodes[3]
    assert ks["widgets_values"] == [156680208700286, "fixed", 20, 8, "euler", "normal", 1]
    assert [i["name"] for i in ks["inputs"]] == ["model", "positive", "negative", "latent_image"]
    assert ks["outputs"][0]["type"] == "LATENT" and len(ks["outputs"][0]["links"]) == 1
    assert nodes[4]["outputs"][1]["name"] == "CLIP" and len(nodes[4]["outputs"][1]["links"]) == 2
    assert nodes[5]["widgets_values"] == [512, 512, 1]
    assert nodes[9]["widgets_values"] == ["ComfyUI"]
    assert nodes[6]["title"] == "CLIP Text Encode (Prompt)"
    # every link is [id, src, src_slot, dst, dst_slot, type] and matches both ends
    for link_id, src, src_slot, dst, dst_slot, typ in wf["links"]:
        assert nodes[dst]["inputs"][dst_slot]["link"] == link_id
        assert link_id in nodes[src]["outputs"][src_slot]["links"]
        assert nodes[src]["outputs"][src_slot]["type"] == typ
    # layout: loaders left of the sampler, sampler left of the decoder, decoder left of save
    x = {i: n["pos"][0] for i, n in nodes.items()}
    assert x[4] < x[6] < x[3] < x[8] < x[9] and x[5] < x[3]
    assert sorted(n["order"] for n in nodes.values()) == list(range(7))
    assert nodes[4]["order"] < nodes[6]["order"] < nodes[3]["order"] < nodes[9]["order"]
    assert json.loads(json.dumps(wf)) == wf  # plain JSON


def test_default_prompt_round_trip(registry: Registry) -> None:
    api = json.loads(FIXTURE.read_text())
    assert workflow_to_api(api_to_workflow(api, registry), registry) == api


def test_round_trip_with_odd_ids_lists_unknown_classes_and_linked_widgets(registry: Registry) -> None:
    api = {
        "EmptyLatentImage.0": {"class_type": "EmptyLatentImage",
                               "inputs": {"width": 64, "height": 64, "batch_size": 2}},
        "7": {"class_type": "Lister", "inputs": {"values": {"__value__": ["a", "b"]},
                                                 "n": ["x", 0]}},
        "x": {"class_type": "NotRegistered", "inputs": {"size": 3, "opts": {"__value__": [1, 2]},
                                                        "src": ["EmptyLatentImage.0", 0]}},
        "5": {"class_type": "LatentUpscale",  # a widget input fed by a link
              "inputs": {"samples": ["EmptyLatentImage.0", 0], "upscale_method": "bislerp",
                         "width": ["x", 1], "height": 128, "crop": "center"}},
    }
    wf = api_to_workflow(api, registry)
    ids = sorted(n["id"] for n in wf["nodes"])
    assert ids == [5, 7, 8, 9]  # numeric ids kept, others renumbered after the largest
    up = next(n for n in wf["nodes"] if n["id"] == 5)
    width_socket = next(s for s in up["inputs"] if s["name"] == "width")
    assert width_socket["widget"] == {"name": "width"} and width_socket["link"] is not None
    assert up["widgets_values"] == ["bislerp", 512, 128, "center"]  # linked widget keeps a value
    lister = next(n for n in wf["nodes"] if n["id"] == 7)
    assert lister["widgets_values"] == [["a", "b"]]
    back = workflow_to_api(wf, registry)
    expected = copy.deepcopy(api)
    for node in expected.values():
        spec = registry.get(node["class_type"])
        node["_meta"] = {"title": spec.display_name if spec else node["class_type"]}
    assert back == expected


def _ui_node(nid: int, typ: str, inputs: list[dict[str, Any]], widgets: list[Any],
             outputs: list[str] = (), mode: int = 0, order: int = 0) -> dict[str, Any]:
    return {"id": nid, "type": typ, "pos": [0, 0], "size": [100, 100], "flags": {}, "order": order,
            "mode": mode, "inputs": inputs,
            "outputs": [{"name": o, "type": o, "links": [], "slot_index": k}
                        for k, o in enumerate(outputs)],
            "properties": {}, "widgets_values": widgets}


def test_workflow_from_comfyui_with_ui_only_muted_and_bypassed_nodes(registry: Registry) -> None:
    """A hand-written ComfyUI-style workflow exercising the conversion rules."""
    nodes = [
        _ui_node(1, "EmptyLatentImage", [], [256, 256, 1], ["LATENT"], order=0),
        _ui_node(2, "Reroute", [{"name": "", "type": "*", "link": 1}], [], ["LATENT"], order=1),
        _ui_node(3, "LatentUpscaleBy", [{"name": "samples", "type": "LATENT", "link": 2}],
                 ["bilinear", 2.0], ["LATENT"], mode=4, order=2),  # bypassed: passes its input on
        _ui_node(4, "PrimitiveNode", [], [768, "fixed"], ["INT"], order=3),
        _ui_node(5, "LatentUpscale",
                 [{"name": "samples", "type": "LATENT", "link": 3},
                  {"name": "width", "type": "INT", "link": 4, "widget": {"name": "width"}}],
                 ["nearest-exact", 512, 640, "disabled"], ["LATENT"], order=4),
        _ui_node(6, "Note", [], ["just a note"], order=5),
        _ui_node(7, "RepeatLatentBatch", [{"name": "samples", "type": "LATENT", "link": 5}],
                 [3], ["LATENT"], mode=2, order=6),  # muted: left out
        _ui_node(8, "SetLatentNoiseMask",
                 [{"name": "samples", "type": "LATENT", "link": 6},
                  {"name": "mask", "type": "MASK", "link": None}], [], ["LATENT"], order=7),
        _ui_node(9, "LatentFromBatch", [{"name": "samples", "type": "LATENT", "link": 7}],
                 [0, 1], ["LATENT"], order=8),
    ]
    nodes[4]["title"] = "My upscale"
    links = [
        [1, 1, 0, 2, 0, "*"], [2, 2, 0, 3, 0, "LATENT"], [3, 3, 0, 5, 0, "LATENT"],
        [4, 4, 0, 5, 1, "INT"], [5, 5, 0, 7, 0, "LATENT"], [6, 7, 0, 8, 0, "LATENT"],
        {"id": 7, "origin_id": 5, "origin_slot": 0, "target_id": 9, "target_slot": 0,
         "type": "LATENT"},  # schema-1 style link object
    ]
    wf = {"last_node_id": 9, "last_link_id": 7, "nodes": nodes, "links": links, "groups": [],
          "config": {}, "extra": {}, "version": 0.4}
    api = workflow_to_api(wf, registry)
    assert api == {
        "1": {"inputs": {"width": 256, "height": 256, "batch_size": 1},
              "class_type": "EmptyLatentImage", "_meta": {"title": "Empty Latent Image"}},
        "5": {"inputs": {"samples": ["1", 0], "upscale_method": "nearest-exact", "width": 768,
                         "height": 640, "crop": "disabled"},
              "class_type": "LatentUpscale", "_meta": {"title": "My upscale"}},
        "8": {"inputs": {}, "class_type": "SetLatentNoiseMask",
              "_meta": {"title": "SetLatentNoiseMask"}},
        "9": {"inputs": {"samples": ["5", 0], "batch_index": 0, "length": 1},
              "class_type": "LatentFromBatch", "_meta": {"title": "LatentFromBatch"}},
    }
    wf["nodes"].append(_ui_node(10, "SomeCustomNode", [], [1, 2]))
    with pytest.raises(MetadataError, match="SomeCustomNode"):
        workflow_to_api(wf, registry)


def test_seed_without_flag_still_has_control_value(registry: Registry) -> None:
    reg = Registry()
    reg.register({"Old": _node({"noise_seed": ("INT", {"default": 0}), "x": ("FLOAT",)}, ())})
    wf = api_to_workflow({"1": {"class_type": "Old", "inputs": {"noise_seed": 5, "x": 0.5}}}, reg)
    assert wf["nodes"][0]["widgets_values"] == [5, "fixed", 0.5]
    assert workflow_to_api(wf, reg)["1"]["inputs"] == {"noise_seed": 5, "x": 0.5}


def test_read_prompt_and_errors(tmp_path: Path, registry: Registry) -> None:
    api = json.loads(FIXTURE.read_text())
    chunks = png_text_chunks(api, {"extra": [1, 2]}, registry)
    assert list(chunks) == ["prompt", "workflow", "extra"]
    meta = PngInfo()
    for k, v in chunks.items():
        meta.add_text(k, v)
    path = tmp_path / "a.png"
    Image.new("RGB", (2, 2)).save(path, pnginfo=meta)
    assert read_prompt(path) == api
    assert read_prompt(io.BytesIO(path.read_bytes())) == api
    assert workflow_to_api(read_workflow(path), registry) == api
    plain = tmp_path / "plain.png"
    Image.new("RGB", (2, 2)).save(plain)
    with pytest.raises(MetadataError, match="no 'prompt' text chunk"):
        read_prompt(plain)
    bad = PngInfo()
    bad.add_text("prompt", "{not json")
    Image.new("RGB", (2, 2)).save(tmp_path / "bad.png", pnginfo=bad)
    with pytest.raises(MetadataError, match="not valid JSON"):
        read_prompt(tmp_path / "bad.png")
    # a workflow given by the caller (the web UI) is stored as it is, not regenerated
    assert json.loads(png_text_chunks(api, {"workflow": {"mine": 1}})["workflow"]) == {"mine": 1}
    # non-JSON prompt values are left out rather than failing the save
    assert "prompt" not in png_text_chunks({"1": {"inputs": {"x": object()}}}, None)


def test_top_level_read_prompt_uses_the_current_session(tmp_path: Path, registry: Registry) -> None:
    import comfy_notebook

    path = tmp_path / "p.png"
    api = {"1": {"class_type": "Anything", "inputs": {}}}
    meta = PngInfo()
    meta.add_text("prompt", json.dumps(api))
    Image.new("RGB", (4, 4)).save(path, pnginfo=meta)
    assert comfy_notebook.read_prompt(path) == api
    assert comfy_notebook.read_prompt(path, registry) == api
