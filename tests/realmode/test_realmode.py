"""Real-mode node calls: caching, key equality with the engine, arguments, errors, virtual mode."""

from __future__ import annotations

import json

import pytest
import torch

from comfy_notebook.errors import ExecutionInterrupted
from comfy_notebook.realmode import (
    Handle,
    NodeCallError,
    NodeOutput,
    Workflow,
    begin_cell,
    end_cell,
    node_function,
    state,
)


def test_rerun_executes_nothing_and_seed_change_reruns_downstream_only(session, nodes, calls, t2i):
    first = t2i(nodes, seed=42)
    assert calls == ["Loader", "Encode", "Encode", "Empty", "Sampler", "Decode", "Save"]
    calls.clear()
    again = t2i(nodes, seed=42)
    assert calls == []
    assert again.signature == first.signature
    assert torch.equal(again.value, first.value)
    t2i(nodes, seed=7)
    assert calls == ["Sampler", "Decode", "Save"]


def test_fast_keys_equal_engine_keys_so_exported_prompt_is_fully_cached(session, nodes, calls, t2i):
    t2i(nodes)
    save_handle = state(session).cell_outputs[-1]
    api = save_handle.to_api()
    assert [api[k]["class_type"] for k in sorted(api, key=int)] == [
        "Loader", "Encode", "Encode", "Empty", "Sampler", "Decode", "Save"]
    calls.clear()
    result = session.run_prompt(json.loads(json.dumps(api)))
    assert result.executed == set()
    assert result.cached == set(api)
    assert calls == []
    # and each real-mode handle carries the engine's key for its node
    assert result.signatures["7"] == save_handle.signature


def test_one_output_is_a_handle_several_unpack(session, nodes):
    model, clip, vae = nodes.Loader("a.safetensors")
    assert all(isinstance(h, Handle) for h in (model, clip, vae))
    assert (model.slot, clip.slot, vae.slot) == (0, 1, 2)
    assert model.value == {"model": "a.safetensors"} and vae.type == "VAE"
    latent = nodes.Empty(16, 16, 2)
    assert isinstance(latent, Handle) and latent.value["samples"].shape == (2, 4, 2, 2)


def test_keywords_defaults_enum_and_bool(session, nodes, calls, ckpt_enum):
    by_enum = nodes.Loader(ckpt_enum.b)[0]
    assert by_enum.value == {"model": "b.safetensors"}
    latent = nodes.Empty()  # defaults 16x16x1
    assert latent.node.inputs == {"width": 16, "height": 16, "batch_size": 1}
    model, clip, _vae = nodes.Loader(ckpt_name="a.safetensors")
    pos = nodes.Encode(clip=clip, text="x")
    on = nodes.Sampler(model, 1, 2, pos, pos, latent, True)
    assert on.node.inputs["add_noise"] == "enable"
    off = nodes.Sampler(model, 1, 2, pos, pos, latent, add_noise=False)
    assert off.node.inputs["add_noise"] == "disable"
    assert not torch.equal(on.value["samples"], off.value["samples"])
    assert torch.equal(off.value["samples"], nodes.Sampler(model, 1, 2, pos, pos, latent, add_noise="disable").value["samples"])


def test_argument_errors_name_node_input_expected(session, nodes):
    with pytest.raises(NodeCallError, match=r"\(Encode\) input 'clip': required input is missing; expected a CLIP value"):
        nodes.Encode("text only")
    with pytest.raises(NodeCallError, match=r"\(Empty\) input 'depth': is not an input of this node"):
        nodes.Empty(depth=3)
    with pytest.raises(NodeCallError, match=r"takes 3 inputs but 4 positional"):
        nodes.Empty(1, 2, 3, 4)


def test_validation_error_is_one_message_with_expected_and_received(session, nodes):
    with pytest.raises(NodeCallError) as info:
        nodes.Loader("c.safetensors")
    text = str(info.value)
    assert "(Loader) input 'ckpt_name'" in text
    assert "a.safetensors" in text and "'c.safetensors'" in text
    assert "\n" not in text
    with pytest.raises(NodeCallError, match=r"\(Empty\) input 'width'.*received 4"):
        nodes.Empty(4, 16, 1)


def test_node_failure_names_node_and_keeps_traceback(session, nodes, calls):
    image = nodes.Scale(torch.ones(1, 2, 2, 3), 2.0)
    with pytest.raises(NodeCallError) as info:
        nodes.Scale(image, -1.0)
    assert str(info.value).startswith("(Scale): failed: ValueError: factor must not be negative")
    assert "Traceback" in info.value.traceback_text and "def scale" not in str(info.value)
    assert isinstance(info.value.__cause__, ValueError)
    # the session keeps working; the earlier result is still cached
    calls.clear()
    nodes.Scale(image, 0.5)
    assert calls == ["Scale"]


def test_raw_tensors_are_fingerprinted_by_content(session, nodes, calls):
    a = torch.rand(1, 4, 4, 3)
    first = nodes.Scale(a, 2.0)
    calls.clear()
    same = nodes.Scale(a.clone(), 2.0)  # equal content, other object: hit
    assert calls == [] and same.signature == first.signature
    a.mul_(0.5)  # in place: the content changed
    changed = nodes.Scale(a, 2.0)
    assert calls == ["Scale"] and changed.signature != first.signature
    torch.testing.assert_close(changed.value, a * 2.0)


def test_large_tensors_use_identity_and_version_counter(session, nodes, calls, monkeypatch):
    from comfy_notebook.realmode import fingerprint as _fingerprint

    monkeypatch.setattr(_fingerprint, "CONTENT_LIMIT", 16)
    a = torch.rand(1, 4, 4, 3)
    nodes.Scale(a, 2.0)
    calls.clear()
    nodes.Scale(a, 2.0)
    assert calls == []
    nodes.Scale(a.clone(), 2.0)  # another object above the limit: never assumed equal
    assert calls == ["Scale"]
    calls.clear()
    a.add_(1.0)
    out = nodes.Scale(a, 2.0)
    assert calls == ["Scale"]
    torch.testing.assert_close(out.value, a * 2.0)


def test_cached_value_changed_in_place_is_a_miss(session, nodes, calls, t2i):
    image = t2i(nodes)
    expected = image.value.clone()
    image.value.mul_(0)  # user code corrupts the cached tensor
    calls.clear()
    again = t2i(nodes)
    assert "Decode" in calls
    torch.testing.assert_close(again.value, expected)
    # a mutated handle passed on is keyed by its content, not by its (stale) provenance
    scaled = nodes.Scale(image, 1.0)
    assert torch.equal(scaled.value, torch.zeros_like(expected))


def test_hidden_prompt_reproduces(session, nodes, calls, t2i):
    t2i(nodes, seed=5)
    saved = session.registry["Save"].cls.SAVED[-1]
    prompt = saved["prompt"]
    assert prompt["7"]["class_type"] == "Save" and prompt["5"]["inputs"]["seed"] == 5
    session.cache.clear()
    calls.clear()
    session.run_prompt(json.loads(json.dumps(prompt)))
    assert sorted(calls) == sorted(["Loader", "Encode", "Encode", "Empty", "Sampler", "Decode", "Save"])
    torch.testing.assert_close(session.registry["Save"].cls.SAVED[-1]["images"], saved["images"])


def test_is_changed_nan_reruns_every_call(session, nodes, calls):
    assert nodes.Changing(3).value == 4
    assert nodes.Changing(3).value == 4
    assert calls == ["Changing", "Changing"]


def test_interrupt_names_step_and_node_and_next_run_works(session, calls):
    run = node_function("Interrupting")
    with pytest.raises(ExecutionInterrupted, match=r"interrupted at step 2/5 of node Interrupting"):
        run(1)
    assert len(session.cache) == 0
    session.registry["Interrupting"].cls.ARMED[0] = False
    try:
        assert run(1).value == 1
    finally:
        session.registry["Interrupting"].cls.ARMED[0] = True


def test_virtual_mode_records_without_running_and_session_runs_it(session, nodes, calls, t2i):
    with Workflow() as wf:
        image = t2i(nodes, seed=3)
    assert calls == []
    assert isinstance(image, NodeOutput) and not isinstance(image, Handle)
    api = wf.to_api()
    assert list(api) == ["1", "2", "3", "4", "5", "6", "7"]
    assert api["5"]["inputs"]["latent_image"] == ["4", 0]
    assert json.loads(wf.api_format_json()) == api
    result = session.run(wf.graph())
    assert result.executed == set(api)
    calls.clear()
    real = t2i(nodes, seed=3)  # real mode hits what the workflow computed
    assert calls == []
    torch.testing.assert_close(real.value, result.outputs["6"][0])


def test_naked_mode_classes_are_untouched(session, nodes):
    cls = session.registry["Scale"].cls
    before = dict(vars(cls))
    nodes.Scale(torch.ones(1, 1, 1, 3), 2.0)
    assert dict(vars(cls)) == before
    (out,) = cls().scale(torch.ones(1), 3.0)
    assert float(out) == 3.0


def test_current_session_switch(session, nodes):
    from comfy_notebook._session import Session, use_session

    other = Session(builtins=False)
    use_session(other)
    with pytest.raises(KeyError):
        node_function("Loader")
    use_session(session)
    assert node_function("Loader")("a.safetensors")[0].value == {"model": "a.safetensors"}


def test_cell_scoping_releases_stale_entries_unless_held(session, nodes, calls, t2i):
    begin_cell(session, "c1")
    t2i(nodes, seed=1)
    assert end_cell(session) == 0
    n_first = len(session.cache)
    begin_cell(session, "c1")
    t2i(nodes, seed=2)  # Sampler, Decode, Save of seed 1 are stale now
    assert end_cell(session) == 3
    assert len(session.cache) == n_first
    begin_cell(session, "c1")
    held = t2i(nodes, seed=3)
    end_cell(session)
    begin_cell(session, "c1")
    t2i(nodes, seed=4)
    released = end_cell(session)
    assert released == 2  # Sampler and Save of seed 3; Decode's image is held by `held`
    assert held.signature in session.cache


def test_evicted_upstream_entry_is_restored_from_the_handle(session, nodes, calls, t2i):
    _model, clip, _vae = nodes.Loader("a.safetensors")
    session.cache.clear()
    calls.clear()
    cond = nodes.Encode("x", clip)
    assert calls == ["Encode"]  # Loader is not rerun: the handle still holds its value
    assert cond.value[0][1]["text"] == "x"


def test_constants_are_keyed_as_the_engine_coerces_them(session, nodes, calls):
    img = torch.ones(1, 2, 2, 3)
    a = nodes.Scale(img, 2)  # an int for a FLOAT input: the engine keys it as 2.0
    b = nodes.Scale(img, 2.0)
    assert calls == ["Scale"] and a.signature == b.signature
    assert state(session).slow_keys == set()
    # and the fast key is the engine's: the exported prompt is fully cached
    assert session.run_prompt(a.to_api(), targets=["2"]).executed == set()


def test_node_function_signature_and_help(session):
    import inspect

    sampler = node_function("Sampler")
    params = inspect.signature(sampler).parameters
    assert list(params) == ["model", "seed", "steps", "positive", "negative", "latent_image",
                            "add_noise", "sampler_name"]  # the positional order
    assert params["seed"].default is inspect.Parameter.empty  # a required input follows it
    assert params["add_noise"].default is None and params["sampler_name"].default == "euler"
    assert inspect.signature(node_function("Empty")).parameters["width"].default == 16
    assert "add_noise: one of ['enable', 'disable'] (optional)" in sampler.__doc__
    assert sampler.__name__ == "Sampler" and sampler.cls is session.registry["Sampler"].cls


def test_node_error_from_a_node_keeps_its_own_input_and_fix(session):
    from comfy_notebook.errors import NodeError
    from comfy_notebook.realmode import NodeCallError, node_function

    class Picky:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"size": ("INT", {"default": 8})}}

        RETURN_TYPES = ("INT",)
        FUNCTION = "run"

        def run(self, size):
            raise NodeError("size must be even", input_name="size", expected="an even INT",
                            received=size, fix="pass size + 1")

    session.register({"Picky": Picky})
    with pytest.raises(NodeCallError) as info:
        node_function("Picky")(7)
    text = str(info.value)
    assert "(Picky) input 'size': size must be even; expected an even INT, received 7 (int)" in text
    assert text.count("Fix:") == 1 and "pass size + 1" in text and "\n" not in text


def test_interrupt_stops_a_sweep_loop_that_catches_exception(session, nodes, calls):
    """Defect 3: Ctrl-C (or session.interrupt) inside ``try/except Exception`` stops the loop."""
    from comfy_notebook.errors import ExecutionInterrupted

    tried = []
    with pytest.raises(ExecutionInterrupted) as info:
        for seed in range(4):
            tried.append(seed)
            try:
                nodes.Interrupting(seed)
            except Exception:  # a sweep that skips failing seeds
                continue
    assert tried == [0]
    assert str(info.value) == "interrupted at step 2/5 of node Interrupting"
    assert isinstance(info.value, KeyboardInterrupt) and not isinstance(info.value, Exception)
