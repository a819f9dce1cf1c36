"""Captured sampling steps: keys, reuse, invalidation on every manager move, eager fallbacks.

A fake capturer stands in for CUDA graphs on the CPU: its "replay" reruns the captured function
on the static inputs, so the wrapper's bookkeeping (static copies, keys, invalidation) is what is
tested; the real capture is checked by the gpu-marked tests.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from comfy_notebook.runtime import DevicePolicy, LoraPatch, ModelManager
from comfy_notebook.runtime.graphs import Captured, Capturer, StepGraphs


class FakeCapturer(Capturer):
    def __init__(self, *, fail: bool = False, nbytes: int = 1000) -> None:
        self.fail, self.nbytes, self.captured, self.replayed = fail, nbytes, 0, 0

    def available(self, device: torch.device) -> bool:
        return True

    def warmup_and_capture(self, fn: Callable[[], Tensor], device: torch.device) -> tuple[Tensor, Captured]:
        warm = fn().clone()
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        out = fn()
        self.captured += 1

        def replay() -> None:
            self.replayed += 1
            out.copy_(fn())

        return warm, Captured(out, replay, self.nbytes)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x: Tensor, t: Tensor, context: Tensor, y: Tensor | None = None) -> Tensor:
        out = self.lin(x) + t[:, None] + context.mean(1)
        return out if y is None else out + y


def _setup(capacity: int = 1 << 30, **kw: Any) -> tuple[ModelManager, Any, FakeCapturer]:
    mgr = ModelManager(DevicePolicy.cpu(), capacity_bytes=capacity)
    cap = FakeCapturer(**kw)
    mgr.graphs.capturer = cap

    def factory() -> nn.Module:
        torch.manual_seed(0)
        return Net()

    m = mgr.register("unet", factory, kind="unet")
    return mgr, m, cap


def _inputs(b: int = 2, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 8, generator=g), torch.rand(b, generator=g), torch.randn(b, 3, 8, generator=g)


def _run(mgr: ModelManager, ref: Any, calls: list[tuple[Tensor, ...]], **kw: Any) -> list[Tensor]:
    with torch.no_grad(), mgr.use(ref) as module:
        f = mgr.graphs.wrap(ref, module, module, **kw)
        return [f(*a) for a in calls]


def test_eager_then_capture_then_replay_with_the_eager_result() -> None:
    mgr, m, cap = _setup()
    calls = [_inputs(seed=i) for i in range(5)]
    got = _run(mgr, m.ref(), calls, enabled=True)
    with torch.no_grad():
        want = [m._module(*a) for a in calls]
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)
    assert (cap.captured, cap.replayed, mgr.graphs.replays) == (1, 3, 3)
    # the output is the caller's: the next replay does not overwrite it
    assert got[2] is not got[3] and not torch.equal(got[2], got[3])


def test_keys_per_shape_kwargs_and_patch_set() -> None:
    mgr, m, cap = _setup()
    _run(mgr, m.ref(), [_inputs(2)] * 3 + [_inputs(4)] * 3, enabled=True)
    assert cap.captured == 2 and len(mgr.graphs.held("unet")) == 2
    x, t, c = _inputs(2)
    with torch.no_grad(), mgr.use(m.ref()) as module:
        f = mgr.graphs.wrap(m.ref(), module, module, enabled=True)
        for _ in range(3):
            f(x, t, c, y=torch.ones(2, 8))
    assert cap.captured == 3  # the kwarg is part of the key
    lora = {"lin.weight": LoraPatch(torch.randn(8, 2), torch.randn(2, 8), 2.0)}
    patched = m.ref().with_patches(lora, 1.0)
    out = _run(mgr, patched, [_inputs(2)] * 3, enabled=True)
    assert cap.captured == 4  # another patch set: another graph
    with torch.no_grad(), mgr.use(patched) as module:
        assert torch.equal(out[-1], module(*_inputs(2)))


@pytest.mark.parametrize("move", ["offload", "unload", "load_partial", "evict", "reload"])
def test_every_manager_move_drops_the_models_graphs(move: str) -> None:
    mgr, m, _ = _setup()
    _run(mgr, m.ref(), [_inputs()] * 3, enabled=True)
    assert mgr.graphs.held("unet") and mgr.list()[0].graphs == 1
    if move == "offload":
        mgr.offload(m)
    elif move == "unload":
        mgr.unload(m)
    elif move == "load_partial":
        mgr.set_budget(m.nbytes // 2)
        with mgr.use(m):
            pass
    elif move == "evict":
        other = mgr.register("other", lambda: nn.Linear(64, 64), kind="unet")
        mgr.set_budget(m.nbytes + 1)
        with mgr.use(other):
            pass
        assert m.location == "cpu"
    else:
        mgr.offload(m)
        mgr.load(m)
    assert mgr.graphs.held("unet") == [] and mgr.list()[0].graphs == 0
    assert mgr.graphs.invalidations >= 1
    # and the next run captures again against the new weights
    got = _run(mgr, m.ref(), [_inputs()] * 3, enabled=True)
    with torch.no_grad(), mgr.use(m) as module:
        assert torch.equal(got[-1], module(*_inputs()))


def test_memory_is_reported_per_model() -> None:
    mgr, m, _ = _setup(nbytes=12345)
    _run(mgr, m.ref(), [_inputs(2)] * 3 + [_inputs(3)] * 3, enabled=True)
    row = mgr.list()[0]
    assert (row.graphs, row.graph_bytes) == (2, 2 * 12345) == (len(mgr.graphs.held()), mgr.graphs.nbytes())
    assert [g.shapes for g in mgr.graphs.held("unet")] == ["2x8 2 2x3x8", "3x8 3 3x3x8"]


def test_at_most_per_model_graphs_are_kept() -> None:
    mgr, m, cap = _setup()
    mgr.graphs.per_model = 2
    for b in (1, 2, 3):
        _run(mgr, m.ref(), [_inputs(b)] * 2, enabled=True)
    assert cap.captured == 3 and [g.shapes.split()[0] for g in mgr.graphs.held()] == ["2x8", "3x8"]


def test_fallbacks_run_eagerly_and_say_why() -> None:
    mgr, m, cap = _setup()
    x = _inputs()
    assert _run(mgr, m.ref(), [x] * 3, enabled=False)
    assert mgr.graphs.fallbacks == {"disabled": 1} and cap.captured == 0

    class NoDevice(FakeCapturer):
        def available(self, device: torch.device) -> bool:
            return False

    mgr.graphs.capturer = NoDevice()
    _run(mgr, m.ref(), [x] * 3)  # enabled=None: on only where the capturer can capture
    assert mgr.graphs.fallbacks["device"] == 1
    mgr.graphs.capturer = cap

    handle = m._module.lin.register_forward_hook(lambda *a: None)
    _run(mgr, m.ref(), [x] * 3, enabled=True)
    handle.remove()
    assert mgr.graphs.fallbacks["hooks"] == 1

    with torch.no_grad(), mgr.use(m) as module:
        f = mgr.graphs.wrap(m.ref(), module, lambda x, t, c, scale=1.0: module(x, t, c) * scale,
                            enabled=True)
        for _ in range(3):
            f(*x, scale=2.0)  # a non-tensor input: no capture, the right answer
        assert torch.equal(f(*x, scale=2.0), module(*x) * 2.0)
    assert mgr.graphs.fallbacks["inputs"] == 4 and cap.captured == 0

    mgr.set_budget(m.nbytes // 2)
    _run(mgr, m.ref(), [x] * 3, enabled=True)
    assert m.location == "partial" and mgr.graphs.fallbacks["partial"] == 1


def test_a_failed_capture_stays_eager_for_that_key() -> None:
    mgr, m, _ = _setup(fail=True)
    calls = [_inputs(seed=i) for i in range(4)]
    got = _run(mgr, m.ref(), calls, enabled=True)
    with torch.no_grad():
        assert all(torch.equal(g, m._module(*a)) for g, a in zip(got, calls, strict=True))
    assert mgr.graphs.fallbacks == {"capture failed": 1} and mgr.graphs.held() == []


def test_close_unsubscribes() -> None:
    mgr, m, _ = _setup()
    graphs = StepGraphs(mgr, FakeCapturer())
    graphs.close()
    mgr.offload(m)
    assert graphs.invalidations == 0


def _tiny_prompt(tmp_path: pathlib.Path) -> dict[str, Any]:
    from comfy_notebook.demo import default_prompt
    from comfy_notebook.testing import make_checkpoint

    (tmp_path / "checkpoints").mkdir()
    make_checkpoint(tmp_path / "checkpoints" / "tiny.safetensors")
    api = default_prompt()
    api["4"]["inputs"]["ckpt_name"] = "tiny.safetensors"
    api["5"]["inputs"].update(width=64, height=64)
    api["3"]["inputs"].update(steps=5)
    return api


def test_the_sampler_path_uses_captured_steps_and_gives_the_same_image(tmp_path: pathlib.Path) -> None:
    from comfy_notebook._session import Session
    from comfy_notebook.nodes import register_builtins

    api = _tiny_prompt(tmp_path)
    images = {}
    for on in (False, True):
        s = Session(models_dir=tmp_path, output_dir=tmp_path / f"out{on}")
        register_builtins(s)
        s.options["cuda_graphs"] = on
        cap = FakeCapturer()
        s.models.graphs.capturer = cap
        images[on] = s.run_prompt(api).outputs["8"][0]
        if on:
            assert cap.captured == 1 and cap.replayed == 3  # step 1 eager, 2 warm-up, 3..5 replay
            assert s.models.list()[0].graphs + s.models.list()[1].graphs + s.models.list()[2].graphs == 1
        else:
            assert cap.captured == 0 and s.models.graphs.fallbacks == {"disabled": 1}
    assert torch.equal(images[False], images[True])


@pytest.mark.gpu
def test_cuda_replay_is_bit_identical_to_eager() -> None:
    mgr = ModelManager(DevicePolicy.cuda(0))

    def factory() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64))

    m = mgr.register("mlp", factory, kind="unet")
    xs = [torch.randn(8, 64, device="cuda", dtype=torch.float16) for _ in range(5)]
    with torch.no_grad(), mgr.use(m) as module:
        f = mgr.graphs.wrap(m.ref(), module, module)
        got = [f(x) for x in xs]
        want = [module(x) for x in xs]
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    assert mgr.graphs.captures == 1 and mgr.graphs.replays == 3 and mgr.graphs.nbytes("mlp") >= 0
    mgr.offload(m)
    assert mgr.graphs.held() == []


def test_an_unchanged_input_is_not_copied_again_but_an_in_place_change_is() -> None:
    mgr, m, _ = _setup()
    x, t, c = _inputs()
    with torch.no_grad(), mgr.use(m) as module:
        f = mgr.graphs.wrap(m.ref(), module, module, enabled=True)
        for _ in range(3):
            f(x, t, c)
        c.mul_(2.0)  # same tensor, new contents: its version counter moved
        assert torch.equal(f(x, t, c), module(x, t, c))


@pytest.mark.gpu
@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m_sde_gpu"])
def test_cuda_session_images_are_the_same_with_and_without_graphs(tmp_path: pathlib.Path, sampler: str) -> None:
    from comfy_notebook._session import Session
    from comfy_notebook.nodes import register_builtins

    api = _tiny_prompt(tmp_path)
    api["3"]["inputs"]["sampler_name"] = sampler
    images, graphs = {}, {}
    for on in (False, True):
        s = Session(models_dir=tmp_path, output_dir=tmp_path / f"out{on}")
        register_builtins(s)
        s.options["cuda_graphs"] = on
        images[on] = s.run_prompt(api).outputs["8"][0]
        graphs[on] = s.models.graphs
    assert graphs[True].captures == 1 and graphs[True].replays == 3, graphs[True].fallbacks
    assert graphs[False].captures == 0
    assert torch.equal(images[False], images[True])
