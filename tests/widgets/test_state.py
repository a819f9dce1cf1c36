"""RunState and RunView follow the engine's events; the interrupt button calls session.interrupt()."""

from __future__ import annotations

import base64
import io
import threading
from typing import Any

import numpy as np
import torch
from PIL import Image

from comfy_notebook.engine import events as ev
from comfy_notebook.widgets.preview import latent_to_rgb
from comfy_notebook.widgets.run_view import RunView
from comfy_notebook.widgets.state import RunState


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def decode(url: str) -> np.ndarray:
    assert url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


def test_state_follows_a_run() -> None:
    clock = Clock()
    state = RunState(preview_every=2, clock=clock)
    state.apply(ev.RunStarted("p1", ("1", "2", "3")))
    assert state.status == "running"
    assert {n: e["status"] for n, e in state.nodes.items()} == dict.fromkeys("123", "pending")
    state.apply(ev.NodeCached("p1", "1", "CheckpointLoaderSimple"))
    state.apply(ev.NodeStarted("p1", "2", "KSampler", "2"))
    latent = torch.randn(1, 4, 4, 4)
    clock.t = 101.5
    state.apply(ev.NodeProgress("p1", "2", 1, 4, latent))
    assert (state.value, state.total, state.current_node) == (1, 4, "2")
    assert state.preview == ""  # step 1 is not a multiple of preview_every=2
    assert state.elapsed == 1.5
    state.apply(ev.NodeProgress("p1", "2", 2, 4, latent))
    rgb = decode(state.preview)[:, :, :3]  # nearest-upscaled to 256 px: 64 px per latent pixel
    assert rgb.shape == (256, 256, 3)
    assert (rgb[::64, ::64] == latent_to_rgb(latent)[0]).all()
    state.apply(ev.NodeFinished("p1", "2", "KSampler", 0.25))
    state.apply(ev.NodeStarted("p1", "3", "VAEDecode", "3"))
    state.apply(ev.NodeFinished("p1", "3", "VAEDecode", 0.5))
    state.apply(ev.RunFinished("p1", frozenset("23"), frozenset("1"), 2.0))
    assert state.status == "finished" and state.elapsed == 2.0
    assert state.nodes["1"] == {"class_type": "CheckpointLoaderSimple", "status": "cached",
                                "seconds": None}
    assert state.nodes["2"]["status"] == "done" and state.nodes["2"]["seconds"] == 0.25
    assert state.counts() == {"cached": 1, "done": 2}
    text = state.text()
    assert "run p1: finished, 2.00 s (cached 1, done 2)" in text and "KSampler" in text


def test_last_step_always_previews_and_image_previews() -> None:
    state = RunState(preview_every=100)
    state.apply(ev.RunStarted("p", ("1",)))
    image = torch.rand(1, 8, 8, 3)  # an IMAGE preview, not a latent
    state.apply(ev.NodeProgress("p", "1", 5, 5, image))
    got = decode(state.preview)[:, :, :3]
    assert np.abs(got.astype(int) - np.rint(image[0].numpy() * 255).astype(int)).max() <= 1


def test_failure_and_interrupt() -> None:
    state = RunState()
    state.apply(ev.RunStarted("p", ("1", "2")))
    state.apply(ev.NodeStarted("p", "1", "KSampler", "1"))
    state.apply(ev.NodeFailed("p", "1", "KSampler", RuntimeError("boom")))
    assert state.status == "failed" and "boom" in state.error
    assert state.nodes["1"]["status"] == "failed"
    state.apply(ev.RunStarted("q", ("1",)))
    assert state.error == "" and state.nodes["1"]["status"] == "pending"
    state.apply(ev.NodeStarted("q", "1", "KSampler", "1"))
    state.apply(ev.NodeProgress("q", "1", 3, 20, None))
    state.apply(ev.RunInterrupted("q", "1", "KSampler", frozenset()))
    assert state.status == "interrupted"
    assert state.error == "interrupted at step 3/20"
    assert state.nodes["1"]["status"] == "interrupted"


def test_run_view_mirrors_state_and_interrupts(fake_session: Any) -> None:
    view = RunView(fake_session)
    assert len(fake_session.subscribers) == 1
    fake_session.emit(ev.RunStarted("p", ("7",)))
    fake_session.emit(ev.NodeStarted("p", "7", "KSampler", "7"))
    fake_session.emit(ev.NodeProgress("p", "7", 4, 10, None))
    assert (view.status, view.value, view.total, view.current_node) == ("running", 4, 10, "7")
    assert view.nodes == view.state.nodes and view.nodes["7"]["status"] == "running"
    # the browser's interrupt button
    view._handle_custom_msg({"action": "interrupt"}, [])
    assert fake_session.interrupts == 1 and view.message == "interrupt requested"
    view._handle_custom_msg({"action": "nope"}, [])
    assert view.message == "unknown action 'nope'"
    bundle, _ = view._repr_mimebundle_()
    assert bundle["text/plain"].startswith("run p: running")
    assert "application/vnd.jupyter.widget-view+json" in bundle
    view.detach()
    assert fake_session.subscribers == []
    fake_session.emit(ev.RunFinished("p", frozenset(), frozenset(), 1.0))
    assert view.status == "running"  # detached: no longer follows


def test_run_view_start_runs_in_a_thread(fake_session: Any) -> None:
    view = RunView(fake_session)
    thread = view.start({"1": {}})
    assert isinstance(thread, threading.Thread)
    thread.join(5)
    assert view.result == "result" and fake_session.prompts == [{"1": {}}]


def test_nodes_never_reached_are_skipped() -> None:
    state = RunState()
    state.apply(ev.RunStarted("p", ("1", "2")))
    state.apply(ev.NodeCached("p", "2", "ShowImages"))
    state.apply(ev.RunFinished("p", frozenset(), frozenset({"2"}), 0.001))
    assert {n: e["status"] for n, e in state.nodes.items()} == {"1": "skipped", "2": "cached"}
