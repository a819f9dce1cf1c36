"""In-process mirror of ComfyUI's tests/execution/test_async_nodes.py."""

from __future__ import annotations

import asyncio

import pytest

from comfy_notebook.engine import ExecutionBlocker, GraphBuilder
from comfy_notebook.errors import NodeExecutionError, ValidationError


def stub(g, content="BLACK"):
    return g.node("StubImage", content=content, height=8, width=8, batch_size=1)


def test_basic_async_and_dependencies(session, builder):
    g = builder
    s1 = g.node("TestSleep", value=stub(g).out(0), seconds=0.01)
    s2 = g.node("TestSleep", value=s1.out(0), seconds=0.01)  # async depends on async
    out = g.node("SaveImage", images=s2.out(0))
    r = session.run_prompt(g.finalize())
    assert {s1.id, s2.id} <= r.executed and r.ui[out.id]["images"] == [0.0]


def test_async_validate_inputs(session, builder):
    g = builder
    ok = g.node("AsyncValidate", value=3)
    assert session.run_prompt(g.finalize(), targets=[ok.id]).outputs[ok.id] == (3,)
    ok.set_input("value", 13)
    with pytest.raises(ValidationError) as info:
        session.run_prompt(g.finalize(), targets=[ok.id])
    assert "13 is unlucky" in info.value.node_errors[ok.id]["errors"][0]["details"]


def test_async_check_lazy_status(session, builder):
    g = builder
    i1, i2 = stub(g, "BLACK"), stub(g, "WHITE")
    m = g.node("StubMask", value=1.0, height=8, width=8, batch_size=1)
    mix = g.node("AsyncLazy", image1=i1.out(0), image2=i2.out(0), mask=m.out(0))
    out = g.node("SaveImage", images=mix.out(0))
    r = session.run_prompt(g.finalize())
    assert r.ui[out.id]["images"] == [1.0] and i1.id not in r.executed


def test_async_error_and_recovery(session, builder):
    g = builder
    bad = g.node("AsyncFailing", value=stub(g).out(0))
    slow = g.node("TestSleep", value=stub(g, "WHITE").out(0), seconds=5.0)
    g.node("SaveImage", images=bad.out(0))
    g.node("SaveImage", images=slow.out(0))
    import time

    t0 = time.perf_counter()
    with pytest.raises(NodeExecutionError) as info:
        session.run_prompt(g.finalize())
    assert time.perf_counter() - t0 < 2.0  # the sleeping sibling was cancelled
    assert info.value.node_id == bad.id and isinstance(info.value.original, ValueError)
    # the session keeps working afterwards
    g2 = GraphBuilder(prefix="again_")
    g2.node("SaveImage", images=g2.node("TestSleep", value=stub(g2).out(0), seconds=0.01).out(0))
    assert session.run_prompt(g2.finalize()).executed


def test_sync_error_during_async_work(session, builder):
    g = builder
    slow = g.node("TestSleep", value=stub(g).out(0), seconds=5.0)
    bad = g.node("Failing", image=stub(g, "WHITE").out(0))
    g.node("SaveImage", images=slow.out(0))
    g.node("SaveImage", images=bad.out(0))
    with pytest.raises(NodeExecutionError) as info:
        session.run_prompt(g.finalize())
    assert info.value.node_id == bad.id


def test_async_with_blocker(session, builder):
    g = builder
    b = g.node("TestExecutionBlocker", input=stub(g).out(0), block=True, verbose=False)
    s = g.node("TestSleep", value=b.out(0), seconds=0.01)
    out = g.node("SaveImage", images=s.out(0))
    r = session.run_prompt(g.finalize())
    assert out.id not in r.ui  # blocked nodes pass the block on, as in ComfyUI
    assert isinstance(r.outputs[s.id][0], ExecutionBlocker)


def test_async_caching(session, builder, caches):
    g = builder
    s = g.node("TestSleep", value=stub(g).out(0), seconds=0.01)
    g.node("SaveImage", images=s.out(0))
    session.run_prompt(g.finalize())
    r = session.run_prompt(g.finalize())
    assert (s.id in r.executed) is not caches


def test_mixed_sync_async_and_running_loop(session, builder):
    """Inside Jupyter a loop already runs in the main thread: async nodes still work."""
    g = builder
    s = g.node("TestSleep", value=stub(g).out(0), seconds=0.01)
    out = g.node("SaveImage", images=s.out(0))

    async def inside_loop():
        return session.run_prompt(g.finalize())

    r = asyncio.run(inside_loop())
    assert r.ui[out.id]["images"] == [0.0]
