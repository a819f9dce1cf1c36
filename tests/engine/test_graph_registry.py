"""Graph API format round trips, GraphBuilder, registry and /object_info."""

from __future__ import annotations

import json

import pytest

from comfy_notebook.engine import BadLink, Graph, GraphBuilder, Link, Registry, validate_node_input
from comfy_notebook.errors import GraphError

API = {
    "3": {"inputs": {"seed": 42, "model": ["4", 0], "sampler": "euler", "sigmas": {"__value__": [1.0, 0.5]}},
          "class_type": "KSampler", "_meta": {"title": "KSampler"}},
    "4": {"inputs": {"ckpt_name": "v1-5.safetensors"}, "class_type": "CheckpointLoaderSimple",
          "_meta": {"title": "Load Checkpoint"}},
    "5": {"inputs": {"bad": [1, 2, 3], "empty": {}}, "class_type": "X"},
}


def test_api_round_trip_is_byte_stable():
    text = json.dumps(API)
    g = Graph.from_json(text)
    assert g.to_json() == text
    assert Graph.from_api(g.to_api()) == g
    assert g["3"].inputs["model"] == Link("4", 0)
    assert g["3"].inputs["sigmas"] == [1.0, 0.5]
    assert g["3"].title == "KSampler"
    assert isinstance(g["5"].inputs["bad"], BadLink)


@pytest.mark.parametrize("bad", [[], "x", {"1": 5}, {"1": {"inputs": {}}}, {"1": {"class_type": "A", "inputs": 3}}])
def test_malformed_api_raises_graph_error(bad):
    with pytest.raises(GraphError):
        Graph.from_api(bad)


def test_graph_builder_prefix_and_finalize():
    g = GraphBuilder(prefix="p.")
    a = g.node("Const", value=1)
    b = g.node("Add", a=a.out(0), b=2)
    assert g.finalize() == {"p.1": {"class_type": "Const", "inputs": {"value": 1}},
                            "p.2": {"class_type": "Add", "inputs": {"a": ["p.1", 0], "b": 2}}}
    assert g.lookup_node("2") is b
    g.remove_node("2")
    assert list(g.build().nodes) == ["p.1"]


def test_registry_object_info(session):
    info = session.registry.object_info("Combo")["Combo"]
    assert info["input"]["required"]["choice"] == [["a", "b"]]
    assert info["input_order"]["required"] == ["choice", "flag", "ratio", "text"]
    assert info["output"] == ["STRING"] and info["output_name"] == ["STRING"] and info["output_is_list"] == [False]
    assert info["output_node"] is True and info["deprecated"] is True
    assert session.registry.object_info("Add")["Add"]["output_name"] == ["sum"]
    json.dumps(session.registry.object_info())
    with pytest.raises(GraphError, match="unknown node class"):
        session.registry["Nope"]


def test_registry_rejects_bad_classes():
    class NoFunction:
        @classmethod
        def INPUT_TYPES(cls):
            return {}
    with pytest.raises(GraphError, match="FUNCTION"):
        Registry().register({"N": NoFunction})


class Any(str):
    def __ne__(self, other):
        return False


@pytest.mark.parametrize(("received", "expected", "ok"), [
    ("IMAGE", "IMAGE", True), ("IMAGE,FLOAT", "FLOAT", True), ("INT", "IMAGE,FLOAT", False),
    ("*", "IMAGE", False), ("IMAGE", "*", False), (Any("*"), "IMAGE", True), ("IMAGE", Any("*"), True),
])
def test_validate_node_input(received, expected, ok):
    assert validate_node_input(received, expected) is ok


def test_validate_node_input_strict():
    assert validate_node_input("IMAGE,FLOAT", "IMAGE,FLOAT,INT", strict=True)
    assert not validate_node_input("IMAGE,MASK", "IMAGE,FLOAT", strict=True)


def test_deferred_pack_loads_on_first_lookup_and_never_replaces_explicit_classes():
    """Session(builtins=True) defers the built-in pack; a class registered meanwhile wins."""
    from comfy_notebook.engine import Registry

    class Mine:
        RETURN_TYPES = ("INT",)
        FUNCTION = "run"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {}}

        def run(self):
            return (1,)

    class Theirs(Mine):
        pass

    loads = []

    def pack(registry):
        loads.append(1)
        registry.register({"Shared": Theirs, "Other": Theirs})

    reg = Registry()
    reg.defer(pack)
    assert loads == [] and reg.deferred
    reg.register({"Shared": Mine})
    assert loads == []  # registering does not load the pack
    assert reg["Shared"].cls is Mine and reg["Other"].cls is Theirs and loads == [1]
    assert not reg.deferred and len(reg) == 2
