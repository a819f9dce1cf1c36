"""Concurrency (issue 19): a prompt started from a widget (a background thread) while a cell runs
another prompt on the same session is queued behind it — never two samplers on one model's
weights at once, never a corrupted cache — and ``%comfy unload all`` during a run waits for the
in-use model or refuses it with a clear message.  Real threads throughout."""

from __future__ import annotations

import pathlib
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import torch
from harness import CKPT, new_session, tiny_prompt

from comfy_notebook.engine.cache import Cache
from comfy_notebook.engine.events import NodeProgress
from comfy_notebook.engine.policies import MemoryBudget
from comfy_notebook.realmode import control
from comfy_notebook.runtime.manager import ModelInUseError


@contextmanager
def _fast_switching() -> Any:
    """Switch threads every microsecond: races that need an unlucky switch happen at once."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


class _Blob:
    """A cache value of a given size (``nbytes``), as a tensor would count."""

    def __init__(self, n: int) -> None:
        self.nbytes = n


def test_cache_survives_threads_storing_reading_and_evicting() -> None:
    """Regression: the cache had no lock; a reader moving an entry to the end while another
    thread evicted it raised KeyError, a MemoryBudget walking the entries while another thread
    stored one raised "OrderedDict mutated during iteration", and the byte count drifted."""
    cache = Cache(MemoryBudget(ram_bytes=64 * 100))
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        start.wait()
        try:
            for i in range(3000):
                key = f"k{rng.integers(0, 200)}"
                op = i % 4
                if op == 0:
                    cache.put(key, ([_Blob(int(rng.integers(1, 128)))],), None)
                elif op == 1:
                    cache.get(key)
                elif op == 2:
                    cache.release(key)
                else:
                    cache.tag(key, "cell:x")
                    cache.keys()
        except BaseException as exc:
            errors.append(exc)

    with _fast_switching():
        threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    stats = cache.stats()
    held = sum(cache.peek(k).nbytes for k in cache.keys())  # type: ignore[union-attr]  # noqa: SIM118
    assert stats.bytes == held <= 64 * 100
    assert stats.entries == len(cache.keys())


@contextmanager
def _watch_models(session: Any, linger: float = 0.005) -> Any:
    """Record, per model, the most threads inside ``manager.use`` at once (each use lingers a
    little so that an overlap, if the product allowed one, would be seen)."""
    manager = session.models
    real_use = manager.use
    inside: Counter[str] = Counter()
    most: Counter[str] = Counter()
    threads: dict[str, set[int]] = {}
    lock = threading.Lock()

    @contextmanager
    def use(ref: Any, **kwargs: Any) -> Any:
        name = manager._resolve(ref).name
        with real_use(ref, **kwargs) as module:
            with lock:
                inside[name] += 1
                most[name] = max(most[name], inside[name])
                threads.setdefault(name, set()).add(threading.get_ident())
            try:
                time.sleep(linger)
                yield module
            finally:
                with lock:
                    inside[name] -= 1

    manager.use = use
    try:
        yield most, threads
    finally:
        del manager.use


def _image(session: Any, result: Any) -> torch.Tensor:
    """The decoded image (node 8) of a run, executed or served from the cache."""
    entry = session.cache.peek(result.signatures["8"])
    return entry.outputs[0][0]  # type: ignore[no-any-return]


def _prompt(seed: int, text: str) -> dict[str, Any]:
    api = tiny_prompt(seed=seed)
    api["6"]["inputs"]["text"] = text
    return api


def test_widget_prompt_while_a_cell_runs_takes_turns(tiny_root: pathlib.Path) -> None:
    """RunView.start (a background thread) and the cell's own run_prompt and real-mode calls on
    the same session: each sampler has the UNet alone, every image equals a lone run's, and the
    cache holds exactly what a sequential session would (a rerun of both executes nothing)."""
    from comfy_notebook.realmode.calls import node_function
    from comfy_notebook.widgets.run_view import RunView

    a, b = _prompt(11, "a red cube"), _prompt(12, "a blue sphere")
    ref_a = new_session(tiny_root).run_prompt(a).outputs["8"][0]
    ref_b = new_session(tiny_root).run_prompt(b).outputs["8"][0]
    s = new_session(tiny_root)
    s.run_prompt(tiny_prompt(seed=1))  # models loaded: the two runs meet in the sampler

    def fn(name: str) -> Any:
        return node_function(name, s)

    with _watch_models(s) as (most, threads):
        views = [RunView(s) for _ in range(3)]
        started = [v.start(a if i % 2 == 0 else b) for i, v in enumerate(views)]
        cell_b = _image(s, s.run_prompt(b))  # the cell's prompt, while the widgets' run
        model, clip, vae = fn("CheckpointLoaderSimple")(CKPT)  # the cell's real-mode calls
        pos = fn("CLIPTextEncode")("a red cube", clip)
        neg = fn("CLIPTextEncode")("text, watermark", clip)
        latent = fn("EmptyLatentImage")(64, 64, 1)
        sampled = fn("KSampler")(model, 11, 3, 8.0, "euler", "normal", pos, neg, latent, 1.0)
        real_a = fn("VAEDecode")(sampled, vae).value
        for t in started:
            t.join(60)
    for v in views:
        assert not isinstance(v.result, BaseException), v.result
        v.detach()
    assert max(most.values()) == 1, dict(most)  # never two threads on one model's weights
    assert len(threads["tiny/unet"]) >= 2  # both threads did sample
    assert torch.equal(cell_b, ref_b) and torch.equal(real_a, ref_a)
    for i, v in enumerate(views):
        assert torch.equal(_image(s, v.result), ref_a if i % 2 == 0 else ref_b)
    for api, ref in ((a, ref_a), (b, ref_b)):
        again = s.run_prompt(api)
        assert again.executed <= {"9"} and torch.equal(_image(s, again), ref)
    stats = s.cache.stats()
    assert stats.bytes == sum(s.cache.peek(k).nbytes for k in s.cache.keys())  # type: ignore[union-attr]  # noqa: SIM118
    assert not any(m.in_use for m in s.models._models.values()) and s.models._reserved == 0


@contextmanager
def _paused_in_sampler(session: Any, seed: int = 21) -> Any:
    """Start the default prompt on a background thread and hold it inside the sampler (the
    UNet in use) until the block ends; yields the thread's result holder."""
    reached, release = threading.Event(), threading.Event()
    out: dict[str, Any] = {}

    def hold(event: Any) -> None:
        if isinstance(event, NodeProgress) and threading.current_thread().name == "bg-run":
            reached.set()
            release.wait(30)

    def run() -> None:
        try:
            out["result"] = session.run_prompt(tiny_prompt(seed=seed))
        except BaseException as exc:
            out["result"] = exc

    unsubscribe = session.subscribe(hold)
    t = threading.Thread(target=run, name="bg-run")
    t.start()
    try:
        assert reached.wait(30), "the background run never reached the sampler"
        yield out, release
    finally:
        release.set()
        t.join(60)
        unsubscribe()


def test_unload_all_during_a_run_refuses_clearly_and_the_run_is_unharmed(tiny_root: pathlib.Path) -> None:
    ref = new_session(tiny_root).run_prompt(tiny_prompt(seed=21)).outputs["8"][0]
    s = new_session(tiny_root)
    s.run_prompt(tiny_prompt(seed=1))
    with _paused_in_sampler(s) as (out, _release):
        assert s.models["tiny/unet"].in_use
        with pytest.raises(ModelInUseError) as info:  # %comfy unload all
            control.unload_all(s)
        message = str(info.value)
        assert "tiny/unet" in message and "running" in message and "Fix:" in message and "--wait" in message
        assert all(m.location != "unloaded" for m in s.models.list())  # nothing was unloaded
        # the manager itself (a script, the model panel): idle models go, the busy one is named
        with pytest.raises(ModelInUseError, match=r"'tiny/unet' is in use by a running prompt.*Fix:"):
            s.models.unload_all()
        with pytest.raises(ModelInUseError, match=r"a node is using it now.*Fix:"):
            s.models.unload("tiny/unet")
        assert s.models["tiny/unet"].location != "unloaded"
        assert s.models["tiny/vae"].location == "unloaded"
    assert torch.equal(out["result"].outputs["8"][0], ref)  # the run never lost its weights
    assert not any(m.in_use for m in s.models._models.values()) and s.models._reserved == 0


def test_unload_all_with_wait_waits_for_the_run(tiny_root: pathlib.Path) -> None:
    ref = new_session(tiny_root).run_prompt(tiny_prompt(seed=21)).outputs["8"][0]
    s = new_session(tiny_root)
    s.run_prompt(tiny_prompt(seed=1))
    with _paused_in_sampler(s) as (out, release):
        threading.Timer(0.3, release.set).start()  # the run goes on a little later
        t0 = time.monotonic()
        control.unload_all(s, wait=30)  # %comfy unload all --wait 30
        waited = time.monotonic() - t0
        assert "result" in out, "unload all returned before the run finished"
        assert waited >= 0.25
    assert torch.equal(out["result"].outputs["8"][0], ref)
    assert all(m.location == "unloaded" for m in s.models.list())
    again = s.run_prompt(tiny_prompt(seed=22))  # the weights come back from the files on use
    assert torch.equal(_image(s, again), _image(s, new_session(tiny_root).run_prompt(tiny_prompt(seed=22))))


def test_manager_unload_with_wait_waits_for_the_sampler(tiny_root: pathlib.Path) -> None:
    s = new_session(tiny_root)
    s.run_prompt(tiny_prompt(seed=1))
    with _paused_in_sampler(s) as (out, release):
        threading.Timer(0.2, release.set).start()
        s.models.unload("tiny/unet", wait=30)
        assert not s.models["tiny/unet"].in_use
        assert s.models["tiny/unet"].location == "unloaded"
    assert not isinstance(out["result"], BaseException)
    with _paused_in_sampler(s, seed=23), pytest.raises(ModelInUseError, match=r"waited 0\.1 s"):
        s.models.unload("tiny/unet", wait=0.1)
