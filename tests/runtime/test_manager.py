"""ModelManager on CPU with a fake device capacity: eviction, keep_loaded, unload/reuse, events."""

from __future__ import annotations

import gc

import pytest
import torch

from comfy_notebook.errors import ComfyNotebookError, ModelLoadError
from comfy_notebook.runtime import DevicePolicy, ModelInUseError, ModelManager, ModelMoved

TOY = 11280  # parameter bytes of the Toy model (see conftest)


def test_device_policy_probes_nothing_at_import_and_picks_dtypes() -> None:
    cpu = DevicePolicy.cpu()
    assert cpu.device == torch.device("cpu") and cpu.dtype_for("unet") == torch.float32
    cuda = DevicePolicy.cuda(0)
    assert cuda.dtype_for("unet") == torch.float16 and cuda.dtype_for("vae") == torch.float32
    assert DevicePolicy.auto().is_cuda == torch.cuda.is_available()
    with pytest.raises(ComfyNotebookError, match="unknown model kind 'lora'"):
        cpu.dtype_for("lora")


def test_register_and_list(toy_factory, manager_with_capacity) -> None:
    mgr = manager_with_capacity(10 * TOY)
    a = mgr.register("a", toy_factory(0), kind="unet", source="a.safetensors")
    assert mgr.list()[0].location == "unloaded"
    ref = a.ref(holder="node 4")
    with mgr.use(ref) as module:
        assert isinstance(module, torch.nn.Module)
    (row,) = mgr.list()
    assert (row.name, row.kind, row.source, row.bytes, row.location) == (
        "a", "unet", "a.safetensors", TOY, "gpu")
    assert row.loaded_bytes == TOY and row.holders == ("node 4",) and row.last_used is not None
    text = repr(mgr)
    assert "a" in text and "unet" in text and "gpu" in text and "11.0 KB/11.0 KB" in text
    with pytest.raises(ComfyNotebookError, match="already registered"):
        mgr.register("a", toy_factory(0), kind="unet")
    with pytest.raises(ComfyNotebookError, match="no model named 'zzz'"):
        mgr.load("zzz")


def test_lru_eviction_order(toy_factory, manager_with_capacity) -> None:
    mgr = manager_with_capacity(3 * TOY)
    models = [mgr.register(n, toy_factory(i), kind="unet") for i, n in enumerate("abc")]
    for m in models:
        mgr.load(m)
    assert [m.location for m in models] == ["gpu"] * 3
    with mgr.use(models[0]):  # a becomes most recently used
        pass
    d = mgr.register("d", toy_factory(3), kind="unet")
    mgr.load(d)
    assert [m.location for m in models] == ["gpu", "cpu", "gpu"]  # b was least recently used
    e = mgr.register("e", toy_factory(4), kind="unet")
    mgr.load(e)
    assert [m.location for m in models] == ["gpu", "cpu", "cpu"]
    assert mgr.stats.evictions == 2
    assert mgr.memory_free() == 0  # a, d, e fill the capacity exactly


def test_in_use_and_keep_loaded_are_not_evicted(toy_factory, manager_with_capacity) -> None:
    mgr = manager_with_capacity(2 * TOY)
    a, b, c = (mgr.register(n, toy_factory(i), kind="unet") for i, n in enumerate("abc"))
    mgr.load(a)
    mgr.load(b)
    mgr.keep_loaded(a)
    with mgr.use(b):
        mgr.load(c)  # a kept, b in use: c cannot take full room, so it is loaded partially
        assert (a.location, b.location, c.location) == ("gpu", "gpu", "partial")
        with pytest.raises(ModelInUseError, match="a node is using it"):
            mgr.offload(b)
    mgr.keep_loaded(a, False)
    mgr.offload(c)
    mgr.load(c)
    assert (a.location, c.location) == ("cpu", "gpu")  # a was LRU once no longer kept


def test_budget_and_reserve_enforced(toy_factory) -> None:
    mgr = ModelManager(DevicePolicy.cpu(), budget_bytes=2 * TOY)  # budget alone, no capacity
    a, b = mgr.register("a", toy_factory(0), kind="unet"), mgr.register("b", toy_factory(1), kind="unet")
    mgr.load(a)
    mgr.load(b)
    assert a.location == b.location == "gpu"
    mgr.set_budget(TOY + 100)  # shrinking the budget evicts the LRU model
    assert (a.location, b.location) == ("cpu", "gpu")
    mgr.set_budget(2 * TOY)
    mgr.load(a)
    assert a.location == b.location == "gpu"


def test_reserve_is_kept_free_on_the_device(toy_factory, manager_with_capacity) -> None:
    mgr = manager_with_capacity(2 * TOY, reserve_bytes=TOY // 2)
    a, b = mgr.register("a", toy_factory(0), kind="unet"), mgr.register("b", toy_factory(1), kind="unet")
    mgr.load(a)
    mgr.keep_loaded(a)
    mgr.load(b)  # a is kept; the reserve leaves b only half its size
    assert (a.location, b.location) == ("gpu", "partial")
    assert mgr.memory_free() >= TOY // 2
    assert 0 < b.loaded_bytes <= TOY // 2


def test_unload_then_reuse_reloads_from_factory(toy_factory, manager_with_capacity) -> None:
    mgr = manager_with_capacity(10 * TOY)
    factory = toy_factory(7)
    a = mgr.register("a", factory, kind="unet", source="a.ckpt")
    ref = a.ref()
    x = torch.randn(3, 16)
    with mgr.use(ref) as m:
        y1 = m(x)
    mgr.unload(a)
    assert a.location == "unloaded" and mgr.list()[0].loaded_bytes == 0
    assert factory.calls["n"] == 1
    with mgr.use(ref) as m:  # the ref is still valid; the model comes back from its "file"
        y2 = m(x)
    assert factory.calls["n"] == 2 and mgr.stats.reloads == 2 and mgr.stats.unloads == 1
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    mgr.unload_all()
    assert a.location == "unloaded"


def test_unload_without_factory_is_refused(manager_with_capacity) -> None:
    mgr = manager_with_capacity(10**6)
    a = mgr.register("a", kind="vae", module=torch.nn.Linear(4, 4))
    with pytest.raises(ModelLoadError, match="without a factory"):
        mgr.unload(a)
    mgr.unload_all()  # offloads instead
    assert a.location == "cpu"


def test_refs_do_not_keep_weights_alive(toy_factory, manager_with_capacity) -> None:
    mgr = manager_with_capacity(10 * TOY)
    a = mgr.register("a", toy_factory(0), kind="unet")
    ref = a.ref()
    mgr.load(ref)
    weight = next(a._module.parameters())
    import weakref

    alive = weakref.ref(weight)
    del weight
    mgr.unload(a)
    gc.collect()
    assert alive() is None and ref.base is a  # weights freed, handle intact
    assert ref.patches == {} and not any(isinstance(getattr(ref, s), torch.Tensor)
                                         for s in ("base", "patches_id", "holder"))


def test_events_and_counters(toy_factory, manager_with_capacity) -> None:
    mgr = manager_with_capacity(TOY)
    events: list[ModelMoved] = []
    unsubscribe = mgr.subscribe(events.append)
    a, b = mgr.register("a", toy_factory(0), kind="unet"), mgr.register("b", toy_factory(1), kind="unet")
    mgr.load(a)
    mgr.load(b)
    moves = [(e.name, e.source, e.target, e.reason) for e in events]
    assert moves == [("a", "file", "cpu", "loaded from file"), ("a", "cpu", "gpu", "load"),
                     ("b", "file", "cpu", "loaded from file"), ("a", "gpu", "cpu", "evicted"),
                     ("b", "cpu", "gpu", "load")]
    assert all(e.nbytes == TOY for e in events)
    s = mgr.stats
    assert (s.bytes_moved_to_device, s.bytes_moved_to_host, s.loads, s.offloads) == (2 * TOY, TOY, 2, 1)
    unsubscribe()
    mgr.offload(b)
    assert len(events) == 5


def test_clip_and_vae_go_back_after_use_when_memory_is_short(toy_factory, manager_with_capacity) -> None:
    mgr = manager_with_capacity(TOY)
    unet = mgr.register("unet", toy_factory(0), kind="unet")
    vae = mgr.register("vae", toy_factory(1), kind="vae")
    mgr.load(unet)
    with mgr.use(vae):
        assert vae.location == "gpu" and unet.location == "cpu"
    assert vae.location == "cpu"  # it had to evict the UNet, so it does not stay
    roomy = manager_with_capacity(4 * TOY)
    vae2 = roomy.register("vae", toy_factory(1), kind="vae")
    with roomy.use(vae2):
        pass
    assert vae2.location == "gpu"  # memory was not short: it stays


def test_consistent_after_exception_in_node(toy_factory, manager_with_capacity) -> None:
    mgr = manager_with_capacity(2 * TOY)
    a = mgr.register("a", toy_factory(0), kind="unet")
    with pytest.raises(ValueError, match="boom"), mgr.use(a, memory_required=500):
        raise ValueError("boom")
    assert not a.in_use and mgr._reserved == 0
    assert mgr.memory_free() == 2 * TOY - TOY
    mgr.unload(a)  # not in use any more
