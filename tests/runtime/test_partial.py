"""Partial (low-VRAM) loading with streaming hooks, and out-of-memory recovery."""

from __future__ import annotations

import pytest
import torch

from comfy_notebook.errors import ModelMemoryError
from comfy_notebook.runtime import LoraPatch, estimate_unet_memory

TOY = 11280
# unit sizes of Toy, largest first: big 4352, out 4160, a 1088, b 1088, conv 592


def test_partial_load_streams_the_rest_and_matches_full_load(toy_factory, manager_with_capacity) -> None:
    x = torch.randn(5, 16)
    full = manager_with_capacity(10 * TOY)
    with full.use(full.register("m", toy_factory(3), kind="unet")) as m:
        expected = m(x)
    mgr = manager_with_capacity(10 * TOY)
    model = mgr.register("m", toy_factory(3), kind="unet")
    with mgr.use(model, weight_budget=4352 + 1088) as m:
        assert model.location == "partial"
        streamer = model.streamer
        streamed = sorted(u.prefix for u in streamer.units)
        assert streamed == ["b", "conv", "out"]  # big + a filled the budget, largest first
        assert model.loaded_bytes == 4352 + 1088
        got = m(x)
        assert streamer.transfers == 3  # one upload per streamed unit per forward
        m(x)
        assert streamer.transfers == 6
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert mgr.stats.bytes_streamed == 2 * (1088 + 592 + 4160)
    assert mgr.stats.partial_loads == 1


def test_model_too_big_for_device_loads_partially(toy_factory, manager_with_capacity) -> None:
    mgr = manager_with_capacity(5000)
    model = mgr.register("m", toy_factory(0), kind="unet")
    with mgr.use(model, memory_required=200) as m:
        m(torch.randn(1, 16))
        assert model.location == "partial" and model.loaded_bytes <= 5000 - 200
        assert mgr.memory_free() >= 0
    mgr.offload(model)
    assert model.location == "cpu" and model.streamer is None
    assert all(not h for u in model._units for h in (u.module._forward_pre_hooks,))


def test_streamed_units_are_patched_on_the_fly(toy_factory, manager_with_capacity) -> None:
    x = torch.randn(2, 16)
    torch.manual_seed(1)
    patch = {"out.weight": LoraPatch(torch.randn(16, 2), torch.randn(2, 64), alpha=1.0),
             "a.weight": LoraPatch(torch.randn(16, 3), torch.randn(3, 16), alpha=6.0)}
    results = []
    for budget in (None, 4352, 0):
        mgr = manager_with_capacity(10 * TOY)
        base = mgr.register("m", toy_factory(2), kind="unet")
        lora = base.ref().with_patches(patch, 0.7)
        with mgr.use(lora, weight_budget=budget) as m:
            results.append(m(x))
        fresh = toy_factory(2)()
        assert torch.equal(base._master["out.weight"], fresh.out.weight)  # host copy unpatched
        assert torch.equal(base._master["a.weight"], fresh.a.weight)
    torch.testing.assert_close(results[1], results[0], rtol=0, atol=0)
    torch.testing.assert_close(results[2], results[0], rtol=0, atol=0)


def test_oom_inside_node_offloads_others_and_retries_partially(toy_factory, manager_with_capacity) -> None:
    mgr = manager_with_capacity(3 * TOY)
    other = mgr.register("other", toy_factory(1), kind="unet")
    model = mgr.register("m", toy_factory(0), kind="unet")
    mgr.load(other)
    calls = []

    def node(m: torch.nn.Module) -> torch.Tensor:
        calls.append(model.location)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return m(torch.ones(1, 16))

    out = mgr.run(model.ref(), node, memory_required=100)
    assert calls == ["gpu", "partial"] and out.shape == (1, 16)
    assert other.location == "cpu" and mgr.stats.oom_retries == 1
    assert not model.in_use and mgr._reserved == 0


def test_second_oom_raises_clear_error_and_stays_consistent(toy_factory, manager_with_capacity) -> None:
    mgr = manager_with_capacity(3 * TOY)
    model = mgr.register("m", toy_factory(0), kind="unet")

    def node(m: torch.nn.Module) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    with pytest.raises(ModelMemoryError, match=r"out of memory running model 'm'.*needed 1000 B") as info:
        mgr.run(model, node, memory_required=1000)
    assert "Loaded now: m (partial" in str(info.value)
    assert isinstance(info.value.__cause__, torch.OutOfMemoryError)
    assert not model.in_use and mgr._reserved == 0
    mgr.unload(model)  # the manager still works
    assert mgr.run(model, lambda m: m(torch.ones(1, 16)).shape) == (1, 16)


def test_inference_estimate_doubles_with_cfg() -> None:
    one = estimate_unet_memory((1, 4, 64, 64), torch.float16, cfg=False)
    assert estimate_unet_memory((1, 4, 64, 64), torch.float16) == 2 * one
    assert estimate_unet_memory((1, 4, 64, 64), torch.float32, cfg=False) == 2 * one
    assert one == round(4096 * 2 * (1 << 20) * 2.0 / 100)
