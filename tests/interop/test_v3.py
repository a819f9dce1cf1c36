"""V3 node classes (comfy_api.latest io.ComfyNode) through the one executor, beside V1."""

from __future__ import annotations

import sys

import pytest
import torch

from comfy_notebook.engine.graph import ExecutionBlocker
from comfy_notebook.errors import ValidationError

from .conftest import PACKS


@pytest.fixture
def v3(session):
    reports = session.load_custom_nodes(PACKS / "v3_pack")
    assert reports[0].ok, reports[0].traceback
    session.load_custom_nodes(PACKS / "v1_pack")
    return session, sys.modules["v3_pack"]


def _image(value: float = 0.5) -> dict:
    return {"class_type": "TestSolidImage", "inputs": {"width": 2, "height": 2, "value": value}}


def test_schema_becomes_object_info_with_options_hidden_and_outputs(v3) -> None:
    session, _ = v3
    info = session.registry.object_info("V3Scale")["V3Scale"]
    req = info["input"]["required"]
    assert req["factor"] == ["FLOAT", {"default": 2.0, "min": 0.0, "max": 10.0, "step": 0.5}]
    assert req["mode"][0] == ["mul", "add"] and req["mode"][1]["default"] == "mul"
    assert info["input"]["hidden"] == {"unique_id": ["UNIQUE_ID"]}
    assert info["output"] == ["IMAGE"] and info["output_name"] == ["scaled"]
    assert info["display_name"] == "Scale (V3)" and info["category"] == "test/v3"
    out = session.registry.object_info("V3WhoAmI")["V3WhoAmI"]
    assert out["output_node"] is True
    assert set(out["input"]["hidden"]) == {"unique_id", "prompt", "extra_pnginfo"}


def test_execute_with_defaults_and_cache(v3) -> None:
    session, pack = v3
    prompt = {"1": _image(), "2": {"class_type": "V3Scale", "inputs": {"image": ["1", 0],
                                                                    "factor": 3.0, "mode": "add"}}}
    first = session.run_prompt(prompt, targets=["2"])
    assert torch.equal(first.outputs["2"][0], torch.full((1, 2, 2, 3), 3.5))
    calls = pack.CALLS["scale"]
    assert session.run_prompt(prompt, targets=["2"]).cached == {"1", "2"}
    assert pack.CALLS["scale"] == calls


def test_validate_inputs_and_combo_membership(v3) -> None:
    session, _ = v3
    bad = {"1": _image(), "2": {"class_type": "V3Scale",
                               "inputs": {"image": ["1", 0], "factor": 7.0, "mode": "mul"}}}
    with pytest.raises(ValidationError) as err:
        session.run_prompt(bad, targets=["2"])
    errors = err.value.node_errors["2"]["errors"]
    assert errors[0]["type"] == "custom_validation_failed"
    assert "factor 7 is not allowed" in errors[0]["details"]
    bad["2"]["inputs"].update(factor=1.0, mode="pow")
    with pytest.raises(ValidationError) as err:
        session.run_prompt(bad, targets=["2"])
    assert err.value.node_errors["2"]["errors"][0]["type"] == "value_not_in_list"


def test_lazy_inputs_evaluate_only_the_branch_asked_for(v3) -> None:
    session, pack = v3
    prompt = {
        "1": _image(0.1),
        "2": {"class_type": "V3Expensive", "inputs": {"value": 0.9}},
        "3": {"class_type": "V3LazySwitch", "inputs": {"use_a": True, "a": ["1", 0], "b": ["2", 0]}},
    }
    before = pack.CALLS["expensive"]
    result = session.run_prompt(prompt, targets=["3"])
    assert torch.allclose(result.outputs["3"][0], torch.full((1, 2, 2, 3), 0.1))
    assert "2" not in result.executed and pack.CALLS["expensive"] == before
    prompt["3"]["inputs"]["use_a"] = False
    result = session.run_prompt(prompt, targets=["3"])
    assert "2" in result.executed and pack.CALLS["expensive"] == before + 1


def test_fingerprint_inputs_is_is_changed(v3) -> None:
    session, pack = v3
    prompt = {"1": {"class_type": "V3Fingerprinted", "inputs": {"key": "k"}}}
    cls = pack.Fingerprinted
    cls.VERSION["value"] = 1
    assert session.run_prompt(prompt, targets=["1"]).outputs["1"] == (1,)
    assert session.run_prompt(prompt, targets=["1"]).cached == {"1"}
    cls.VERSION["value"] = 2
    again = session.run_prompt(prompt, targets=["1"])
    assert again.executed == {"1"} and again.outputs["1"] == (2,)


def test_hidden_values_reach_cls_hidden_and_ui_is_recorded(v3) -> None:
    session, _ = v3
    prompt = {"7": {"class_type": "V3WhoAmI", "inputs": {"text": "hello"}}}
    result = session.run_prompt(prompt)
    assert result.outputs["7"] == ("hello from 7 (1 nodes)",)
    assert result.ui["7"] == {"text": ["hello from 7 (1 nodes)"]} or result.ui["7"] == {
        "text": ("hello from 7 (1 nodes)",)}
    from comfy_api.latest import io

    assert io.ComfyNode.hidden is None  # the class itself is never mutated


def test_list_outputs_and_list_inputs(v3) -> None:
    session, _ = v3
    prompt = {"1": {"class_type": "V3Range", "inputs": {"n": 4}},
              "2": {"class_type": "V3Sum", "inputs": {"values": ["1", 0]}}}
    result = session.run_prompt(prompt, targets=["2"])
    assert result.outputs["1"][0] == [0, 1, 2, 3]
    assert result.outputs["2"] == (6,)


def test_expand_runs_the_subgraph(v3) -> None:
    session, _ = v3
    prompt = {"1": _image(0.25), "2": {"class_type": "V3DoubleViaExpand", "inputs": {"image": ["1", 0]}}}
    result = session.run_prompt(prompt, targets=["2"])
    assert torch.equal(result.outputs["2"][0], torch.full((1, 2, 2, 3), 0.5))


def test_block_execution_blocks_downstream(v3) -> None:
    session, _ = v3
    prompt = {"1": _image(), "2": {"class_type": "V3Blocker", "inputs": {"image": ["1", 0], "block": True}},
              "3": {"class_type": "TestInvertImage", "inputs": {"image": ["2", 0]}}}
    result = session.run_prompt(prompt, targets=["3"])
    assert isinstance(result.outputs["2"][0], ExecutionBlocker)
    assert isinstance(result.outputs["3"][0], ExecutionBlocker)  # the V1 node was not called
    prompt["2"]["inputs"]["block"] = False
    result = session.run_prompt(prompt, targets=["3"])
    assert torch.allclose(result.outputs["3"][0], torch.full((1, 2, 2, 3), 0.5))


def test_async_execute(v3) -> None:
    session, _ = v3
    result = session.run_prompt({"1": {"class_type": "V3AsyncAdd", "inputs": {"a": 40, "b": 2}}},
                                targets=["1"])
    assert result.outputs["1"] == (42,)


def test_v3_class_registered_directly_without_a_pack(session) -> None:
    from comfy_notebook.interop.packs import install_shims

    install_shims()
    from comfy_api.latest import io

    class Twice(io.ComfyNode):
        @classmethod
        def define_schema(cls):
            return io.Schema(node_id="Twice", inputs=[io.Int.Input("x", default=2)],
                             outputs=[io.Int.Output()])

        @classmethod
        def execute(cls, x):
            return io.NodeOutput(2 * x)

    session.register({"Twice": Twice})
    assert session.run_prompt({"1": {"class_type": "Twice", "inputs": {"x": 21}}},
                              targets=["1"]).outputs["1"] == (42,)
