"""In-process mirror of ComfyUI's tests/execution/test_execution.py (no server).

Each test is run under three cache policies, as ComfyUI runs classic / LRU 100 / no cache.
"""

from __future__ import annotations

import pytest

from comfy_notebook.engine import GraphBuilder, NodeBlocked, NodeCached, NodeStarted
from comfy_notebook.errors import NodeExecutionError, ValidationError


def run(session, g: GraphBuilder, **kw):
    return session.run_prompt(g.finalize(), **kw)


def stub(g, content="BLACK", h=8, w=8, **kw):
    return g.node("StubImage", content=content, height=h, width=w, batch_size=1, **kw)


def mask(g, value):
    return g.node("StubMask", value=value, height=8, width=8, batch_size=1)


def test_lazy_input(session, builder):
    g = builder
    i1, i2 = stub(g, "BLACK"), stub(g, "WHITE")
    m = mask(g, 0.0)
    mix = g.node("TestLazyMixImages", image1=i1.out(0), image2=i2.out(0), mask=m.out(0))
    out = g.node("SaveImage", images=mix.out(0))
    r = run(session, g)
    assert r.ui[out.id]["images"] == [0.0]
    assert {i1.id, m.id, mix.id} <= r.executed
    assert i2.id not in r.executed


def test_full_cache(session, builder, caches):
    g = builder
    i1, i2 = stub(g, "BLACK"), stub(g, "NOISE")
    mix = g.node("TestLazyMixImages", image1=i1.out(0), image2=i2.out(0), mask=mask(g, 0.5).out(0))
    g.node("SaveImage", images=mix.out(0))
    run(session, g)
    r2 = run(session, g)
    if caches:
        assert r2.executed == set()
        assert r2.cached == set(g.nodes)
    else:
        assert r2.executed == set(g.nodes)


def test_partial_cache(session, builder, caches):
    g = builder
    i1, i2 = stub(g, "BLACK"), stub(g, "NOISE")
    m = mask(g, 0.5)
    mix = g.node("TestLazyMixImages", image1=i1.out(0), image2=i2.out(0), mask=m.out(0))
    out = g.node("SaveImage", images=mix.out(0))
    run(session, g)
    m.set_input("value", 0.4)
    r2 = run(session, g)
    assert (i1.id in r2.executed) is not caches
    assert (i2.id in r2.executed) is not caches
    assert {m.id, mix.id, out.id} <= r2.executed
    assert r2.ui[out.id]["images"] == [pytest.approx(0.37 * 0.4)]


def test_error_carries_prompt_id(session, builder):
    g = builder
    i1, i2 = stub(g, "BLACK"), stub(g, "NOISE", h=4, w=4)
    mix = g.node("TestLazyMixImages", image1=i1.out(0), image2=i2.out(0), mask=mask(g, 0.5).out(0))
    g.node("SaveImage", images=mix.out(0))
    with pytest.raises(NodeExecutionError) as info:
        run(session, g)
    err = info.value
    assert err.prompt_id and err.node_id == mix.id and err.node_type == "TestLazyMixImages"
    assert isinstance(err.original, ValueError) and "image sizes differ" in err.traceback_text
    assert set(err.inputs_summary) == {"image1", "image2", "mask"}


@pytest.mark.parametrize(("value", "expect_error"), [(5, True), ("foo", True), (5.0, False)])
def test_validation_error_literal(session, builder, value, expect_error):
    g = builder
    v = g.node("TestCustomValidation1", input1=value, input2=3.0)
    g.node("SaveImage", images=v.out(0))
    if expect_error:
        with pytest.raises(ValidationError) as info:
            run(session, g)
        assert info.value.node_errors[v.id]["errors"][0]["type"] == "custom_validation_failed"
    else:
        run(session, g)


@pytest.mark.parametrize(("node", "value"), [("StubInt", 5), ("StubMask", 5.0)])
def test_validation_error_edge1(session, builder, node, value):
    g = builder
    s = g.node(node, value=value, **({"height": 8, "width": 8, "batch_size": 1} if node == "StubMask" else {}))
    v = g.node("TestCustomValidation1", input1=s.out(0), input2=3.0)
    g.node("SaveImage", images=v.out(0))
    with pytest.raises(ValidationError) as info:
        run(session, g)
    (err,) = info.value.node_errors[v.id]["errors"]
    assert err["type"] == "return_type_mismatch"
    assert err["extra_info"]["input_name"] == "input1"


@pytest.mark.parametrize(("node", "value", "expect_error"), [("StubInt", 5, True), ("StubFloat", 5.0, False)])
def test_validation_union_types(session, builder, node, value, expect_error):
    g = builder
    s = g.node(node, value=value)
    v = g.node("TestCustomValidation2", input1=s.out(0), input2=3.0)
    g.node("SaveImage", images=v.out(0))
    if expect_error:
        with pytest.raises(ValidationError):
            run(session, g)
    else:
        run(session, g)


@pytest.mark.parametrize(("node", "value", "expect_error"), [("StubInt", 5, True), ("StubFloat", 5.0, False)])
def test_validation_with_input_types(session, builder, node, value, expect_error):
    g = builder
    s = g.node(node, value=value)
    v = g.node("TestCustomValidation3", input1=s.out(0), input2=3.0)
    g.node("SaveImage", images=v.out(0))
    if expect_error:
        with pytest.raises(ValidationError) as info:
            run(session, g)
        # the type check is the node's own: input_types skips return_type_mismatch
        assert info.value.node_errors[v.id]["errors"][0]["type"] == "custom_validation_failed"
        assert "Invalid type of input1: INT" in info.value.node_errors[v.id]["errors"][0]["details"]
    else:
        run(session, g)


def test_variant_support_smart_type(session, builder):
    g = builder
    s = g.node("StubInt", value=5)
    p = g.node("VariantSupport", value=s.out(0))
    f = g.node("StubFloat", value=p.out(0))  # ANY output feeds a FLOAT input
    r = session.run_prompt(g.finalize(), targets=[f.id])
    assert r.outputs[f.id] == (5,)


@pytest.mark.parametrize(("v1", "v2", "expect_error"), [(0.0, 0.5, False), (0.0, 5.0, False), (0.0, 7.0, True)])
def test_validation_error_kwargs(session, builder, v1, v2, expect_error):
    g = builder
    v = g.node("TestCustomValidation5", input1=v1, input2=v2)
    g.node("SaveImage", images=v.out(0))
    if expect_error:
        with pytest.raises(ValidationError) as info:
            run(session, g)
        (err,) = info.value.node_errors[v.id]["errors"]
        assert err["details"] == "TestCustomValidation5 - 7s are not allowed. I've never liked 7s."
    else:
        run(session, g)  # 5.0 > max 1.0 passes: a **kwargs validator skips min/max


def test_cycle_error_missing_input(session, builder):
    g = builder
    i1, i2 = stub(g, "BLACK"), stub(g, "WHITE")
    m = mask(g, 0.5)
    mix1 = g.node("TestLazyMixImages", image1=i1.out(0), mask=m.out(0))
    mix2 = g.node("TestLazyMixImages", image1=mix1.out(0), image2=i2.out(0), mask=m.out(0))
    out = g.node("SaveImage", images=mix2.out(0))
    with pytest.raises(ValidationError) as info:
        run(session, g)
    e = info.value
    assert e.error["type"] == "prompt_outputs_failed_validation"
    assert e.node_errors[mix1.id]["errors"][0]["type"] == "required_input_missing"
    assert e.node_errors[mix1.id]["dependent_outputs"] == [out.id]
    assert mix2.id not in e.node_errors  # invalid because of upstream, no error of its own


def test_dynamic_cycle_error(session, builder):
    g = builder
    i1, i2 = stub(g, "BLACK"), stub(g, "WHITE")
    gen = g.node("TestDynamicDependencyCycle", input1=i1.out(0), input2=i2.out(0))
    g.node("SaveImage", images=gen.out(0))
    with pytest.raises(NodeExecutionError) as info:
        run(session, g)
    assert info.value.node_id == gen.id
    assert "Dependency cycle" in str(info.value.original)


def test_missing_node_error(session, builder):
    g = builder
    i1 = stub(g, "BLACK")
    i2 = stub(g, "WHITE", id="removeme")
    i3 = stub(g, "WHITE")
    m = mask(g, 0.5)
    mix1 = g.node("TestLazyMixImages", image1=i1.out(0), image2=i2.out(0), mask=m.out(0))
    mix2 = g.node("TestLazyMixImages", image1=i1.out(0), image2=i3.out(0), mask=m.out(0))
    bad = g.node("SaveImage", images=mix1.out(0))
    good = g.node("SaveImage", images=mix2.out(0))
    g.remove_node("removeme")
    r = run(session, g)
    assert good.id in r.ui and bad.id not in r.ui
    assert r.node_errors[mix1.id]["errors"][0]["type"] == "bad_linked_input"
    assert r.node_errors[mix1.id]["dependent_outputs"] == [bad.id]
    stub(g, "WHITE", id="removeme")
    r2 = run(session, g)
    assert bad.id in r2.ui and not r2.node_errors


def test_custom_is_changed(session, builder, caches):
    g = builder
    save = g.node("SaveImage")
    changed = g.node("TestCustomIsChanged", should_change=False)
    i1 = stub(g, "BLACK")
    save.set_input("images", changed.out(0))
    changed.set_input("image", i1.out(0))
    r1, r2 = run(session, g), run(session, g)
    changed.set_input("should_change", True)
    r3, r4 = run(session, g), run(session, g)
    assert changed.id in r1.executed
    assert (changed.id in r2.executed) is not caches
    assert changed.id in r3.executed and changed.id in r4.executed
    assert save.id in r4.executed  # downstream of a NaN fingerprint reruns too
    assert r4.signatures[changed.id].startswith("~")


def test_undeclared_inputs(session, builder):
    g = builder
    ins = [stub(g, c) for c in ("BLACK", "WHITE", "BLACK", "BLACK")]
    avg = g.node("TestVariadicAverage", **{f"input{i + 1}": n.out(0) for i, n in enumerate(ins)})
    out = g.node("SaveImage", images=avg.out(0))
    assert run(session, g).ui[out.id]["images"] == [0.25]


@pytest.mark.parametrize("iterations", [1, 2, 3, 4])
def test_for_loop(session, builder, iterations):
    g = builder
    i1, i2 = stub(g, "BLACK"), stub(g, "WHITE")
    changed = g.node("TestCustomIsChanged", should_change=True, image=i2.out(0))
    loop_open = g.node("TestForLoopOpen", remaining=iterations, initial_value1=changed.out(0))
    avg = g.node("TestVariadicAverage", input1=i1.out(0), input2=loop_open.out(2))
    loop_close = g.node("TestForLoopClose", flow_control=loop_open.out(0), initial_value1=avg.out(0))
    out = g.node("SaveImage", images=loop_close.out(0))
    r = run(session, g)
    assert r.ui[out.id]["images"] == [pytest.approx(1.0 / 2**iterations)]
    assert changed.id in r.executed


def test_mixed_expansion_returns(session, builder):
    g = builder
    vals = g.node("TestMakeListNode", value1=0.1, value2=0.2, value3=0.3)
    mixed = g.node("TestMixedExpansionReturns", input1=vals.out(0))
    dyn = g.node("SaveImage", images=mixed.out(0))
    lit = g.node("SaveImage", images=mixed.out(1))
    r = run(session, g)
    assert r.ui[dyn.id]["images"] == [0.1, 0.2, 0.3]
    assert r.ui[lit.id]["images"] == [1.0, 1.0, 1.0]


def test_mixed_lazy_results(session, builder):
    g = builder
    vals = g.node("TestMakeListNode", value1=0.0, value2=0.5, value3=1.0)
    m = g.node("StubMask", value=vals.out(0), height=8, width=8, batch_size=1)
    i1, i2 = stub(g, "BLACK"), stub(g, "WHITE")
    mix = g.node("TestLazyMixImages", image1=i1.out(0), image2=i2.out(0), mask=m.out(0))
    out = g.node("SaveImage", images=mix.out(0))
    r = run(session, g)
    assert r.ui[out.id]["images"] == [0.0, 0.5, 1.0]
    assert r.output_lists[mix.id][0][1].value == 0.5


def test_output_reuse(session, builder):
    g = builder
    i1 = stub(g)
    o1, o2 = g.node("SaveImage", images=i1.out(0)), g.node("SaveImage", images=i1.out(0))
    r = run(session, g)
    assert r.ui[o1.id]["images"] == [0.0] and r.ui[o2.id]["images"] == [0.0]
    assert len(r.executed) == 2 or i1.id in r.cached or i1.id in r.executed


def test_is_changed_with_outputs(session, builder, caches, pack):
    seen = pack["TestIsChangedWithConstants"].SEEN

    g = builder
    i1 = g.node("StubConstantImage", value=0.5, height=8, width=8, batch_size=1)
    t = g.node("TestIsChangedWithConstants", image=i1.out(0), value=0.5)
    out = g.node("PreviewImage", images=t.out(0))
    r = run(session, g)
    assert r.ui[out.id]["images"] == [0.25]
    r = run(session, g)
    assert r.ui[out.id]["images"] == [0.25]
    assert (t.id in r.executed) is not caches
    assert seen and set(seen) == {None}  # linked inputs arrive as None


def test_parallel_sleep_nodes(session, builder, clock):
    g = builder
    image = stub(g)
    sleeps = [g.node("TestSleep", value=image.out(0), seconds=s) for s in (0.3, 0.35, 0.32)]
    outs = [g.node("PreviewImage", images=s.out(0)) for s in sleeps]
    t0 = clock()
    r = run(session, g)
    elapsed = clock() - t0
    assert elapsed < 0.8, f"async nodes ran one after another: {elapsed:.2f}s"
    assert {s.id for s in sleeps} <= r.executed and all(o.id in r.ui for o in outs)


def test_parallel_sleep_expansion(session, builder, clock):
    g = builder
    ims = [stub(g, c) for c in ("BLACK", "WHITE", "WHITE")]
    ps = g.node("TestParallelSleep", image1=ims[0].out(0), image2=ims[1].out(0), image3=ims[2].out(0),
                sleep1=0.3, sleep2=0.32, sleep3=0.35)
    out = g.node("SaveImage", images=ps.out(0))
    t0 = clock()
    r = run(session, g)
    assert clock() - t0 < 0.8
    assert ps.id in r.executed
    assert r.ui[out.id]["images"] == [pytest.approx(2 / 3)]


def test_execution_block_list_output(session, builder):
    g = builder
    imgs = [stub(g, c) for c in ("BLACK", "WHITE", "BLACK")]
    image_list = g.node("TestMakeListNode", value1=imgs[0].out(0), value2=imgs[1].out(0), value3=imgs[2].out(0))
    ints = [g.node("StubInt", value=v) for v in (1, 2, 3)]
    int_list = g.node("TestMakeListNode", value1=ints[0].out(0), value2=ints[1].out(0), value3=ints[2].out(0))
    compare = g.node("TestIntConditions", a=int_list.out(0), b=2, operation="==")
    blocker = g.node("TestExecutionBlocker", input=image_list.out(0), block=compare.out(0), verbose=False)
    list_output = g.node("TestMakeListNode", value1=blocker.out(0))
    out = g.node("PreviewImage", images=list_output.out(0))
    r = run(session, g)
    assert out.id in r.executed
    assert r.ui[out.id]["images"] == [0.0, 0.0]


def test_execution_block_with_message(session, builder):
    g = builder
    b = g.node("TestExecutionBlocker", input=stub(g).out(0), block=True, verbose=True)
    out = g.node("SaveImage", images=b.out(0))
    events = []
    session.subscribe(events.append)
    r = run(session, g)
    assert out.id not in r.ui
    blocked = [e for e in events if isinstance(e, NodeBlocked)]
    assert [(e.node_id, e.message) for e in blocked] == [(out.id, "Blocked Execution")]


def test_partial_execution_included_outputs(session, builder):
    g = builder
    i1, i2 = stub(g, "BLACK"), stub(g, "WHITE")
    o1, o2 = g.node("SaveImage", images=i1.out(0)), g.node("SaveImage", images=i2.out(0))
    r = run(session, g, targets=[o1.id])
    assert {i1.id, o1.id} <= r.executed | r.cached
    assert i2.id not in r.executed and o2.id not in r.executed and o2.id not in r.ui


def test_partial_execution_excluded_outputs(session, builder):
    g = builder
    ins = [stub(g, c) for c in ("BLACK", "WHITE", "NOISE")]
    outs = [g.node("SaveImage", images=i.out(0)) for i in ins]
    r = run(session, g, targets=[outs[0].id, outs[2].id])
    assert {ins[0].id, ins[2].id, outs[0].id, outs[2].id} <= r.executed | r.cached
    assert ins[1].id not in r.executed and outs[1].id not in r.executed


def test_partial_execution_dependencies(session, builder):
    g = builder
    i1 = stub(g)
    sock = g.node("TestOutputNodeWithSocketOutput", image=i1.out(0), value=2.0)
    dep = g.node("TestLazyMixImages", image1=sock.out(0), image2=i1.out(0), mask=mask(g, 0.5).out(0))
    final = g.node("SaveImage", images=dep.out(0))
    r = run(session, g, targets=[final.id])
    assert {i1.id, sock.id, dep.id, final.id} <= r.executed | r.cached
    assert r.ui[sock.id] == {"value": [2.0]}


def test_partial_execution_with_lazy_nodes(session, builder):
    g = builder
    ins = [stub(g, c) for c in ("BLACK", "WHITE", "NOISE")]
    m1, m2 = mask(g, 0.0), mask(g, 0.5)
    mix1 = g.node("TestLazyMixImages", image1=ins[0].out(0), image2=ins[1].out(0), mask=m1.out(0))
    mix2 = g.node("TestLazyMixImages", image1=ins[1].out(0), image2=ins[2].out(0), mask=m2.out(0))
    o1 = g.node("SaveImage", images=mix1.out(0))
    g.node("SaveImage", images=mix2.out(0))
    r = run(session, g, targets=[o1.id])
    assert ins[0].id in r.executed and ins[1].id not in r.executed and ins[2].id not in r.executed
    assert m2.id not in r.executed and mix2.id not in r.executed


def test_partial_execution_multiple_and_empty(session, builder):
    g = builder
    ins = [stub(g, c) for c in ("BLACK", "WHITE")]
    outs = [g.node("SaveImage", images=i.out(0)) for i in ins]
    r = run(session, g, targets=[o.id for o in outs])
    assert all(o.id in r.ui for o in outs)
    with pytest.raises(ValidationError) as info:
        run(session, g, targets=[])
    assert info.value.error["type"] == "prompt_no_outputs"


def test_history_equivalents_ui_for_cached_outputs(session, builder, caches):
    """History maps to PromptResult: ui is filled for output nodes even when cached."""
    g = builder
    out = g.node("SaveImage", images=stub(g).out(0))
    events = []
    session.subscribe(events.append)
    run(session, g)
    r = run(session, g)
    assert r.ui[out.id]["images"] == [0.0]
    if caches:
        cached = [e for e in events if isinstance(e, NodeCached) and e.node_id == out.id]
        assert cached and cached[-1].ui == r.ui[out.id]
    assert sum(isinstance(e, NodeStarted) for e in events) == (2 if caches else 4)
