"""Executor behaviour beyond the conformance suite: context, events, interrupts, errors, depth."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from comfy_notebook.engine import (
    NodeProgress,
    RunFinished,
    RunInterrupted,
    RunStarted,
    current_context,
)
from comfy_notebook.errors import ExecutionInterrupted, NodeExecutionError, ValidationError


def test_hidden_inputs(session):
    api = {"1": {"inputs": {"value": 3}, "class_type": "Const"},
           "2": {"inputs": {"value": ["1", 0]}, "class_type": "Show"}}
    r = session.run_prompt(api, extra_data={"extra_pnginfo": {"workflow": {"k": 1}}})
    ui = r.ui["2"]
    assert ui["value"] == [3] and ui["uid"] == ["2"] and ui["png"] == [{"workflow": {"k": 1}}]
    assert ui["nodes"] == [["1", "2"]] and ui["prompt_keys"] == [["1", "2"]]
    assert r.outputs["1"] == (3,) and r.executed == {"1", "2"}


def test_cache_key_is_id_independent_and_not_idempotent(session, runs):
    a = {"1": {"inputs": {"value": 3}, "class_type": "Const"}, "2": {"inputs": {"value": ["1", 0]}, "class_type": "Sink"}}
    b = {"x": {"inputs": {"value": 3}, "class_type": "Const"}, "y": {"inputs": {"value": ["x", 0]}, "class_type": "Sink"}}
    ra, rb = session.run_prompt(a), session.run_prompt(b)
    assert rb.executed == set() and rb.cached == {"x", "y"}
    assert ra.signatures["2"] == rb.signatures["y"]
    rnd = {"1": {"inputs": {"value": 3}, "class_type": "Const"}, "2": {"inputs": {"value": ["1", 0]}, "class_type": "Random"}}
    s1 = session.run_prompt(rnd, targets=["2"]).signatures["2"]
    rnd2 = {"1": rnd["1"], "9": rnd["2"]}
    assert session.run_prompt(rnd2, targets=["9"]).signatures["9"] != s1  # node id is in the key


def test_unhashable_constant_fails_closed(session, runs):
    class Opaque:
        pass

    from comfy_notebook.engine import Graph, Node

    g = Graph({"1": Node("1", "Anything", {"obj": Opaque()})})
    r1 = session.run(g, targets=["1"])
    r2 = session.run(g, targets=["1"])
    assert runs.count("Anything") == 2 and r2.signatures["1"].startswith("~")
    assert len(session.cache) == 0 and r1.executed == {"1"}


def test_progress_context_and_services(session):
    session.executor.services = {"answer": 42}  # the engine passes any object through
    events = []
    unsubscribe = session.subscribe(events.append)
    r = session.run_prompt({"1": {"inputs": {"steps": 3}, "class_type": "Steps"}})
    assert r.outputs["1"] == (42,)
    progress = [(e.value, e.total, e.preview) for e in events if isinstance(e, NodeProgress)]
    assert progress == [(1, 3, "p0"), (2, 3, "p1"), (3, 3, "p2")]
    assert isinstance(events[0], RunStarted) and isinstance(events[-1], RunFinished)
    unsubscribe()
    session.cache.clear()
    session.run_prompt({"1": {"inputs": {"steps": 3}, "class_type": "Steps"}})
    assert len([e for e in events if isinstance(e, RunFinished)]) == 1
    ctx = current_context()  # detached outside a run
    assert ctx.node_id is None and ctx.services is None and not ctx.interrupted
    ctx.progress(1, 2)


def test_failing_subscriber_does_not_break_run(session, caplog):
    def bad(event):
        raise RuntimeError("subscriber bug")

    session.subscribe(bad)
    r = session.run_prompt({"1": {"inputs": {"steps": 1}, "class_type": "Steps"}})
    assert r.outputs["1"] == (1,)
    assert "subscriber" in caplog.text


def test_interrupt_via_flag_in_progress(session, steps_node):
    steps_node.HOOK = session.interrupt
    events = []
    session.subscribe(events.append)
    with pytest.raises(ExecutionInterrupted) as info:
        session.run_prompt({"1": {"inputs": {"steps": 5}, "class_type": "Steps"}})
    e = info.value
    assert (e.node_id, e.node_type, e.step, e.total) == ("1", "Steps", 3, 5)
    assert isinstance(events[-1], RunInterrupted) and events[-1].node_id == "1"
    assert len(session.cache) == 0  # the interrupted node stored nothing
    steps_node.HOOK = None
    assert session.run_prompt({"1": {"inputs": {"steps": 5}, "class_type": "Steps"}}).outputs["1"] == (5,)


def test_keyboard_interrupt_becomes_execution_interrupted(session, steps_node):
    def hook():
        raise KeyboardInterrupt

    steps_node.HOOK = hook
    with pytest.raises(ExecutionInterrupted) as info:
        session.run_prompt({"1": {"inputs": {"steps": 5}, "class_type": "Steps"}})
    assert (info.value.node_id, info.value.step, info.value.total) == ("1", 2, 5)


def test_interrupt_between_nodes(session, make_chain):
    calls = []

    def stop(event):
        if isinstance(event, RunStarted):
            return
        calls.append(event)
        if len(calls) == 3:
            session.interrupt()

    session.subscribe(stop)
    with pytest.raises(ExecutionInterrupted):
        session.run_prompt(make_chain(10))
    assert 0 < len(session.cache) < 10


def test_failure_keeps_earlier_results_and_rerun_resumes(session, runs, flaky):
    api = {"1": {"inputs": {"value": 1}, "class_type": "Const"},
           "2": {"inputs": {"a": ["1", 0], "b": 2}, "class_type": "Add"},
           "3": {"inputs": {"value": ["2", 0]}, "class_type": "Flaky"},
           "4": {"inputs": {"value": ["3", 0]}, "class_type": "Sink"}}
    with pytest.raises(NodeExecutionError) as info:
        session.run_prompt(api)
    e = info.value
    assert (e.node_id, e.node_type, type(e.original)) == ("3", "Flaky", ZeroDivisionError)
    assert e.inputs_summary == {"value": "3"} and "ZeroDivisionError" in e.traceback_text
    assert e.__cause__ is e.original
    flaky.FAIL = False
    runs.clear()
    r = session.run_prompt(api)
    assert runs == ["Flaky"] and r.cached == {"1", "2"} and r.outputs["4"] == (3,)


def test_duplicate_expansion_ids_rejected(session):
    api = {"1": {"inputs": {"value": 2}, "class_type": "Const"},
           "2": {"inputs": {"value": ["1", 0]}, "class_type": "DupExpand"},
           "3": {"inputs": {"value": ["2", 0]}, "class_type": "Sink"}}
    with pytest.raises(NodeExecutionError, match="already exists") as info:
        session.run_prompt(api)
    assert info.value.node_id == "2"


def test_static_cycle_reported_with_nodes(session):
    api = {"1": {"inputs": {"a": ["2", 0]}, "class_type": "Add"},
           "2": {"inputs": {"a": ["1", 0]}, "class_type": "Add"},
           "3": {"inputs": {"value": ["2", 0]}, "class_type": "Sink"}}
    with pytest.raises(ValidationError) as info:
        session.run_prompt(api)
    errs = info.value.node_errors
    assert set(errs) == {"1", "2"}
    assert errs["1"]["errors"][0]["type"] == "dependency_cycle"
    assert "1 (Add)" in errs["1"]["errors"][0]["details"] and "2 (Add)" in errs["1"]["errors"][0]["details"]


@pytest.mark.parametrize(("inputs", "kind"), [
    ({"choice": "c", "flag": True, "ratio": 0.5, "text": "t"}, "value_not_in_list"),
    ({"choice": "a", "flag": True, "ratio": 1.5, "text": "t"}, "value_bigger_than_max"),
    ({"choice": "a", "flag": True, "ratio": -1, "text": "t"}, "value_smaller_than_min"),
    ({"choice": "a", "flag": True, "ratio": "half", "text": "t"}, "invalid_input_type"),
    ({"choice": "a", "flag": True, "ratio": 0.5}, "required_input_missing"),
    ({"choice": "a", "flag": True, "ratio": 0.5, "text": ["9", 0]}, "bad_linked_input"),
])
def test_constant_validation_errors(session, inputs, kind):
    with pytest.raises(ValidationError) as info:
        session.run_prompt({"1": {"inputs": inputs, "class_type": "Combo"}})
    (err,) = info.value.node_errors["1"]["errors"]
    assert err["type"] == kind and info.value.node_errors["1"]["class_type"] == "Combo"
    assert {"type", "message", "details", "extra_info"} <= set(err)


def test_prompt_level_errors(session):
    with pytest.raises(ValidationError) as info:
        session.run_prompt({"1": {"inputs": {}, "class_type": "Nope"}})
    assert info.value.error["type"] == "invalid_prompt" and info.value.node_errors == {}
    with pytest.raises(ValidationError) as info:
        session.run_prompt({"1": {"inputs": {"value": 1}, "class_type": "Const"}})
    assert info.value.error["type"] == "prompt_no_outputs"
    with pytest.raises(ValidationError) as info:
        session.run_prompt({"1": {"inputs": {}}})
    assert info.value.error["type"] == "invalid_prompt" and "#1" in info.value.error["details"]


def test_coercion_reaches_the_node(session):
    r = session.run_prompt({"1": {"inputs": {"choice": "a", "flag": 1, "ratio": "0.5", "text": 7}, "class_type": "Combo"}})
    assert r.outputs["1"] == ("aTrue0.57",)


def test_deep_chain_validates_and_runs(session, make_chain):
    n = 10_000
    r = session.run_prompt(make_chain(n))
    assert r.outputs[str(n - 1)] == (n - 1,)
    r2 = session.run_prompt(make_chain(n))
    assert r2.executed == set() and len(r2.cached) == n


def test_async_runs_in_helper_thread_when_loop_running(session):
    """run_coroutine_blocking falls back to a private loop in a helper thread."""
    import asyncio

    from comfy_notebook.engine.executor import run_coroutine_blocking

    async def value():
        return threading.current_thread().name

    async def main():
        return run_coroutine_blocking(value())

    assert asyncio.run(main()) == "comfy-notebook-async"
    assert run_coroutine_blocking(value()) == threading.current_thread().name


def test_import_engine_and_session_without_torch():
    code = ("import sys, comfy_notebook.engine, comfy_notebook._session as s; s.Session(); "
            "from comfy_notebook import Session; Session(); assert 'torch' not in sys.modules, 'torch imported'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_value_not_in_list_names_close_matches():
    class Pick:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"name": ([f"model_{i:02d}.safetensors" for i in range(30)]
                                          + ["v1-5-pruned-emaonly.safetensors"],)}}

        RETURN_TYPES = ()
        FUNCTION = "f"
        OUTPUT_NODE = True

        def f(self, name):
            return ()

    from comfy_notebook import Session

    s = Session(builtins=False)
    s.register({"Pick": Pick})
    with pytest.raises(ValidationError) as info:
        s.run_prompt({"1": {"inputs": {"name": "v1-5-pruned-emaonly.safetensor"}, "class_type": "Pick"}})
    details = info.value.node_errors["1"]["errors"][0]["details"]
    assert "(list of length 31)" in details
    assert "close matches: ['v1-5-pruned-emaonly.safetensors']" in details


def test_interrupted_message_wording():
    from comfy_notebook.errors import ExecutionInterrupted

    assert str(ExecutionInterrupted("3", "KSampler", 3, 20)) == "interrupted at step 3/20 of node 3 (KSampler)"
    assert str(ExecutionInterrupted("8", "VAEDecode")) == "interrupted in node 8 (VAEDecode)"
    assert str(ExecutionInterrupted()) == "interrupted"


def test_sigint_during_async_node_reports_its_last_step():
    """Jupyter's interrupt is SIGINT: asyncio cancels the running task, so the node's own
    KeyboardInterrupt handler never runs; the executor still reports the node's last step."""
    import asyncio
    import os
    import signal
    import threading

    from comfy_notebook import Session
    from comfy_notebook.engine import current_context
    from comfy_notebook.errors import ExecutionInterrupted

    started = threading.Event()

    class AsyncSteps:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {}}

        RETURN_TYPES = ("INT",)
        FUNCTION = "run"
        OUTPUT_NODE = True

        async def run(self):
            ctx = current_context()
            for i in range(1, 200):
                ctx.progress(i, 200)
                if i == 3:
                    started.set()
                await asyncio.sleep(0.01)
            return (1,)

    s = Session(builtins=False)
    s.register({"AsyncSteps": AsyncSteps})

    def interrupt() -> None:
        if started.wait(10):
            os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    with pytest.raises(ExecutionInterrupted) as info:
        s.run_prompt({"1": {"inputs": {}, "class_type": "AsyncSteps"}})
    assert info.value.node_id == "1" and info.value.total == 200
    assert info.value.step is not None and 3 <= info.value.step < 200


def test_identical_subgraphs_under_different_ids_run_once(session):
    """Defect 13: two identical chains in one prompt (ComfyUI's structural signature) run once."""
    from tests.engine.conftest import RUNS

    prompt = {
        "1": {"class_type": "Const", "inputs": {"value": 2}},
        "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 3}},
        "11": {"class_type": "Const", "inputs": {"value": 2}},
        "12": {"class_type": "Add", "inputs": {"a": ["11", 0], "b": 3}},
        "20": {"class_type": "Add", "inputs": {"a": ["2", 0], "b": ["12", 0]}},
        "30": {"class_type": "Show", "inputs": {"value": ["20", 0]}},
    }
    RUNS.clear()
    result = session.run_prompt(prompt)
    assert RUNS == ["Const", "Add", "Add", "Show"]  # one Const, one 2+3, then 5+5, then Show
    assert result.outputs["20"] == (10,)
    assert len(result.executed) == 4 and len(result.cached) == 2
    assert result.signatures["2"] == result.signatures["12"]
    assert result.outputs["2"] == result.outputs["12"] == (5,)
