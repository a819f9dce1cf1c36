"""Custom node packs on the built-in engine: loading, reports, host modules, real mode."""

from __future__ import annotations

import pytest
import torch

from comfy_notebook.engine.events import NodeMessage, NodeProgress

from .conftest import PACKS


def test_each_pack_is_reported_and_a_failing_one_does_not_stop_the_others(session) -> None:
    reports = session.load_custom_nodes(PACKS)
    by_name = {r.name: r for r in reports}
    assert set(by_name) == {"broken_pack", "host_pack", "v1_pack", "v3_pack"}
    assert by_name["v1_pack"].ok and by_name["v1_pack"].nodes == ("TestSolidImage", "TestInvertImage")
    assert by_name["v1_pack"].web_directory.endswith("v1_pack/js")
    assert by_name["v3_pack"].ok and "V3Scale" in by_name["v3_pack"].nodes
    broken = by_name["broken_pack"]
    assert not broken.ok and broken.missing_module == "comfy.model_management"
    assert broken.needs_comfyui and "Traceback" in broken.traceback
    assert "attach an installation" in str(broken) and "FAILED" in str(reports)
    assert [r.name for r in reports.failed] == ["broken_pack"]
    for name in ("TestSolidImage", "TestInvertImage", "V3Scale", "TestListCheckpoints"):
        assert name in session.registry


def test_missing_path_is_a_clear_error(session, tmp_path) -> None:
    from comfy_notebook.interop.packs import PackLoadError

    with pytest.raises(PackLoadError, match="does not exist"):
        session.load_custom_nodes(tmp_path / "nope")


def test_v1_pack_runs_through_run_prompt_and_caches(session) -> None:
    session.load_custom_nodes(PACKS / "v1_pack")
    prompt = {
        "1": {"class_type": "TestSolidImage", "inputs": {"width": 4, "height": 2, "value": 0.25}},
        "2": {"class_type": "TestInvertImage", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }
    from comfy_notebook.nodes import register_builtins

    register_builtins(session)
    first = session.run_prompt(prompt)
    image, mask = first.outputs["2"]
    assert torch.equal(image, torch.full((1, 2, 4, 3), 0.75)) and mask.shape == (1, 2, 4)
    assert first.ui["3"]["images"][0]["type"] == "temp"
    second = session.run_prompt(prompt)
    assert second.executed == set() and second.cached == {"1", "2", "3"}


def test_host_modules_folder_paths_progress_and_server_messages(session) -> None:
    reports = session.load_custom_nodes(PACKS / "host_pack")
    assert reports[0].ok, reports[0].traceback
    events = []
    session.subscribe(events.append)
    info = session.registry.object_info("TestListCheckpoints")["TestListCheckpoints"]
    assert info["input"]["required"]["ckpt_name"][0] == ["a.safetensors", "sub/b.safetensors"]
    result = session.run_prompt({"1": {"class_type": "TestListCheckpoints",
                                       "inputs": {"ckpt_name": "sub/b.safetensors"}}},
                                targets=["1"])
    path, count = result.outputs["1"]
    assert path.endswith("checkpoints/sub/b.safetensors") and count == 2
    progress = [(e.value, e.total) for e in events if isinstance(e, NodeProgress)]
    assert progress == [(1, 3), (2, 3), (3, 3)]
    messages = [e for e in events if isinstance(e, NodeMessage)]
    assert [(m.node_id, m.event) for m in messages] == [("1", "test.checkpoint")]
    assert messages[0].data == {"node": "1", "path": path}


def test_pack_nodes_in_real_mode(session) -> None:
    from comfy_notebook import use_session
    from comfy_notebook.realmode import node_function

    session.load_custom_nodes(PACKS / "v1_pack")
    use_session(session)
    solid = node_function("TestSolidImage")
    invert = node_function("TestInvertImage")
    image, _mask = invert(solid(2, 2, 0.1))
    assert torch.allclose(image.value, torch.full((1, 2, 2, 3), 0.9))
    again, _ = invert(solid(2, 2, 0.1))
    assert again.value is image.value  # a cache hit returns the stored value
